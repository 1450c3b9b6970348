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

Stopped (SIGTERM, Ctrl-C: the ``stop`` event), the exchange ends its session at once and the
demo waits STOP_WAIT for its summary and for what is in flight, then gives the same verdict on
what it has, marked ``stopped``: what was published before the stop against what was delivered
and received by then. A client still catching up is told ``incomplete (stopped early)``, not
``NOT identical``; the command exits 0 either way, as the user asked for the stop.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console

from tickerplant import endpoint
from tickerplant.client import Conflated, Events, Lost, Reconnected, Skipped, subscribe
from tickerplant.client.quotes import Quotes
from tickerplant.distribute.fanout import FanOutLimits
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.feed.handler import FeedConfig
from tickerplant.io.multicast import LineConfig
from tickerplant.io.web import WebServer
from tickerplant.ops import logs
from tickerplant.ops.dashboard import LiveTable
from tickerplant.ops.metrics import Snapshot
from tickerplant.plant import EventsConfig, GlimpseConfig, Plant, PlantConfig, StreamConfig
from tickerplant.plant.tier2 import Tier2Config
from tickerplant.receive.events import Batch
from tickerplant.session.soupbin import HEARTBEAT_INTERVAL
from tickerplant.verdict import STOP_WAIT, summary
from tickerplant.wire import events as ev
from tickerplant.wire import soupbintcp as soup
from tickerplant.wire.channels import check_count

DROP_EVERY = 3.0  # seconds the resuming client reads before it drops its connection
SLOW_PAUSE = 0.1  # seconds a slow events client sleeps after each batch it takes
SLOW_RCVBUF = 256 << 10  # bytes their kernels may hold for them unread (SO_RCVBUF)
STALENESS_EVERY = 0.02  # seconds between samples of the conflated client's staleness
# The slow events clients' users and their policies, and a backlog cap low enough for them to
# hit it within the demo's seconds.
POLICIES = {"merge": "conflate", "skip": "skip"}
# The user names the demo's own clients log in as: what they are put through is staged, summed
# up in the table and the verdict, and logged only at debug level (logs.planned).
OWN_USERS = ("reader", "drop", "stall", "events", *POLICIES)
EVENTS_BACKLOG = 1 << 20
# The staller is cut as a slow consumer whichever way it fell behind: pushed live past the
# backlog cap, or (a burst deferred it once) left to catch-up turns, which stop at its full
# socket and leave only the write deadline, 10 s by default: longer than the demo on a busy
# machine. The readers never stop reading for this long.
STALL_CUT = 3.0
MAX_EDGES = 9  # each its own process, its events on the first edge's port + 0..8


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
    # The exchange's stocks over this many channels (its --channels); the plant takes them
    # all, the demo's clients read channel 1 (a blank session in their logins).
    channels: int = 1
    # Edges (`tickerplant edge`, each a process of its own) joining the plant's tier-2, each
    # with a client of its events stream: 0, none and no tier-2.
    edges: int = 0
    tier2_a: Endpoint = endpoint.TIER2_A
    tier2_b: Endpoint = endpoint.TIER2_B
    tier2_rerequest: Endpoint = endpoint.TIER2_REREQUEST
    edge_events: Endpoint = endpoint.EDGE_EVENTS  # the first edge's; the next ones' ports follow

    def __post_init__(self) -> None:
        check_count(self.channels)
        if not 0 <= self.edges <= MAX_EDGES:
            raise ConfigError("edges", f"{self.edges}", f"give 0 to {MAX_EDGES}")
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

    def receive(self, record: object) -> None:
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
    conflated: int = 0  # records the server said it did not send as themselves
    skipped: int = 0  # records the server said it skipped
    unannounced: int = 0  # records neither received nor announced: must stay 0
    next: int = 1
    covered: int = 0  # the end of the last range a Conflated notice covered
    quotes: Quotes = field(default_factory=Quotes)
    sha256: Any = field(default_factory=hashlib.sha256)
    # Trades by locate, counted from trades and trades summaries alike (broken ones aside).
    trade_count: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(1 << 16, np.int64))
    trade_volume: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(1 << 16, np.int64))
    # After each batch taken: the newest number held and when (the reader's are "live").
    newest: list[int] = field(default_factory=list)
    taken_at: list[float] = field(default_factory=list)

    def receive(self, record: object) -> None:
        if isinstance(record, Events):
            got = record.records
            self.records += got.shape[0]
            self.sha256.update(got.tobytes())
            self.quotes.apply(got)
            trades = ev.view(got, ev.TRADE)
            trades = trades[trades["trade"] != ev.BROKEN]
            summaries = ev.view(got, ev.TRADES)
            np.add.at(self.trade_count, trades["locate"], 1)
            np.add.at(self.trade_volume, trades["locate"], trades["size"].astype(np.int64))
            np.add.at(self.trade_count, summaries["locate"], summaries["count"].astype(np.int64))
            np.add.at(self.trade_volume, summaries["locate"],
                      summaries["volume"].astype(np.int64))  # fmt: skip
            numbers = got["sequence"][(got["flags"] & ev.IMAGE) == 0].astype(np.int64)
            if numbers.shape[0]:
                # A number missing is announced if a Conflated notice covered it.
                prev = np.concatenate([[self.next - 1], numbers[:-1]])
                hole = numbers - prev - 1
                self.unannounced += int(hole[(hole > 0) & (prev + 1 >= self.covered)].sum())
                self.next = max(self.next, int(numbers.max()) + 1)
                self.newest.append(self.next - 1)
                self.taken_at.append(time.monotonic())
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
    # A slow client keeps its buffers small: what waits there is as stale as it is long.
    async for record in subscribe(events, events=True, username=username, retry=0.2,
                                  max_queued=1 if pause else 1024,
                                  rcvbuf=SLOW_RCVBUF if pause else None):  # fmt: skip
        client.receive(record)
        if pause and isinstance(record, Events):
            await asyncio.sleep(pause)


