"""Logs an operator can use: one line per event that matters, human-readable or JSON lines.

What is logged, by whom: line state changes, gaps lost with their range, session start and end
(the feed handler), replays that failed (the feed handler), slow consumers cut with the client
and the reason (io/soupbin), the config loaded (``tickerplant run``), datagrams dropped as unusable
(the feed handler: at most one line per source per :data:`DEFECT_REPORT` seconds, with the counts;
never one per packet). What is counted and not logged: every packet, every gap repaired.

Every ``tickerplant`` logger passes through one :class:`RateLimit`: each message template may log
``burst`` lines, then one per ``per`` seconds; what it held back is told as a count on the next
line it lets through. A storm (a flood of bad packets, thousands of clients cut at once) cannot
fill a disk. ``--log-format json`` writes one JSON object per line: ``time`` (ISO 8601, UTC),
``level``, ``logger``, ``message``, and the event's own fields (``line``, ``state``, ``start``,
``end``...) as keys, for Loki, Elasticsearch or ``jq``.

While a live table is drawn on the terminal the lines go through its console, above it
(:func:`diverted`); the demo keeps what it stages with its own clients off the terminal
(:func:`planned`), not off the dashboard's event log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

DEFECT_REPORT = 10.0  # seconds between a source's reports of unusable datagrams


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the event's fields, prefixed so as never to clash with the
    record's own attributes; the JSON format writes them without the prefix."""
    return {f"tp_{k}": v for k, v in values.items()}


class RateLimit(logging.Filter):
    """At most ``burst`` lines per message template, then one per ``per`` seconds."""

    def __init__(self, burst: int = 20, per: float = 10.0, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.burst, self.per, self._clock = burst, per, clock
        self._seen: dict[tuple[str, str], list[float]] = {}  # template -> [tokens, at, held]
        self.held = 0  # lines held back, over all

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self._clock()
        state = self._seen.get(key)
        if state is None:
            if len(self._seen) > 10_000:  # templates are few; records built with f-strings are not
                self._seen.clear()
            state = self._seen[key] = [float(self.burst), now, 0]
        tokens, at, held = state
        tokens = min(float(self.burst), tokens + (now - at) / self.per)
        if tokens < 1:
            state[:] = [tokens, now, held + 1]
            self.held += 1
            return False
        if held:
            record.tp_suppressed = int(held)
            record.msg = f"{record.msg} [{int(held)} like this held back]"
        state[:] = [tokens - 1, now, 0]
        return True


class Planned(logging.Filter):
    """Holds back from a handler the lines about ``users``' connections, unless the log is at
    debug level: the misbehaviour a demo stages on purpose (its client that reconnects every
    few seconds, its slow consumers skipped, conflated and cut), which its table and its verdict
    sum up. A line each would scroll the table away and read as trouble. Only the handler is
    spared them: the dashboard's event ring still gets its events."""

    def __init__(self, users: Iterable[str]) -> None:
        super().__init__()
        self.users = frozenset(users)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "tp_user", None) not in self.users:
            return True
        return logging.getLogger("tickerplant").isEnabledFor(logging.DEBUG)


def planned(users: Iterable[str]) -> None:
    """From now on, :class:`Planned` on the handlers :func:`setup` installed (before their rate
    limit, which the planned lines would otherwise use up); a second call replaces the first."""
    for handler in handlers():
        handler.filters = [f for f in handler.filters if not isinstance(f, Planned)]
        handler.filters.insert(0, Planned(users))


def handlers() -> list[logging.StreamHandler[TextIO]]:
    """The handlers :func:`setup` installed on the ``tickerplant`` logger."""
    return [
        h
        for h in logging.getLogger("tickerplant").handlers
        if getattr(h, "tickerplant", False) and isinstance(h, logging.StreamHandler)
    ]


@contextmanager
def diverted(to: Callable[[TextIO], TextIO]) -> Iterator[None]:
    """Meanwhile, each :func:`setup` handler writing to a terminal writes to ``to(its stream)``
    instead: a live display's console, which prints the lines above itself rather than under
    it, where they would scroll it away. A log sent to a file stays there."""
    moved = [(h, h.stream) for h in handlers() if h.stream.isatty()]
    for handler, stream in moved:
        handler.setStream(to(stream))
    try:
        yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


class EventRing(logging.Handler):
    """The log's event lines (those with an ``event`` field) as dicts in ``ring``, newest last:
    the dashboard's event log."""

    def __init__(self, ring: deque[dict[str, Any]]) -> None:
        super().__init__(logging.INFO)
        self.ring = ring
        self._json = JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        if not hasattr(record, "tp_event"):
            return
        item = json.loads(self._json.format(record))
        self.ring.append(item)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key.startswith("tp_"):
                out[key[3:]] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def setup(format: str = "text", level: str = "info", stream: TextIO | None = None,
          limit: RateLimit | None = None) -> logging.Handler:  # fmt: skip
    """Send the ``tickerplant`` loggers to ``stream`` (stderr) in ``format``, rate-limited."""
    if format not in ("text", "json"):
        raise ValueError(f"log format {format!r}: use text or json")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    handler.addFilter(limit or RateLimit())
    root = logging.getLogger("tickerplant")
    for old in handlers():
        root.removeHandler(old)
    handler.tickerplant = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    return handler
