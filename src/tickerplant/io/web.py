"""The process's one HTTP listener: Prometheus metrics at ``/metrics``, the browser dashboard at
``/`` (static files shipped in the package, ``tickerplant/ops/web``: no build step, no CDN), and
its live feed at ``/events`` (Server-Sent Events: the figures snapshot and the latest operator
events as one JSON object, every UPDATE seconds).

It runs on a thread of its own (the standard library's WSGI server, a thread per request) and
reads only the figures snapshot the process replaces from its event loop
(:class:`tickerplant.ops.metrics.Snapshot`): a scrape takes nothing from the loop that reads the
lines, however often it comes. Off unless configured (``--metrics HOST:PORT``, ``[metrics]
listen`` in the plant's config).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)

from tickerplant.endpoint import Endpoint
from tickerplant.ops.config import ConfigError
from tickerplant.ops.logs import EventRing
from tickerplant.ops.metrics import FiguresCollector, Snapshot

UPDATE = 0.5  # seconds between the dashboard's updates
STATIC = Path(__file__).resolve().parent.parent / "ops" / "web"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8"}  # fmt: skip


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


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scraper that hangs does not keep the process alive


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are counted by Prometheus, not logged one line each."""


StartResponse = Callable[..., Any]


class WebServer:
    """Serves ``snapshot``'s figures on ``listen`` until :meth:`close`."""

    def __init__(self, listen: Endpoint, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._closing = threading.Event()
        self._ring = EventRing(snapshot.events)
        logger = logging.getLogger("tickerplant")
        logger.addHandler(self._ring)
        if logger.getEffectiveLevel() > logging.INFO:  # the events are info lines
            logger.setLevel(logging.INFO)
        self.registry = CollectorRegistry()
        self.registry.register(FiguresCollector(snapshot))
        ProcessCollector(registry=self.registry)  # CPU seconds, memory, open files
        self._exposition = (-1.0, b"")  # (snapshot time, the text rendered of it)
        self._rendering = threading.Lock()
        try:
            self._server = make_server(listen.host, listen.port, self._app, _Server, _Quiet)
        except OSError as err:
            raise ConfigError("metrics.listen", f"cannot listen on {listen}: {err.strerror}",
                              "give a free host:port") from None  # fmt: skip
        self.endpoint = Endpoint(listen.host, self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
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
        while not self._closing.is_set():
            snap = self._snapshot
            data = {"time": snap.time, "figures": snap.figures, "events": list(snap.events)[-50:]}
            yield b"data: " + json.dumps(_finite(data), default=str).encode() + b"\n\n"
            self._closing.wait(UPDATE)

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}/"

    def close(self) -> None:
        self._closing.set()
        logging.getLogger("tickerplant").removeHandler(self._ring)
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
