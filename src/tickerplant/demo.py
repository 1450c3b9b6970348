"""``tickerplant demo``: the exchange simulator and the whole plant together on loopback.

The exchange runs in its own process (the machine has two cores: one publishes, one receives),
publishes a synthetic day on line A and line B with loss injected per line, and ends the session;
the plant repairs what was lost, builds the books and serves the ``itch`` stream to three demo
clients in this process: one that reads everything, one that drops its connection every few
seconds and resumes from its last number, and one that logs in and never reads (a slow consumer,
cut by the server). The verdict compares, by count and sha256, the published stream with what the
plant delivered and with what each reading client received.

The ``events`` stream has three clients too: one that reads everything (compared by sha256 with
the plant's events journal), and two that read slowly, as users whose slow-consumer policy is
``conflate`` (checked to end with every symbol's last BBO) and ``skip`` (checked to have been
told of every record it did not get).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console

from tickerplant import endpoint
from tickerplant.client import Conflated, Events, Lost, Reconnected, Skipped, subscribe
from tickerplant.client.quotes import Quotes
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.io.web import WebServer
from tickerplant.ops.config import ConfigError
from tickerplant.ops.dashboard import LiveTable
from tickerplant.ops.figures import summed
from tickerplant.ops.metrics import Snapshot
from tickerplant.plant import EventsConfig, GlimpseConfig, Plant, PlantConfig, StreamConfig
from tickerplant.session.events import Batch
from tickerplant.session.fanout import FanOutLimits
from tickerplant.session.feed import FeedConfig
from tickerplant.wire import events as ev
from tickerplant.wire import soupbintcp as soup

DROP_EVERY = 3.0  # seconds the resuming client reads before it drops its connection
SLOW_PAUSE = 0.1  # seconds a slow events client sleeps after each batch it takes
# The slow events clients' users and their policies, and a backlog cap low enough for them to
# hit it within the demo's seconds.
POLICIES = {"merge": "conflate", "skip": "skip"}
EVENTS_BACKLOG = 1 << 20


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
    itch: Endpoint = endpoint.ITCH
    glimpse: Endpoint = endpoint.GLIMPSE
    events: Endpoint = endpoint.EVENTS
    metrics: Endpoint | None = endpoint.METRICS  # Prometheus metrics (None: not served)
    recovery: bool = True  # False: the plant repairs from the other line only

    def __post_init__(self) -> None:
        if self.seconds <= 0:
            raise ConfigError("seconds", f"{self.seconds}", "give a duration above 0")
        if self.rate <= 0:
            raise ConfigError("rate", f"{self.rate}", "give messages per second above 0")
        for name in ("drop_a", "drop_b"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(name, f"{getattr(self, name)}", "give a probability in [0, 1)")


@dataclass(slots=True)
class DemoClient:
    """What one demo client received."""

    messages: int = 0
    lost: int = 0
    reconnects: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)

    def take(self, record: object) -> None:
        if isinstance(record, Batch):
            self.messages += record.count
            self.sha256.update(record.blocks)
        elif isinstance(record, Lost):
            self.lost += record.end - record.start
        elif isinstance(record, Reconnected):
            self.reconnects += 1


@dataclass(slots=True)
class EventsClient:
    """What one demo client of the events stream received, and what it was told."""

    records: int = 0
    conflated: int = 0  # BBO changes the server said it did not send
    skipped: int = 0  # records the server said it skipped
    unannounced: int = 0  # records neither received nor announced: must stay 0
    next: int = 1
    covered: int = 0  # the end of the last range a Conflated notice covered
    quotes: Quotes = field(default_factory=Quotes)
    sha256: Any = field(default_factory=hashlib.sha256)

    def take(self, record: object) -> None:
        if isinstance(record, Events):
            got = record.records
            self.records += got.shape[0]
            self.sha256.update(got.tobytes())
            self.quotes.take(got)
            numbers = got["sequence"][(got["flags"] & ev.IMAGE) == 0].astype(np.int64)
            if numbers.shape[0]:
                # A number missing is announced if a Conflated notice covered it.
                prev = np.concatenate([[self.next - 1], numbers[:-1]])
                hole = numbers - prev - 1
                self.unannounced += int(hole[(hole > 0) & (prev + 1 >= self.covered)].sum())
                self.next = max(self.next, int(numbers.max()) + 1)
        elif isinstance(record, Conflated):
            self.conflated += record.dropped
            self.covered = max(self.covered, record.end)
        elif isinstance(record, Skipped):
            self.skipped += record.end - record.start
            self.next = max(self.next, record.end)
        elif isinstance(record, Lost):
            self.next += 1  # the record that told it


async def _events(events: Endpoint, client: EventsClient, username: str = "",
                  pause: float = 0.0) -> None:  # fmt: skip
    async for record in subscribe(events, events=True, username=username, retry=0.2,
                                  max_queued=8 if pause else 1024):  # fmt: skip
        client.take(record)
        if pause and isinstance(record, Events):
            await asyncio.sleep(pause)


async def _reader(itch: Endpoint, client: DemoClient) -> None:
    async for record in subscribe(itch, retry=0.2):
        client.take(record)


async def _dropper(itch: Endpoint, client: DemoClient) -> None:
    """Reads for DROP_EVERY seconds, drops the connection, comes back at the next number."""
    loop = asyncio.get_running_loop()
    first = 1
    while True:
        until = loop.time() + DROP_EVERY
        ended = True
        async for record in subscribe(itch, first=first, retry=0.2):
            client.take(record)
            if isinstance(record, Batch | Lost):
                first = record.end
            if loop.time() >= until:
                ended = False
                break
        if ended:
            return
        client.reconnects += 1


async def _staller(itch: Endpoint) -> None:
    """Logs in from 1 and never reads: the server must cut it, not wait for it."""
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection(itch.host, itch.port)
        writer.write(soup.encode(soup.LoginRequest(b"", b"", b"", 1)))
        await asyncio.sleep(3600)


async def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict[str, Any]:
    feed = FeedConfig(cfg.line_a, cfg.line_b, rerequest=cfg.rerequest if cfg.recovery else None,
                      replay=cfg.replay if cfg.recovery else None, digest=True)
    plant = Plant(PlantConfig(
        feed, StreamConfig(cfg.itch), GlimpseConfig(cfg.glimpse),
        events=EventsConfig(cfg.events, FanOutLimits(max_backlog=EVENTS_BACKLOG)),
        slow_consumers=POLICIES,
    ))  # fmt: skip
    if console is not None:
        console.print("loading kernels (the first run compiles them, ~20 s; cached after)")
    snapshot = Snapshot()
    web = WebServer(cfg.metrics, snapshot) if cfg.metrics is not None else None
    await plant.start()
    if console is not None and web is not None:
        console.print(f"dashboard: {web.url} (Prometheus metrics: {web.url}metrics)",
                      highlight=False)  # fmt: skip
    if console is not None:
        console.print(f"the itch stream is on {cfg.itch}, events on {cfg.events}, snapshots on"
                      f" {cfg.glimpse}; in another terminal, live BBOs: tickerplant subscribe"
                      f" {cfg.events} --events", highlight=False)
    reader, dropper = DemoClient(), DemoClient()
    watchers = {"events": EventsClient(), "conflated": EventsClient(), "skipper": EventsClient()}
    clients = [asyncio.ensure_future(_reader(cfg.itch, reader)),
               asyncio.ensure_future(_dropper(cfg.itch, dropper)),
               asyncio.ensure_future(_events(cfg.events, watchers["events"])),
               asyncio.ensure_future(_events(cfg.events, watchers["conflated"], "merge",
                                             SLOW_PAUSE)),
               asyncio.ensure_future(_events(cfg.events, watchers["skipper"], "skip",
                                             SLOW_PAUSE))]
    staller = asyncio.ensure_future(_staller(cfg.itch))
    exchange = ExchangeProcess(
        cfg.line_a, cfg.line_b, cfg.rerequest, cfg.replay,
        "--messages", str(int(cfg.rate * cfg.seconds)), "--seed", str(cfg.seed),
        "--symbols", str(cfg.symbols), "--rate", str(cfg.rate),
        "--drop-a", str(cfg.drop_a), "--drop-b", str(cfg.drop_b),
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Off the main thread (a test driving a browser beside it) signals cannot be had: the
    # caller ends the run.
    signals = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is \
        threading.main_thread() else ()  # fmt: skip
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        await exchange.start()
        await _watch(plant, stop, started, cfg, console, snapshot)
        if stop.is_set():
            exchange.end_session()  # early: the exchange still answers repairs meanwhile
        published = await exchange.summary(timeout=60)
        # After end of session the plant may still be finishing repairs, the clients reading.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(plant.feed.session_ended.wait(), timeout=10)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*clients), timeout=10)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        for task in (*clients, staller):
            task.cancel()
        await exchange.close()
        await plant.close()
        if web is not None:
            web.close()
    return summary(plant, published, {"reader": reader, "dropper": dropper},
                   time.monotonic() - started, watchers)


async def _watch(
    plant: Plant, stop: asyncio.Event, started: float, cfg: DemoConfig, console: Console | None,
    snapshot: Snapshot,
) -> None:  # fmt: skip
    """Until the session ends, the user stops us, or the run overstays its welcome."""
    deadline = started + cfg.seconds + 30
    ended = asyncio.ensure_future(plant.feed.session_ended.wait())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        with LiveTable(console, time.monotonic()) as table:
            while not (ended.done() or stopped.done()) and time.monotonic() < deadline:
                await asyncio.wait({ended, stopped}, timeout=0.5)
                now = time.monotonic()
                figures = plant.figures()
                snapshot.set(figures)
                title = f"tickerplant demo: {now - started:4.1f} s of {cfg.seconds:g}"
                if not figures["delivered_messages"]:
                    title += " (waiting for the exchange: its first run compiles kernels)"
                table.show(figures, now, title)
    finally:
        for task in (ended, stopped):
            task.cancel()


def summary(
    plant: Plant, published: dict[str, Any], clients: dict[str, DemoClient], seconds: float,
    watchers: dict[str, EventsClient] | None = None,
) -> dict[str, Any]:
    """The verdict (delivered == published and received == published, by count and sha256,
    nothing lost), then the plant's figures, the clients' and the exchange's summary."""
    figures = plant.figures()
    count = published.get("published")
    sha = published.get("sha256")
    delivered = figures["delivered_messages"]
    digest = plant.feed.session.digest
    received = {
        name: {"messages": c.messages, "lost": c.lost, "reconnects": c.reconnects,
               "identical": c.messages == count and c.sha256.hexdigest() == sha}
        for name, c in clients.items()
    }  # fmt: skip
    identical = (
        count is not None
        and count == delivered
        and sha == digest
        and figures["lost_messages"] == 0
        and all(c["identical"] for c in received.values())
    )
    return {
        "published": count,
        "delivered": delivered,
        "identical": identical,
        "duplicates_delivered": figures["duplicates_delivered"],
        "seconds": round(seconds, 3),
        "published_sha256": sha,
        "delivered_sha256": digest,
        "clients": received,
        "slow_consumers_cut": figures["slow_consumers"]["itch"]["disconnect"],
        "events": _events_verdict(plant, watchers or {}),
        "feed": {k: v for k, v in figures.items() if k not in plant.books.figures()},
        "books": plant.books.figures(),
        "exchange": published,
    }


