"""The live table: one row per line (and per repair channel), rates from consecutive snapshots.

It reads a figures snapshot by the names in :mod:`tickerplant.ops.figures` and knows nothing of
the protocols.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tickerplant.ops.figures import Figures

_STATE_STYLE = {"up": "green", "quiet": "yellow", "down": "red"}


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


def render(now: Figures, before: Figures | None, dt: float, title: str = "") -> Group:
    table = Table(title=title or "tickerplant feed handler", title_justify="left")
    for heading in ("source", "state", "packets/s", "msgs/s", "gaps seen", "by other line",
                    "by re-request", "by replay", "lost", "defects", "rcvbuf"):
        table.add_column(heading, justify="left" if heading in ("source", "state") else "right")
    for source, name in _SOURCES.items():
        state = now["line_state"].get(source)
        repaired = now["gaps_repaired"][source]
        lost = now["gaps_lost"][source]
        bad = sum(now["defects"][source].values()) + now["foreign_packets"][source]
        rcvbuf = now["rcvbuf_bytes"][source]
        table.add_row(
            name,
            Text(state, style=_STATE_STYLE[state]) if state else "",
            _rate(now, before, dt, "packets", source),
            _rate(now, before, dt, "messages", source),
            f"{now['gaps_seen'][source]:,}",
            f"{repaired['line']:,}",
            f"{repaired['rerequest']:,}",
            f"{repaired['replay']:,}",
            Text(f"{lost:,}", style="bold red" if lost else ""),
            f"{bad:,}",
            f"{rcvbuf / 2**20:.0f} MiB" if rcvbuf else "",
        )
    latency = "  ".join(
        f"{kind} p50 {v['p50'] * 1e3:.2f} ms p99 {v['p99'] * 1e3:.2f} ms"
        for kind, v in now["repair_latency_seconds"].items()
        if v["count"]
    )
    footer = Text(
        f"session {now['session'] or '-'}  delivered {now['delivered_messages']:,}"
        f" ({_rate(now, before, dt, 'delivered_messages')}/s)  next {now['next_sequence']:,}"
        f"  outstanding {now['outstanding_messages']:,}  open gaps {now['open_gaps']}"
        f"  duplicates delivered {now['duplicates_delivered']}\n"
        f"repair latency: {latency or '-'}"
    )
    # What should stay zero, shown only when it is not, so that it stands out.
    trouble = {
        "skipped unreported": now["skipped_unreported"],
        "consumer errors": now["consumer_errors"],
        "re-requests unsent": now["rerequest_send_errors"],
        "hold-back overflow packets": now["hold_overflow_packets"],
        "suspect packets": now["suspect_packets"],
    }
    if any(trouble.values()):
        footer.append(
            "\n" + "  ".join(f"{k} {v:,}" for k, v in trouble.items() if v), style="bold red"
        )
    parts: list[Table | Text] = [table, footer]
    if "book_symbols" in now:
        parts.append(_books(now, before, dt))
    if "clients" in now:
        parts.append(_streams(now, before, dt))
    return Group(*parts)


def _streams(now: Figures, before: Figures | None, dt: float) -> Text:
    text = Text()
    for stream, clients in now["clients"].items():
        text.append(
            f"{stream} stream: {clients:,} clients  {now['logins'][stream]:,} logins"
            f"  queued {now['queued_bytes'][stream] / 2**20:,.1f} MiB"
            f"  sent {_rate(now, before, dt, 'sent_messages', stream)} msgs/s"
            f"  journal {now['stream_messages'][stream]:,} messages"
            f" ({now['stream_lost_messages'][stream]:,} lost)"
            f"  slow consumers {_actions(now['slow_consumers'][stream])}\n"
        )
    return text


def _actions(by_action: dict[str, int]) -> str:
    """Slow consumers by the policy applied: "cut 1" or "cut 0, conflated 2, skipped 1"."""
    names = {"disconnect": "cut", "conflate": "conflated", "skip": "skipped"}
    return ", ".join(f"{names[a]} {n:,}" for a, n in by_action.items() if n or a == "disconnect")


def _books(now: Figures, before: Figures | None, dt: float) -> Text:
    text = Text(
        f"books: {now['book_symbols']:,} symbols  {now['live_orders']:,} live orders"
        f"  {now['book_levels']:,} levels  BBO updates {_rate(now, before, dt, 'bbo_updates')}/s"
        f"  trades {now['trades']:,}  anomalies {now['book_anomalies']:,}"
    )
    if now["messages_missed"]:
        text.append(
            f"  missing {now['messages_missed']:,} lost messages: may be wrong", style="bold red"
        )
    for q in now["busiest"]:
        text.append(
            f"\n  {q['symbol']:<8} {q['bid_size']:>7,} @ {q['bid']:<10.4f} x"
            f" {q['ask']:>10.4f} @ {q['ask_size']:<7,}  ({q['bbo_updates']:,} BBO updates)"
        )
    return text


class LiveTable:
    """The table on a terminal, redrawn on each :meth:`show`; counts become rates since the last.

    Without a console (``--json`` runs) it only keeps the figures: callers need no branches.
    """

    def __init__(self, console: Console | None, now: float) -> None:
        self._live = Live(console=console, auto_refresh=False) if console is not None else None
        self._before: Figures | None = None
        self._then = now

    def __enter__(self) -> LiveTable:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def show(self, figures: Figures, now: float, title: str = "") -> None:
        if self._live is not None:
            self._live.update(render(figures, self._before, now - self._then, title), refresh=True)
        self._before, self._then = figures, now