async def _staleness(client: EventsClient, live: EventsClient, samples: list[float]) -> None:
    """Every STALENESS_EVERY, how stale ``client``'s picture is: since when the live reader
    has held a record it has not (0 when it holds all the reader has). Sampled on a clock,
    not on its reads, so the time it spends between reads counts."""
    while True:
        await asyncio.sleep(STALENESS_EVERY)
        if not client.newest:
            continue  # not logged in yet
        i = bisect.bisect_right(live.newest, client.newest[-1])
        samples.append(0.0 if i == len(live.newest) else time.monotonic() - live.taken_at[i])


async def _reader(itch: Endpoint, client: DemoClient) -> None:
    async for record in subscribe(itch, retry=0.2, username="reader"):
        client.receive(record)


async def _dropper(itch: Endpoint, client: DemoClient) -> None:
    """Reads for DROP_EVERY seconds, drops the connection, comes back at the next number."""
    loop = asyncio.get_running_loop()
    first = 1
    while True:
        until = loop.time() + DROP_EVERY
        ended = True
        async for record in subscribe(itch, first=first, retry=0.2, username="drop"):
            client.receive(record)
            if isinstance(record, Batch | Lost):
                first = record.end
            if loop.time() >= until:
                ended = False
                break
        if ended:
            return
        client.reconnects += 1


async def _staller(itch: Endpoint) -> None:
    """Logs in from 1 and never reads, but heartbeats, as a stuck application whose connection
    stays alive does: the server must cut it as a slow consumer, not wait for it. (Silent, it
    would be closed as a dead link after dead_after, 15 s: before the exchange's first packet
    when a first run spends ~20 s compiling kernels, and never cut for what it did not read.)"""
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection(itch.host, itch.port)
        try:
            writer.write(soup.encode(soup.LoginRequest(b"stall", b"", b"", 1)))
            while not writer.is_closing():  # until the server's reset, seen on a write
                writer.write(soup.encode(soup.ClientHeartbeat()))
                await asyncio.sleep(HEARTBEAT_INTERVAL)
        finally:
            writer.close()


