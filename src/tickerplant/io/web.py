"""The process's one HTTP listener: Prometheus metrics at ``/metrics``, the browser dashboard at
``/`` (static files shipped in the package, ``tickerplant/ops/web``: no build step, no CDN), and
its live feed at ``/events`` (Server-Sent Events: the figures snapshot and the latest operator
events as one JSON object, every UPDATE seconds).

The listener is a process of its own (``python -m tickerplant.io.web``, the standard library's
WSGI server in it, a thread per request), handed each figures snapshot the plant's loop makes
(every half second, :class:`tickerplant.ops.metrics.Snapshot`) as one datagram over a Unix
socket pair. In the plant's process a scrape or a dashboard then costs nothing at all: not the
loop's time, not the GIL, not the CPU its threads took beside the busy loop (measured there, a
scrape every 100 ms cost ~5 % of the feed's CPU: bench/metrics_scrape.py). The plant binds the
port itself, so that a port in use is its own config error; the listener reports the plant's
process figures (CPU, memory, open files), not its own, and ends when the plant's end of the
pair closes, however the plant ended. Off unless configured (``--metrics HOST:PORT``,
``[metrics] listen`` in the plant's config).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)

from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.ops.logs import EventRing
from tickerplant.ops.metrics import FiguresCollector, Snapshot

UPDATE = 0.5  # seconds between the dashboard's updates
EVENTS = 50  # the newest operator events each update carries
CHANNEL = 1 << 22  # bytes: the largest snapshot the pair carries (a datagram each)
STATIC = Path(__file__).resolve().parent.parent / "ops" / "web"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}  # fmt: skip
log = logging.getLogger("tickerplant.web")


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # host:port of the listener (None: none). The figures it serves are the ones the process
    # draws its live table from, every half second.
    listen: Endpoint | None = None


def _finite(value: Any) -> Any:
    """``value`` with every infinite or NaN float as None: JSON has no Infinity (a figure such as
    bytes per live order is infinite with no orders), and browsers refuse it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class WebServer:
    """Serves ``snapshot``'s figures on ``listen`` from a listener process until :meth:`close`."""

    def __init__(self, listen: Endpoint, snapshot: Snapshot) -> None:
        try:
            server = socket.create_server((listen.host, listen.port))
        except OSError as err:  # (the errno's words: create_server's repeat the address)
            why = os.strerror(err.errno) if err.errno else str(err)
            raise ConfigError("metrics.listen", f"cannot listen on {listen}: {why}",
                              "give a free host:port") from None  # fmt: skip
        self.endpoint = Endpoint(listen.host, server.getsockname()[1])
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL)
        ours.setblocking(False)  # a listener behind misses a snapshot; the loop never waits
        with server, theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(server.fileno()), str(theirs.fileno()),
                 str(os.getpid())],
                pass_fds=(server.fileno(), theirs.fileno()), stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self._channel = ours
        self.skipped = 0  # snapshots the listener was too far behind to take
        self._snapshot = snapshot
        self._ring = EventRing(snapshot.events)
        logger = logging.getLogger("tickerplant")
        logger.addHandler(self._ring)
        if logger.getEffectiveLevel() > logging.INFO:  # the events are info lines
            logger.setLevel(logging.INFO)
        snapshot.watchers.append(self._hand)
        self._hand(snapshot)

    @property
    def pid(self) -> int:
        """The listener process's."""
        return self._process.pid

    def _hand(self, snapshot: Snapshot) -> None:
        """``snapshot`` to the listener, from the loop: one pickle and one non-blocking send."""
        data = pickle.dumps((snapshot.time, snapshot.figures, list(snapshot.events)[-EVENTS:]),
                            pickle.HIGHEST_PROTOCOL)  # fmt: skip
        try:
            self._channel.send(data)
        except BlockingIOError:
            self.skipped += 1
        except OSError as err:  # gone: said once, and no more snapshots made for it
            log.warning("the metrics listener (pid %d) takes no figures: %s; exit status %s",
                        self.pid, err.strerror, self._process.poll())  # fmt: skip
            snapshot.watchers.remove(self._hand)

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}/"

    def close(self) -> None:
        if self._hand in self._snapshot.watchers:
            self._snapshot.watchers.remove(self._hand)
        logging.getLogger("tickerplant").removeHandler(self._ring)
        self._channel.close()  # the listener's end of the pair reads its end and it stops
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


