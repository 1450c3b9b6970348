"""The live table: one row per line (and per repair channel), rates from consecutive snapshots.

It reads the JSON-ready figures the feed handler publishes and knows nothing of the protocols.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

Figures = dict[str, Any]

_STATE_STYLE = {"up": "green", "quiet": "yellow", "down": "red"}


def _rate(now: Figures, before: Figures | None, key: str, dt: float) -> str:
    if before is None or dt <= 0:
        return "-"
    return f"{(now[key] - before[key]) / dt:,.0f}"


def render(now: Figures, before: Figures | None, dt: float, title: str = "") -> Group:
    table = Table(title=title or "tickerplant feed handler", title_justify="left")
    for heading in ("line", "state", "packets/s", "msgs/s", "gaps seen", "by other line",
                    "by re-request", "by replay", "lost", "malformed", "rcvbuf"):
        table.add_column(heading, justify="left" if heading in ("line", "state") else "right")
    for name, line in now["lines"].items():
        prev = before["lines"][name] if before is not None else None
        state = line["state"]
        repaired = line["gaps_repaired"]
        table.add_row(
            name,
            Text(state, style=_STATE_STYLE[state]) if state else "",
            _rate(line, prev, "packets", dt),
            _rate(line, prev, "messages", dt),
            f"{line['gaps_seen']:,}",
            f"{repaired['line']:,}",
            f"{repaired['rerequest']:,}",
            f"{repaired['replay']:,}",
            Text(f"{line['gaps_lost']:,}", style="bold red" if line["gaps_lost"] else ""),
            f"{sum(line['malformed'].values()) + line['foreign']:,}",
            f"{line['rcvbuf'] / 2**20:.0f} MiB" if line["rcvbuf"] else "",
        )
    lat = now["repair_latency_ms"]
    latency = "  ".join(
        f"{kind} p50 {v['p50']:.2f} ms p99 {v['p99']:.2f} ms"
        for kind, v in lat.items()
        if v["count"]
    )
    footer = Text(
        f"session {now['session'] or '-'}  delivered {now['delivered']:,}"
        f" ({_rate(now, before, 'delivered', dt)}/s)  next {now['next_sequence']:,}"
        f"  outstanding {now['outstanding']:,}  open gaps {now['gaps']['open']}"
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
    if "books" in now:
        parts.append(_books(now["books"], before["books"] if before else None, dt))
    return Group(*parts)


def _books(now: Figures, before: Figures | None, dt: float) -> Text:
    text = Text(
        f"books: {now['symbols']:,} symbols  {now['live_orders']:,} live orders"
        f"  {now['levels']:,} levels  BBO updates {_rate(now, before, 'bbo_updates', dt)}/s"
        f"  trades {now['trades']:,}  anomalies {now['anomalies']:,}"
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