async def run_demo(cfg: DemoConfig, console: Console | None = None,
                   stop: asyncio.Event | None = None) -> dict[str, Any]:
    """The demo until the session's end and the verdict; ``stop`` set ends it early (the
    exchange ends its session at once) and the verdict covers what came in by then."""
    feed = FeedConfig(cfg.line_a, cfg.line_b, rerequest=cfg.rerequest if cfg.recovery else None,
                      replay=cfg.replay if cfg.recovery else None, digest=True)
    plant = Plant(PlantConfig(
        feed, StreamConfig(cfg.itch, FanOutLimits(write_deadline=STALL_CUT)),
        GlimpseConfig(cfg.glimpse),
        events=EventsConfig(cfg.events, FanOutLimits(max_backlog=EVENTS_BACKLOG),
                            slow_consumers=POLICIES),
        channels=cfg.channels,
        tier2=Tier2Config(LineConfig(*cfg.tier2_a.pair), LineConfig(*cfg.tier2_b.pair),
                          rerequest=cfg.tier2_rerequest) if cfg.edges else Tier2Config(),
    ))  # fmt: skip
    logs.planned(OWN_USERS)
    if console is not None:
        console.print("loading kernels (the first run compiles them, ~20 s, unless make cached"
                      " them)")
    snapshot = Snapshot()
    web = WebServer(cfg.metrics, snapshot) if cfg.metrics is not None else None
    try:
        await plant.start()
    except BaseException:
        if web is not None:
            web.close()
        raise
    if console is not None and web is not None:
        console.print(f"dashboard: {web.url} (Prometheus metrics: {web.url}metrics)",
                      highlight=False)  # fmt: skip
    if console is not None:
        console.print(f"the itch stream is on {cfg.itch}, events on {cfg.events}, snapshots on"
                      f" {cfg.glimpse}; in another terminal, live BBOs: tickerplant subscribe"
                      f" {cfg.events} --events", highlight=False)
        if cfg.channels > 1:
            console.print(f"{cfg.channels} channels, each its own session: a client names one "
                          "in its login (subscribe --session NAME; blank: the first)",
                          highlight=False)  # fmt: skip
    reader, dropper = DemoClient(), DemoClient()
    watchers = {"events": EventsClient(), "conflated": EventsClient(), "skipper": EventsClient()}
    clients = [asyncio.ensure_future(_reader(cfg.itch, reader)),
               asyncio.ensure_future(_dropper(cfg.itch, dropper)),
               asyncio.ensure_future(_events(cfg.events, watchers["events"], "events")),
               asyncio.ensure_future(_events(cfg.events, watchers["conflated"], "merge",
                                             SLOW_PAUSE)),
               asyncio.ensure_future(_events(cfg.events, watchers["skipper"], "skip",
                                             SLOW_PAUSE))]
    folder = Path(tempfile.mkdtemp(prefix="tickerplant-demo-"))  # the edges' configs
    edges = [await _edge(cfg, n, folder) for n in range(cfg.edges)]
    for n in range(cfg.edges):
        watchers[f"edge{n + 1}"] = EventsClient()
        clients.append(asyncio.ensure_future(_events(_edge_events(cfg, n),
                                                     watchers[f"edge{n + 1}"], "events")))
    if console is not None and edges:
        console.print(f"{cfg.edges} edges joined tier-2 ({cfg.tier2_a}, {cfg.tier2_b}): "
                      f"their events on {_edge_events(cfg, 0)} and up",
                      highlight=False)  # fmt: skip
    staller = asyncio.ensure_future(_staller(cfg.itch))
    staleness: list[float] = []
    sampler = asyncio.ensure_future(_staleness(watchers["conflated"], watchers["events"],
                                               staleness))  # fmt: skip
    exchange = ExchangeProcess(
        cfg.line_a, cfg.line_b, cfg.rerequest, cfg.replay,
        "--messages", str(int(cfg.rate * cfg.seconds)), "--seed", str(cfg.seed),
        "--symbols", str(cfg.symbols), "--rate", str(cfg.rate),
        "--drop-a", str(cfg.drop_a), "--drop-b", str(cfg.drop_b),
        "--channels", str(cfg.channels),
    )  # fmt: skip
    stop = stop if stop is not None else asyncio.Event()
    published: dict[str, Any] = {}
    started = time.monotonic()
    relay: asyncio.Task[float] | None = None
    try:
        await exchange.start()
        # A stop reaches the exchange at once, not after the busy loop's next turn of the table.
        relay = asyncio.ensure_future(_relay(stop, exchange))
        await _watch(plant, stop, started, cfg, console, snapshot)
        finishing = asyncio.ensure_future(_finish(exchange, plant, clients, published))
        await asyncio.wait({finishing, relay}, return_when=asyncio.FIRST_COMPLETED)
        if not finishing.done():
            # Stopped: the exchange is ending its session (answering repairs meanwhile), and
            # the verdict takes what is in by STOP_WAIT after the stop: the user is waiting.
            left = relay.result() + STOP_WAIT - time.monotonic()
            await asyncio.wait({finishing}, timeout=max(0.0, left))
            finishing.cancel()
        (outcome,) = await asyncio.gather(finishing, return_exceptions=True)
        if isinstance(outcome, Exception) and not stop.is_set():
            raise outcome  # the exchange failed: so did the demo (stopped, it may not report)
    finally:
        for task in (*clients, staller, sampler, *([relay] if relay is not None else [])):
            task.cancel()
        await exchange.close()
        for edge in edges:
            await _stop(edge)
        shutil.rmtree(folder, ignore_errors=True)
        await plant.close()
        if web is not None:
            web.close()
    result = summary(plant, published, {"reader": reader, "dropper": dropper},
                     time.monotonic() - started, watchers, staleness)
    result["stopped"] = stop.is_set()
    return result


