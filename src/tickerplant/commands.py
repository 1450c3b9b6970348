"""What each ``tickerplant`` command does, given its parsed arguments (``cli.py`` parses them):
the demo, the exchange simulator, the feed, the plant (``run``), a subscriber, a password hash.
Each returns the process's exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

from rich.console import Console

from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.io.loop import run_loop, stop_on_signals
from tickerplant.io.web import WebServer
from tickerplant.ops import logs
from tickerplant.ops.metrics import Snapshot


def _web(listen: Endpoint | None, snapshot: Snapshot) -> WebServer | None:
    """The metrics listener on ``listen``, if any, its URL told on stderr."""
    if listen is None:
        return None
    web = WebServer(listen, snapshot)
    print(f"metrics: {web.url}metrics", file=sys.stderr)
    return web


async def _show(
    figures: Callable[[], dict[str, Any]], snapshot: Snapshot, console: Console | None,
    stop: asyncio.Event, seconds: float, title: str = "", done: Callable[[], bool] = lambda: False,
) -> None:
    """The figures every half second, on the table and for /metrics, until ``stop``, ``seconds``
    (0: no end) or ``done()``."""
    from tickerplant.ops.dashboard import LiveTable

    loop = asyncio.get_running_loop()
    end = loop.time() + seconds if seconds else float("inf")
    with LiveTable(console, loop.time()) as table:
        while not stop.is_set() and loop.time() < end and not done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(0.5, end - loop.time()))
            now = figures()
            snapshot.set(now)
            table.show(now, loop.time(), title)


def demo(args: argparse.Namespace) -> int:
    from tickerplant.demo import DemoConfig, run_demo
    from tickerplant.verdict import print_summary

    cfg = DemoConfig(
        seconds=args.seconds, rate=args.rate, drop_a=args.drop_a, drop_b=args.drop_b,
        seed=args.seed, symbols=args.symbols, metrics=None if args.no_metrics else args.metrics,
        channels=args.channels, edges=args.edges,
    )  # fmt: skip
    console = Console(stderr=args.json)

    async def main() -> int:
        stop = asyncio.Event()
        restore = stop_on_signals(stop, "demo")
        try:
            result = await run_demo(cfg, None if args.json else console, stop)
        finally:
            restore()
        if args.json:
            print(json.dumps(result))
        else:
            print_summary(result, console)
        # Stopped, the verdict covers what there was time for; the user asked for the stop.
        return 0 if result["verdict"] or result["stopped"] else 1

    return run_loop(main())


def exchange(args: argparse.Namespace) -> int:
    from tickerplant.exchange.simulator import (
        ExchangeConfig,
        FileSource,
        SyntheticSource,
        run_exchange,
    )
    from tickerplant.exchange.summary import ExchangeSummary
    from tickerplant.io.multicast import LineConfig

    def line(name: str, group: Endpoint, drop: float) -> LineConfig:
        try:
            return LineConfig(
                group.host, group.port, args.interface, args.ttl, not args.no_loopback, drop
            )
        except ConfigError as err:
            raise err.within(name) from None

    pacing = "itch" if args.speed else "rate" if args.rate else "fast"
    source: FileSource | SyntheticSource = (
        FileSource(str(args.itch)) if args.itch
        else SyntheticSource(args.seed, args.symbols, args.messages)
    )  # fmt: skip
    cfg = ExchangeConfig(
        session=args.session,
        channels=args.channels,
        source=source,
        pacing=pacing,
        rate=args.rate or 1.0,
        speed=args.speed or 1.0,
        line_a=line("line_a", args.line_a, args.drop_a),
        line_b=line("line_b", args.line_b, args.drop_b),
        rerequest=None if args.no_rerequest else args.rerequest,
        replay=None if args.no_replay else args.replay,
        end_of_session_seconds=args.eos_seconds,
        drop_seed=args.drop_seed,
        sent_log=args.sent_log,
        journal_dir=args.journal_dir,
    )
    console = Console(stderr=True)

    snapshot = Snapshot()

    def progress(s: ExchangeSummary) -> None:
        snapshot.set(s.figures())
        # Plain lines on stderr, also with --json: tests and scripts wait on "published N".
        console.print(
            f"{s.seconds:6.1f} s  published {s.published} messages in {s.packets} packets"
            f"  next {s.next_sequence}",
            highlight=False,
        )

    async def main() -> int:
        stop = asyncio.Event()
        restore = stop_on_signals(stop, "exchange")
        web = None
        try:
            web = _web(args.metrics, snapshot)
            summary = await run_exchange(cfg, stop, progress)
        finally:
            if web is not None:
                web.close()
            restore()
        if args.json:
            print(json.dumps(summary.to_dict()), flush=True)
        else:
            console.print(summary.to_dict())
        return 0 if summary.error is None else 1

    return run_loop(main())


def recovery(args: argparse.Namespace) -> int:
    from tickerplant.exchange.recovery import RecoveryConfig, run_recovery

    cfg = RecoveryConfig(args.journal_dir, None if args.no_rerequest else args.rerequest,
                         None if args.no_replay else args.replay)  # fmt: skip

    async def main() -> int:
        stop = asyncio.Event()
        restore = stop_on_signals(stop, "recovery")
        try:
            await run_recovery(cfg, stop)
        finally:
            restore()
        return 0

    return run_loop(main())


def feed(args: argparse.Namespace) -> int:
    from tickerplant.feed.handler import FeedConfig, FeedHandler
    from tickerplant.receive.recovery import RecoveryConfig

    cfg = FeedConfig(
        line_a=args.line_a,
        line_b=None if args.no_line_b else args.line_b,
        interface=args.interface,
        session=args.session,
        rerequest=None if args.no_rerequest else args.rerequest,
        replay=None if args.no_replay else args.replay,
        rcvbuf=args.rcvbuf,
        recovery=RecoveryConfig(line_wait=args.line_wait, give_up_after=args.give_up_after),
        capture=args.capture,
    )

    async def main() -> int:
        stop = asyncio.Event()
        restore = stop_on_signals(stop, "feed")
        feed = FeedHandler(cfg)
        snapshot = Snapshot()
        web = None
        started = False
        try:
            web = _web(args.metrics, snapshot)
            await feed.start()
            started = True
            await _show(feed.figures, snapshot, None if args.json else Console(), stop,
                        args.seconds, done=lambda: args.until_end and feed.session_ended.is_set())
        finally:
            if started:
                await feed.close()
            if web is not None:
                web.close()
            restore()
        if args.json:
            import resource

            figures = feed.figures()
            # ru_maxrss is in KiB on Linux.
            figures["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            print(json.dumps(figures))
        return 0

    try:
        return run_loop(main())
    except KeyboardInterrupt:
        return 130


def _freeze_startup() -> int:
    """What starting made (modules, compiled kernels, the books: ~130,000 objects) lives as long
    as the process: frozen, out of the cyclic collector's sight, a full collection looks only at
    what serving made (one over all of them took 45 ms, as 1,100 connections went at once).
    Frozen, the collector counts nothing long-lived to wait on before the next full collection
    (it waits for a quarter more than there are): it would come every 10 collections of the
    middle generation, and comes every 100. No collection first: it would hold the loop 45 ms
    with the lines joined, to spare the few objects starting left for the collector. Returns
    how many it froze (counted once: the count walks them all, ~5 ms, so no figure asks)."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 100)
    return gc.get_freeze_count()


