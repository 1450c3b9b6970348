"""``tickerplant demo``: the exchange simulator and the feed handler together on loopback.

The exchange runs in its own process (the machine has two cores: one publishes, one receives),
publishes a synthetic day on line A and line B with loss injected per line, and ends the session;
the feed handler repairs what was lost and the demo compares the delivered stream with the
published one by count and sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from tickerplant import endpoint
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.feed.books import LiveBooks
from tickerplant.feed.handler import FeedHandler
from tickerplant.ops.config import ConfigError
from tickerplant.ops.dashboard import LiveTable
from tickerplant.ops.figures import summed
from tickerplant.session.feed import FeedConfig


@dataclass(frozen=True, slots=True)
class DemoConfig:
    seconds: float = 20.0
    rate: int = 300_000  # messages per second
    drop_a: float = 0.05
    drop_b: float = 0.005
    seed: int = 1
    symbols: int = 500
    line_a: Endpoint = endpoint.LINE_A
    line_b: Endpoint = endpoint.LINE_B
    rerequest: Endpoint = endpoint.REREQUEST
    replay: Endpoint = endpoint.REPLAY

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ConfigError("seconds", f"{self.seconds}", "give a duration above 0")
        if self.rate <= 0:
            raise ConfigError("rate", f"{self.rate}", "give messages per second above 0")
        for name in ("drop_a", "drop_b"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(name, f"{getattr(self, name)}", "give a probability in [0, 1)")


async def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    books = LiveBooks()
    if console is not None:
        console.print("loading kernels (the first run compiles them, ~20 s; cached after)")
    books.warm()
    feed = FeedHandler(
        FeedConfig(
            line_a=cfg.line_a,
            line_b=cfg.line_b,
            rerequest=cfg.rerequest,
            replay=cfg.replay,
            digest=True,
        ),
        on_batch=books.on_batch,
        on_event=books.on_event,
    )
    await feed.start()
    exchange = ExchangeProcess(
        cfg.line_a, cfg.line_b, cfg.rerequest, cfg.replay,
        "--messages", str(int(cfg.rate * cfg.seconds)), "--seed", str(cfg.seed),
        "--symbols", str(cfg.symbols), "--rate", str(cfg.rate),
        "--drop-a", str(cfg.drop_a), "--drop-b", str(cfg.drop_b),
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        await exchange.start()
        await _watch(feed, books, stop, started, cfg, console)
        if stop.is_set():
            exchange.end_session()  # early: the exchange still answers repairs meanwhile
        published = await exchange.summary(timeout=60)
        # After end of session the handler may still be finishing repairs.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(feed.session_ended.wait(), timeout=10)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await exchange.close()
        await feed.close()
    return summary(feed, books, published, time.monotonic() - started)


async def _watch(
    feed: FeedHandler,
    books: LiveBooks,
    stop: asyncio.Event,
    started: float,
    cfg: DemoConfig,
    console: Console | None,
) -> None:
    """Until the session ends, the user stops us, or the run overstays its welcome."""
    deadline = started + cfg.seconds + 30
    ended = asyncio.ensure_future(feed.session_ended.wait())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        with LiveTable(console, time.monotonic()) as table:
            while not (ended.done() or stopped.done()) and time.monotonic() < deadline:
                await asyncio.wait({ended, stopped}, timeout=0.5)
                now = time.monotonic()
                figures = feed.figures() | books.figures()
                title = f"tickerplant demo: {now - started:4.1f} s of {cfg.seconds:g}"
                if not figures["delivered_messages"]:
                    title += " (waiting for the exchange: its first run compiles kernels)"
                table.show(figures, now, title)
    finally:
        for task in (ended, stopped):
            task.cancel()


def summary(
    feed: FeedHandler, books: LiveBooks, published: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """The verdict (delivered == published, by count and sha256, nothing lost), then the
    feed's and the books' figures and the exchange's summary."""
    figures = feed.figures()
    count = published.get("published")
    delivered = figures["delivered_messages"]
    identical = (
        count is not None
        and count == delivered
        and published.get("sha256") == feed.session.digest
        and figures["lost_messages"] == 0
    )
    return {
        "published": count,
        "delivered": delivered,
        "identical": identical,
        "duplicates_delivered": figures["duplicates_delivered"],
        "seconds": round(seconds, 3),
        "published_sha256": published.get("sha256"),
        "delivered_sha256": feed.session.digest,
        "feed": figures,
        "books": books.figures(),
        "exchange": published,
    }


def print_summary(result: dict[str, Any], console: Console) -> None:
    feed = result["feed"]
    repaired = summed(feed["gaps_repaired"])
    verdict = "[green]identical[/]" if result["identical"] else "[bold red]NOT identical[/]"
    console.print(
        f"published {result['published']:,} messages, delivered {result['delivered']:,}:"
        f" {verdict} (sha256 {str(result['delivered_sha256'])[:16]}...)\n"
        f"gaps seen {sum(feed['gaps_seen'].values()):,}: repaired by the other line"
        f" {repaired['line']:,}, by re-request {repaired['rerequest']:,},"
        f" by replay {repaired['replay']:,}; lost {sum(feed['gaps_lost'].values()):,}."
        f" Duplicates delivered: {result['duplicates_delivered']}."
    )