def _events_verdict(plant: Plant, watchers: dict[str, EventsClient]) -> dict[str, Any]:
    """The events clients against the plant's events journal: the reader has all of it (by
    sha256), the conflated client every symbol's last BBO, the skipper no record unannounced."""
    journal = plant.event_stream.journal
    total, blocks = (journal.blocks(1, len(journal)) if journal is not None and len(journal)
                     else (0, b""))  # fmt: skip
    sha = hashlib.sha256(ev.from_blocks(blocks).tobytes()).hexdigest()
    full = watchers.get("events")
    out: dict[str, Any] = {"records": total}
    for name, c in watchers.items():
        out[name] = {
            "records": c.records, "conflated": c.conflated, "skipped": c.skipped,
            "unannounced": c.unannounced,
            "identical": c.records == total and c.sha256.hexdigest() == sha,
            "last_bbo_identical": full is not None and c.quotes.bbo == full.quotes.bbo,
        }  # fmt: skip
    return out


def print_summary(result: dict[str, Any], console: Console) -> None:
    feed = result["feed"]
    repaired = summed(feed["gaps_repaired"])
    verdict = "[green]identical[/]" if result["identical"] else "[bold red]NOT identical[/]"
    clients = "; ".join(
        f"{name} received {c['messages']:,}"
        + (f" over {c['reconnects'] + 1} connections" if c["reconnects"] else "")
        + (" [green]identical[/]" if c["identical"] else " [bold red]NOT identical[/]")
        for name, c in result["clients"].items()
    )
    console.print(
        f"published {result['published']:,} messages, delivered {result['delivered']:,}:"
        f" {verdict} (sha256 {str(result['delivered_sha256'])[:16]}...)\n"
        f"gaps seen {sum(feed['gaps_seen'].values()):,}: repaired by the other line"
        f" {repaired['line']:,}, by re-request {repaired['rerequest']:,},"
        f" by replay {repaired['replay']:,}; lost {sum(feed['gaps_lost'].values()):,}."
        f" Duplicates delivered: {result['duplicates_delivered']}.\n"
        f"itch stream: {clients}; slow consumers cut: {result['slow_consumers_cut']}."
    )
    events = result["events"]
    if events:
        ok = "[green]identical[/]"
        bad = "[bold red]NOT identical[/]"
        full, conflated, skipper = (events.get(n, {}) for n in ("events", "conflated", "skipper"))
        console.print(
            f"events stream: {events['records']:,} records; reader received"
            f" {full.get('records', 0):,} {ok if full.get('identical') else bad};"
            f" conflated client {conflated.get('records', 0):,} records,"
            f" {conflated.get('conflated', 0):,} BBO changes conflated, last BBOs"
            f" {ok if conflated.get('last_bbo_identical') else bad};"
            f" skipping client {skipper.get('records', 0):,} records,"
            f" {skipper.get('skipped', 0):,} skipped and told"
            f" ({skipper.get('unannounced', 0)} unannounced)."
        )
