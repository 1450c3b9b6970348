"""The process's one HTTP listener: Prometheus metrics at ``/metrics`` (the browser dashboard
next, on the same listener).

It runs on a thread of its own (the standard library's WSGI server, a thread per request) and
reads only the figures snapshot the process replaces from its event loop
(:class:`tickerplant.ops.metrics.Snapshot`): a scrape takes nothing from the loop that reads the
lines, however often it comes. Off unless configured (``--metrics HOST:PORT``, ``[metrics]
listen`` in the plant's config).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app

from tickerplant.endpoint import Endpoint
from tickerplant.ops.config import ConfigError
from tickerplant.ops.metrics import FiguresCollector, Snapshot


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # host:port of the listener (None: none). The figures it serves are the ones the process
    # draws its live table from, every half second.
    listen: Endpoint | None = None


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scraper that hangs does not keep the process alive


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are counted by Prometheus, not logged one line each."""


StartResponse = Callable[..., Any]


class WebServer:
    """Serves ``snapshot``'s figures on ``listen`` until :meth:`close`."""

    def __init__(self, listen: Endpoint, snapshot: Snapshot) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(FiguresCollector(snapshot))
        ProcessCollector(registry=self.registry)  # CPU seconds, memory, open files
        self._metrics = make_wsgi_app(self.registry)
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
            result: Iterable[bytes] = self._metrics(environ, start_response)
            return result
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"tickerplant: metrics at /metrics\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"no {path} here: metrics are at /metrics\n".encode()]

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}/"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
