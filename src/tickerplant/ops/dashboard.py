"""The live table: one column per source and one row per figure, then the feed's, the books' and
the streams' figures as phrases laid out to the terminal's width; rates from consecutive
snapshots. It reads at 80 columns (``tests/test_dashboard.py`` holds it to that, and to 120).
While it is shown, log lines on the same terminal are printed above it.

It reads a figures snapshot by the names in :mod:`tickerplant.ops.figures` and knows nothing of
the protocols.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, TextIO, cast

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.file_proxy import FileProxy
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tickerplant.ops import logs
from tickerplant.ops.figures import Figures

_STATE_STYLE = {"up": "green", "quiet": "yellow", "down": "red"}


def _style(states: str) -> str:
    """The style of a line state, or of several channels' (the worst of them)."""
    for state in ("down", "quiet", "up"):
        if state in states.split(","):
            return _STATE_STYLE[state]
    return ""


def _rate(now: Figures, before: Figures | None, dt: float, name: str, *labels: str) -> str:
    if before is None or dt <= 0:
        return "-"
    return f"{(_at(now, name, labels) - _at(before, name, labels)) / dt:,.0f}"


def _at(figures: Figures, name: str, labels: tuple[str, ...]) -> Any:
    value = figures[name]
    for label in labels:
        value = value[label]
    return value


_SOURCES = {"a": "line A", "b": "line B", "rerequest": "re-request", "replay": "replay"}
_REPAIRS = {"line": "other line", "rerequest": "re-request", "replay": "replay"}


class Phrases:
    """Phrases joined by two spaces into lines as wide as the console, none split across two
    (rich wraps at any space: ``outstanding`` at the end of one line, its ``0`` on the next).
    The lines after a paragraph's first are indented, so that it reads as one."""

    def __init__(self, *phrases: str | Text) -> None:
        self.phrases = [p if isinstance(p, Text) else Text(p) for p in phrases]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        line = Text()
        start = 0  # where the line's first phrase begins: after the indent
        for phrase in self.phrases:
            if line.cell_len > start and line.cell_len + 2 + phrase.cell_len > width:
                yield line
                line, start = Text("  "), 2
            elif line.cell_len > start:
                line.append("  ")
            line.append_text(phrase)
        yield line


def render(now: Figures, before: Figures | None, dt: float, title: str = "") -> Group:
    """The screen: the sources, then the feed's own figures, the books and the streams."""
    parts: list[RenderableType] = [
        Text(title or "tickerplant feed handler", style="bold"),
        _sources(now, before, dt),
        _feed(now, before, dt),
    ]
    if "book_symbols" in now:
        parts += _books(now, before, dt)
    if "clients" in now:
        parts += _streams(now, before, dt)
    if "channels" in now:
        parts.append(_channels(now))
    return Group(*parts)


def _channels(now: Figures) -> Phrases:
    """Several channels: how many are unheard, then the worst few (not 48 rows)."""
    worst = [
        f"{number} {c['session'] or '(unheard)'}: lost {c['lost_messages']:,}, gaps open"
        f" {c['open_gaps']}, events p99 {c['events_delivery_p99_seconds'] * 1e3:.1f} ms"
        for number, c in now["channels"].items()
    ]
    unheard = now.get("channels_unheard", 0)
    head = Text(f"channels, worst first ({unheard} unheard):",
                style="bold red" if unheard else "")  # fmt: skip
    return Phrases(head, *worst)