# The listener process.

StartResponse = Callable[..., Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scraper that hangs does not keep the process alive

    def server_bind(self) -> None:
        """The plant bound the socket: only the WSGI environment is set up here."""
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = host, port
        self.setup_environ()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are counted by Prometheus, not logged one line each."""


class Site:
    """What the listener serves, from the latest snapshot the plant handed it."""

    def __init__(self, snapshot: Snapshot, plant: int) -> None:
        self._snapshot = snapshot
        self.closing = threading.Event()
        self.registry = CollectorRegistry()
        self.registry.register(FiguresCollector(snapshot))
        ProcessCollector(pid=lambda: str(plant), registry=self.registry)  # the plant's CPU, memory
        self._exposition = (-1.0, b"")  # (snapshot time, the text rendered of it)
        self._rendering = threading.Lock()

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [self._render()]
        if path == "/events":
            start_response("200 OK", [("Content-Type", "text/event-stream"),
                                      ("Cache-Control", "no-cache")])  # fmt: skip
            return self._events()
        name = "index.html" if path == "/" else path.removeprefix("/static/")
        file = STATIC / name
        if path in ("/", f"/static/{name}") and "/" not in name and file.suffix in _TYPES:
            start_response("200 OK", [("Content-Type", _TYPES[file.suffix]),
                                      ("Cache-Control", "no-cache")])  # fmt: skip
            return [file.read_bytes()]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"no {path} here: the dashboard is at /, metrics at /metrics\n".encode()]

    def _render(self) -> bytes:
        """The exposition of the latest snapshot, rendered once per snapshot however many
        scrapers ask in between (a scrape every 100 ms, a snapshot every 500 ms)."""
        with self._rendering:
            at = self._snapshot.time
            if self._exposition[0] != at:
                self._exposition = (at, generate_latest(self.registry))
            return self._exposition[1]

    def _events(self) -> Iterator[bytes]:
        """The dashboard's feed, on this request's own thread, until the client or we go."""
        yield b"retry: 1000\n\n"
        while not self.closing.is_set():
            snap = self._snapshot
            data = {"time": snap.time, "figures": snap.figures, "events": list(snap.events)}
            yield b"data: " + json.dumps(_finite(data), default=str).encode() + b"\n\n"
            self.closing.wait(UPDATE)


def serve(listening: socket.socket, channel: socket.socket, plant: int) -> None:
    """Serve on ``listening`` the snapshots read from ``channel`` until it ends."""
    snapshot = Snapshot(EVENTS)
    site = Site(snapshot, plant)
    server = _Server(listening.getsockname()[:2], _Quiet, bind_and_activate=False)
    server.socket.close()
    server.socket = listening
    server.server_bind()
    server.set_app(site.app)

    def take(data: bytes) -> None:
        at, figures, events = pickle.loads(data)
        snapshot.events = deque(events, EVENTS)
        snapshot.set(figures, at)

    # The plant hands its snapshot as it starts us: taken before the first request is served,
    # so that no scrape sees a listener without the figures it was started with.
    data = channel.recv(CHANNEL)
    if data:
        take(data)
        thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
        thread.start()
    while data := channel.recv(CHANNEL):
        take(data)
    # The plant has gone or is going, and waits for us: no shutdown(), which waits for the
    # server's next poll (up to half a second); its threads are daemons, a request in flight
    # is cut as the plant's exit would cut it.
    site.closing.set()
    server.server_close()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the plant's to act on; we follow it
    listen_fd, channel_fd, plant_pid = map(int, sys.argv[1:4])
    serve(socket.socket(fileno=listen_fd), socket.socket(fileno=channel_fd), plant_pid)