C = TypeVar("C")  # a command's settings (a config dataclass)


class Service(Protocol):
    """What ``run`` and ``edge`` serve until stopped: a plant, an edge."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def figures(self) -> dict[str, Any]: ...


def _config(cls: type[C], args: argparse.Namespace, command: str) -> C | None:
    """The settings ``command`` was given (None: it printed every setting instead)."""
    from tickerplant.ops.config import example, load_file

    if args.example_config:
        print(
            f"# tickerplant {command} CONFIG.toml: every setting at its default. Leave out what\n"
            "# you do not change; an address is \"host:port\".\n" + example(cls, (Endpoint,))
        )
        return None
    if args.config is None:
        return cls()
    return load_file(cls, args.config, {Endpoint: Endpoint.parse})


S = TypeVar("S", bound=Service)


def _serve(args: argparse.Namespace, command: str, make: Callable[[], S],
           listen: Endpoint | None, said: Callable[[S], str],
           started: Callable[[S], None] = lambda _: None) -> int:  # fmt: skip
    """Serve what ``make`` makes until a stop (or ``--seconds``), the live table or ``--json``
    figures at the end; ``said``: the line that says where it serves, once started."""

    async def main() -> int:
        stop = asyncio.Event()
        restore = stop_on_signals(stop, command)
        service = make()
        snapshot = Snapshot()
        web = None
        up = False
        try:
            web = _web(listen, snapshot)
            await service.start()  # a port in use: a ConfigError naming the setting
            up = True
            started(service)
            console = None if args.json else Console()
            print(f"tickerplant {command}: {said(service)}", file=sys.stderr)
            await _show(service.figures, snapshot, console, stop, args.seconds,
                        f"tickerplant {command}")  # fmt: skip
        finally:
            final = service.figures()  # (before closing: its sockets' counters go with them)
            if up:
                await service.close()
            if web is not None:
                web.close()
            restore()
        if args.json:
            print(json.dumps(final))
        return 0

    return run_loop(main())


def run(args: argparse.Namespace) -> int:
    from tickerplant.plant import Plant, PlantConfig

    config = _config(PlantConfig, args, "run")
    if config is None:
        return 0
    listen = args.metrics or config.metrics.listen
    logging.getLogger("tickerplant.run").info(
        "config %s loaded", args.config or "(defaults)",
        extra=logs.fields(event="config_loaded", path=str(args.config or ""),
                          users=len(config.users), metrics=str(listen or "")))  # fmt: skip
    who = (f"users: {', '.join(config.users)}" if config.users
           else "no users configured: any login is accepted, from this host only")  # fmt: skip
    events = config.events.listen

    def started(plant: Plant) -> None:
        plant.frozen_objects = _freeze_startup()

    return _serve(args, "run", lambda: Plant(config), listen, lambda _: (
        f"serving the itch stream on {config.itch.listen}, events on {events}, snapshots on"
        f" {config.glimpse.listen} ({who}); watch live BBOs with: tickerplant subscribe"
        f" {events} --events"), started)  # fmt: skip


def edge(args: argparse.Namespace) -> int:
    from tickerplant.edge import Edge, EdgeConfig

    config = _config(EdgeConfig, args, "edge")
    if config is None:
        return 0

    def said(node: Edge) -> str:
        events = Endpoint(config.events.listen.host, node.port)
        return (f"joined tier-2 at {config.feed.line_a} and {config.feed.line_b}, serving events"
                f" on {events}; watch live BBOs with: tickerplant subscribe {events} --events")

    return _serve(args, "edge", lambda: Edge(config), config.metrics.listen, said)


def subscribe(args: argparse.Namespace) -> int:
    from tickerplant.client import subscribe

    events = args.events or args.symbols is not None
    if args.parquet is not None and not events:
        print("tickerplant subscribe: --parquet writes the events stream's records: add --events"
              " (and give the events port)", file=sys.stderr)  # fmt: skip
        return 2
    symbols = None if args.symbols is None else [s for s in args.symbols.split(",") if s]
    # What the server says (Debug: unknown symbols, why it disconnected us) reaches the user
    # through the logs main() set up, at info.
    stream = subscribe(args.endpoint, first=args.first, session=args.session,
                       username=args.username, password=args.password, events=events,
                       symbols=symbols)  # fmt: skip
    try:
        return run_loop(_read_events(stream, args) if events else _read_itch(stream, args))
    except KeyboardInterrupt:
        return 130


async def _read_itch(stream: AsyncIterator[Any], args: argparse.Namespace) -> int:
    from tickerplant.client import Lost, Reconnected
    from tickerplant.receive.events import Batch
    from tickerplant.wire import itch
    from tickerplant.wire.blocks import iter_messages

    received = lost = 0
    console = Console(stderr=True)
    async for record in stream:
        if isinstance(record, Batch):
            if args.json:
                for seq, msg in enumerate(iter_messages(record.blocks), record.first):
                    print(json.dumps({"sequence": seq, **_jsonable(itch.decode(msg))}))
            received += record.count
        elif isinstance(record, Lost):
            lost += record.end - record.start
            if args.json:
                print(json.dumps({"lost": [record.start, record.end]}))
        elif isinstance(record, Reconnected):
            console.print(f"reconnected at {record.sequence}: {record.reason}", markup=False)
        if not args.json and isinstance(record, Batch | Lost):
            console.print(f"received {received:,} messages, lost {lost:,}", end="\r")
        if args.count and received + lost >= args.count:
            break
    return 0


async def _read_events(stream: AsyncIterator[Any], args: argparse.Namespace) -> int:
    """The events stream as a live table of BBOs and last trades, as JSON lines, or into a
    Parquet file (renamed into place when the subscription ends, however it ends)."""
    import numpy as np
    from rich.live import Live

    from tickerplant.capture.parquet import RecordParquetWriter
    from tickerplant.client import Conflated, Events, Lost, Reconnected, Skipped
    from tickerplant.client.quotes import Quotes, as_json

    quotes = Quotes()
    writer = RecordParquetWriter(args.parquet) if args.parquet is not None else None
    console = Console(stderr=True)
    live = Live(quotes.table(), console=Console(), refresh_per_second=4,
                transient=False) if not (args.json or writer) else None  # fmt: skip
    received = 0
    names = np.full(1 << 16, "", dtype=object)
    named = 0
    try:
        if live is not None:
            live.start()
        async for record in stream:
            if isinstance(record, Events):
                quotes.apply(record.records)
                received += record.records.shape[0]
                if args.json:
                    for item in as_json(record.records, quotes.names):
                        print(json.dumps(item))
                if writer is not None:
                    if len(quotes.names) != named:  # a symbol named since: once per change
                        for locate, name in quotes.names.items():
                            names[locate] = name
                        named = len(quotes.names)
                    writer.write(record.records, names)
                if live is not None:
                    live.update(quotes.table())
            elif isinstance(record, Lost | Skipped | Conflated):
                told = {"lost": [record.start, record.end]} if isinstance(record, Lost) else (
                    {"skipped": [record.start, record.end]} if isinstance(record, Skipped)
                    else {"conflated": [record.start, record.end], "dropped": record.dropped})
                if args.json:
                    print(json.dumps(told))
                else:
                    console.print(f"notice: {told}", markup=False)
            elif isinstance(record, Reconnected):
                console.print(f"reconnected at {record.sequence}: {record.reason}", markup=False)
            if writer is not None and not args.json:
                console.print(f"received {received:,} records", end="\r")
            if args.count and received >= args.count:
                break
    finally:
        if live is not None:
            live.stop()
        if writer is not None:
            writer.close()
            console.print(f"wrote {writer.rows:,} records to {writer.path}")
    return 0


def _jsonable(record: Any) -> dict[str, Any]:
    out = {"type": type(record).__name__}
    for name, value in record._asdict().items():
        out[name] = value.decode("ascii", "replace").rstrip() if isinstance(value, bytes) else value
    return out


def passwd(args: argparse.Namespace) -> int:
    import getpass

    from tickerplant.ops.passwords import hash_password

    password = getpass.getpass(f"password for {args.user}: ") if sys.stdin.isatty() else (
        sys.stdin.readline().rstrip("\n")
    )
    if not 0 < len(password) <= 10:
        raise ConfigError("password", f"{len(password)} characters", "SoupBinTCP takes 1 to 10")
    print(f'{args.user} = "{hash_password(password)}"  # under [users] in the plant config')
    return 0