def _sources(now: Figures, before: Figures | None, dt: float) -> Table:
    """One column per source and one row per figure: five columns fit in 80, where one
    column per figure (eleven) cut every heading to three letters."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("")
    for name in _SOURCES.values():
        table.add_column(name, justify="right")
    states = [now["line_state"].get(source) for source in _SOURCES]
    # (Several channels' lines in different states: "down,up", styled as its worst.)
    table.add_row("state", *(Text(s, style=_style(s)) if s else "" for s in states))
    table.add_row("packets/s", *(_rate(now, before, dt, "packets", s) for s in _SOURCES))
    table.add_row("msgs/s", *(_rate(now, before, dt, "messages", s) for s in _SOURCES))
    table.add_row("gaps seen", *(f"{now['gaps_seen'][s]:,}" for s in _SOURCES))
    for repair, name in _REPAIRS.items():
        table.add_row(f"  repaired by {name}",
                      *(f"{now['gaps_repaired'][s][repair]:,}" for s in _SOURCES))  # fmt: skip
    lost = [now["gaps_lost"][s] for s in _SOURCES]
    table.add_row("  lost", *(Text(f"{n:,}", style="bold red" if n else "") for n in lost))
    bad = [sum(now["defects"][s].values()) + now["foreign_packets"][s] for s in _SOURCES]
    table.add_row("defects", *(f"{n:,}" for n in bad))
    rcvbuf = [now["rcvbuf_bytes"][s] for s in _SOURCES]
    table.add_row("rcvbuf", *(f"{n / 2**20:.0f} MiB" if n else "" for n in rcvbuf))
    return table


def _feed(now: Figures, before: Figures | None, dt: float) -> Group:
    latency = [
        f"{_REPAIRS[kind]} {v['p50'] * 1e3:.2f}/{v['p99'] * 1e3:.2f} ms"
        for kind, v in now["repair_latency_seconds"].items()
        if v["count"]
    ]
    # What should stay zero, shown only when it is not, so that it stands out.
    trouble = {
        "skipped unreported": now["skipped_unreported"],
        "consumer errors": now["consumer_errors"],
        "re-requests unsent": now["rerequest_send_errors"],
        "hold-back overflow packets": now["hold_overflow_packets"],
        "suspect packets": now["suspect_packets"],
    }
    return Group(
        Phrases(
            f"session {now['session'] or '-'}",
            f"delivered {now['delivered_messages']:,}"
            f" ({_rate(now, before, dt, 'delivered_messages')}/s)",
            # (several channels: each its own numbers, which added up mean nothing)
            *([] if "channels" in now else [f"next {now['next_sequence']:,}"]),
            f"outstanding {now['outstanding_messages']:,}",
            f"open gaps {now['open_gaps']}",
            f"duplicates delivered {now['duplicates_delivered']}",
            *(Text(f"{k} {v:,}", style="bold red") for k, v in trouble.items() if v),
        ),
        Phrases("repair latency p50/p99:", *(latency or ["-"])),
    )


def _streams(now: Figures, before: Figures | None, dt: float) -> list[RenderableType]:
    return [
        Phrases(
            f"{stream} stream: {clients:,} clients",
            f"{now['logins'][stream]:,} logins",
            f"queued {now['queued_bytes'][stream] / 2**20:,.1f} MiB",
            f"sent {_rate(now, before, dt, 'sent_messages', stream)} msgs/s",
            f"journal {now['stream_messages'][stream]:,} messages"
            f" ({now['stream_lost_messages'][stream]:,} lost)",
            f"slow consumers {_actions(now['slow_consumers'][stream])}",
            *_staleness(now.get("staleness_seconds", {}).get(stream)),
        )
        for stream, clients in now["clients"].items()
    ]


def _staleness(ages: dict[str, Any] | None) -> list[str]:
    """How stale conflated clients' pictures were as their rounds went, once there were any."""
    if not ages or not ages["count"]:
        return []
    return [f"conflated staleness p99 {ages['p99'] * 1e3:,.0f} ms"]


def _actions(by_action: dict[str, int]) -> str:
    """Slow consumers by the policy applied: "cut 1" or "cut 0, conflated 2, skipped 1"."""
    names = {"disconnect": "cut", "conflate": "conflated", "skip": "skipped"}
    return ", ".join(f"{names[a]} {n:,}" for a, n in by_action.items() if n or a == "disconnect")


def _books(now: Figures, before: Figures | None, dt: float) -> list[RenderableType]:
    summary = Phrases(
        f"books: {now['book_symbols']:,} symbols",
        f"{now['live_orders']:,} live orders",
        f"{now['book_levels']:,} levels",
        f"BBO updates {_rate(now, before, dt, 'bbo_updates')}/s",
        f"trades {now['trades']:,}",
        f"anomalies {now['book_anomalies']:,}",
        *([Text(f"missing {now['messages_missed']:,} lost messages: may be wrong",
                style="bold red")] if now["messages_missed"] else []),
    )  # fmt: skip
    if not now["busiest"]:
        return [summary]
    busiest = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for heading in ("busiest", "bid size", "bid", "ask", "ask size", "BBO updates"):
        busiest.add_column(heading, justify="left" if heading == "busiest" else "right")
    for q in now["busiest"]:
        busiest.add_row(q["symbol"], f"{q['bid_size']:,}", f"{q['bid']:.4f}", f"{q['ask']:.4f}",
                        f"{q['ask_size']:,}", f"{q['bbo_updates']:,}")  # fmt: skip
    return [summary, busiest]


class LiveTable:
    """The table on a terminal, redrawn on each :meth:`show`; counts become rates since the last.

    Without a console (``--json`` runs) it only keeps the figures: callers need no branches.
    """

    def __init__(self, console: Console | None, now: float) -> None:
        self._live = Live(console=console, auto_refresh=False) if console is not None else None
        self._before: Figures | None = None
        self._then = now
        self._stack = ExitStack()

    def __enter__(self) -> LiveTable:
        if self._live is not None:
            live = self._live
            self._stack.enter_context(live)
            if live.console.is_terminal:
                # Log lines through the console: printed above the table, not under it.
                self._stack.enter_context(
                    logs.diverted(lambda stream: cast(TextIO, FileProxy(live.console, stream)))
                )
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        if self._live is not None and not self._live.console.is_terminal:
            self._live.console.line()  # rich ends its one frame off a terminal without a newline

    def show(self, figures: Figures, now: float, title: str = "") -> None:
        if self._live is not None:
            self._live.update(render(figures, self._before, now - self._then, title), refresh=True)
        self._before, self._then = figures, now