def _edge_events(cfg: DemoConfig, n: int) -> Endpoint:
    return Endpoint(cfg.edge_events.host, cfg.edge_events.port + n)


async def _edge(cfg: DemoConfig, n: int, folder: Path) -> asyncio.subprocess.Process:
    """Edge ``n`` (from 0): ``tickerplant edge`` on the plant's tier-2 (a process of its own, as
    on another host), its events on EDGE_EVENTS's port + n."""
    config = folder / f"edge{n + 1}.toml"
    config.write_text(f"channels = {cfg.channels}\n[feed]\n"
                      f'line_a = "{cfg.tier2_a}"\nline_b = "{cfg.tier2_b}"\n'
                      f'rerequest = "{cfg.tier2_rerequest}"\nreplay = "{cfg.events}"\n'
                      f'[events]\nlisten = "{_edge_events(cfg, n)}"\n')  # fmt: skip
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tickerplant", "edge", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def _stop(edge: asyncio.subprocess.Process) -> None:
    if edge.returncode is None:
        edge.terminate()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(edge.wait(), 10)
    if edge.returncode is None:
        edge.kill()
        await edge.wait()


async def _relay(stop: asyncio.Event, exchange: ExchangeProcess) -> float:
    """On a stop, the exchange ends its session; returns when the stop was seen."""
    await stop.wait()
    exchange.end_session()
    return time.monotonic()


async def _finish(exchange: ExchangeProcess, plant: Plant, clients: list[asyncio.Task[None]],
                  published: dict[str, Any]) -> None:  # fmt: skip
    """After the exchange's last message: its summary, into ``published``; then the plant and
    the clients finishing what they are at (repairs, catching up)."""
    published.update(await exchange.report(timeout=60))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(plant.ended(), timeout=10)
    # (asyncio.wait, not wait_for(gather): a gather cancelled by a stop leaves its
    # CancelledError unretrieved, logged as a traceback at the exit.)
    done, _ = await asyncio.wait(clients, timeout=10)
    for client in done:
        client.result()  # a client that failed: the demo failed


async def _watch(
    plant: Plant, stop: asyncio.Event, started: float, cfg: DemoConfig, console: Console | None,
    snapshot: Snapshot,
) -> None:  # fmt: skip
    """Until the session ends, the user stops us, or the run overstays its welcome."""
    deadline = started + cfg.seconds + 30
    ended = asyncio.ensure_future(plant.ended())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        with LiveTable(console, time.monotonic()) as table:
            while not (ended.done() or stopped.done()) and time.monotonic() < deadline:
                # (FIRST_COMPLETED: by default wait() waits for both, so a stop was seen
                # only at the next half second)
                await asyncio.wait({ended, stopped}, timeout=0.5,
                                   return_when=asyncio.FIRST_COMPLETED)
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
