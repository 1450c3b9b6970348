"""The ``tickerplant`` command: demo, exchange, feed and replay."""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from rich.console import Console

from tickerplant import endpoint
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.io.web import WebServer
from tickerplant.ops import logs
from tickerplant.ops.config import default
from tickerplant.ops.metrics import Snapshot

T = TypeVar("T")


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop where installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: asyncio.Event, command: str) -> Callable[[], None]:
    """SIGTERM or the first Ctrl-C sets ``stop``: the command winds down (its journals written,
    its children ended) and exits 0, as a service stopped by systemd or a container must. From
    then on either signal has its default action: a second Ctrl-C ends the process at once.
    Call from the loop, as the command's first step; returns what puts the handlers back.

    A plain signal handler rather than the loop's: the loop's runs only when the loop turns,
    and a first start compiling kernels (~20 s) holds the loop, so the second Ctrl-C, meant
    for exactly that wait, would be queued behind it too."""
    loop = asyncio.get_running_loop()
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    signalled: list[int] = []

    def announce(name: str) -> None:
        logging.getLogger(f"tickerplant.{command}").info(
            "stopping on %s (a second one ends at once)", name,
            extra=logs.fields(event="stopping", signal=name))  # fmt: skip
        stop.set()

    def handler(signum: int, frame: FrameType | None) -> None:
        signalled.append(signum)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        loop.call_soon_threadsafe(announce, signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)

    def restore() -> None:
        # After a stop the defaults stay: the process is ending, and a second signal must end
        # it even in its last steps.
        if not signalled:
            for sig, old in before.items():
                signal.signal(sig, old)

    return restore


def _endpoint(field: str) -> Callable[[str], Endpoint]:
    def parse(text: str) -> Endpoint:
        try:
            return Endpoint.parse(text, field)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def _web(listen: Endpoint | None, snapshot: Snapshot) -> WebServer | None:
    """The metrics listener on ``listen``, if any, its URL told on stderr."""
    if listen is None:
        return None
    web = WebServer(listen, snapshot)
    print(f"metrics: {web.url}metrics", file=sys.stderr)
    return web


def _demo(args: argparse.Namespace) -> int:
    from tickerplant.demo import DemoConfig, print_summary, run_demo

    cfg = DemoConfig(
        seconds=args.seconds, rate=args.rate, drop_a=args.drop_a, drop_b=args.drop_b,
        seed=args.seed, symbols=args.symbols, metrics=None if args.no_metrics else args.metrics,
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


def _exchange(args: argparse.Namespace) -> int:
    from tickerplant.exchange.simulator import (
        ExchangeConfig,
        ExchangeSummary,
        FileSource,
        SyntheticSource,
        run_exchange,
    )
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


def _feed(args: argparse.Namespace) -> int:
    from tickerplant.feed.handler import FeedHandler
    from tickerplant.ops.dashboard import LiveTable
    from tickerplant.session.feed import FeedConfig
    from tickerplant.session.recovery import RecoveryConfig

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
            loop = asyncio.get_running_loop()
            end = loop.time() + args.seconds if args.seconds else float("inf")
            with LiveTable(None if args.json else Console(), loop.time()) as table:
                while not stop.is_set() and loop.time() < end and not (
                    args.until_end and feed.session_ended.is_set()
                ):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), min(0.5, end - loop.time()))
                    figures = feed.figures()
                    snapshot.set(figures)
                    table.show(figures, loop.time())
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


def _run(args: argparse.Namespace) -> int:
    from tickerplant.ops.config import example, load_file
    from tickerplant.ops.dashboard import LiveTable
    from tickerplant.plant import Plant, PlantConfig

    if args.example_config:
        print(
            "# tickerplant run CONFIG.toml: every setting at its default. Leave out what you do\n"
            "# not change; an address is \"host:port\".\n" + example(PlantConfig, (Endpoint,))
        )
        return 0
    config = (
        load_file(PlantConfig, args.config, {Endpoint: Endpoint.parse})
        if args.config is not None
        else PlantConfig()
    )

    listen = args.metrics or config.metrics.listen

    logging.getLogger("tickerplant.run").info(
        "config %s loaded", args.config or "(defaults)",
        extra=logs.fields(event="config_loaded", path=str(args.config or ""),
                          users=len(config.users), metrics=str(listen or "")))  # fmt: skip

    async def main() -> int:
        stop = asyncio.Event()
        restore = stop_on_signals(stop, "run")
        plant = Plant(config)
        snapshot = Snapshot()
        web = None
        started = False
        try:
            web = _web(listen, snapshot)
            await plant.start()  # a port in use: a ConfigError naming the setting, none left open
            started = True
            console = None if args.json else Console()
            itch = config.itch.listen
            who = (
                f"users: {', '.join(config.users)}" if config.users
                else "no users configured: any login is accepted, from this host only"
            )  # fmt: skip
            events = config.events.listen
            print(
                f"tickerplant run: serving the itch stream on {itch}, events on {events},"
                f" snapshots on {config.glimpse.listen} ({who}); watch live BBOs with:"
                f" tickerplant subscribe {events} --events",
                file=sys.stderr,
            )
            loop = asyncio.get_running_loop()
            end = loop.time() + args.seconds if args.seconds else float("inf")
            with LiveTable(console, loop.time()) as table:
                while not stop.is_set() and loop.time() < end:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), min(0.5, end - loop.time()))
                    figures = plant.figures()
                    snapshot.set(figures)
                    table.show(figures, loop.time(), "tickerplant run")
        finally:
            if started:
                await plant.close()
            if web is not None:
                web.close()
            restore()
        if args.json:
            print(json.dumps(plant.figures()))
        return 0

    return run_loop(main())


def _subscribe(args: argparse.Namespace) -> int:
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
    from tickerplant.session.events import Batch
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
                quotes.take(record.records)
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


def _passwd(args: argparse.Namespace) -> int:
    import getpass

    from tickerplant.ops.passwords import hash_password

    password = getpass.getpass(f"password for {args.user}: ") if sys.stdin.isatty() else (
        sys.stdin.readline().rstrip("\n")
    )
    if not 0 < len(password) <= 10:
        raise ConfigError("password", f"{len(password)} characters", "SoupBinTCP takes 1 to 10")
    print(f'{args.user} = "{hash_password(password)}"  # under [users] in the plant config')
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tickerplant.demo import DemoConfig
    from tickerplant.exchange.simulator import ExchangeConfig, SyntheticSource
    from tickerplant.io.multicast import LineConfig
    from tickerplant.session.feed import FeedConfig
    from tickerplant.session.recovery import RecoveryConfig

    parser = argparse.ArgumentParser(prog="tickerplant", description=__doc__)
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines on stderr: text, or one JSON object per line")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default="info", help="the least severe log line written")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="exchange simulator + feed handler on loopback, live table")
    demo.add_argument(
        "--seconds", type=float, default=default(DemoConfig, "seconds"), help="how long to publish"
    )
    demo.add_argument(
        "--rate", type=int, default=default(DemoConfig, "rate"), help="messages per second"
    )
    demo.add_argument(
        "--drop-a",
        type=float,
        default=default(DemoConfig, "drop_a"),
        help="loss injected on line A",
    )
    demo.add_argument(
        "--drop-b",
        type=float,
        default=default(DemoConfig, "drop_b"),
        help="loss injected on line B",
    )
    demo.add_argument("--seed", type=int, default=default(DemoConfig, "seed"))
    demo.add_argument("--symbols", type=int, default=default(DemoConfig, "symbols"))
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    demo.add_argument("--metrics", type=_endpoint("--metrics"), default=endpoint.METRICS,
                      metavar="HOST:PORT", help=f"Prometheus metrics (default {endpoint.METRICS})")
    demo.add_argument("--no-metrics", action="store_true", help="serve no metrics")
    demo.set_defaults(func=_demo)

    ex = sub.add_parser("exchange", help="the exchange simulator: publish a session on A and B")
    ex.add_argument(
        "--session",
        default=default(ExchangeConfig, "session"),
        help="session name (10 ASCII characters)",
    )
    ex.add_argument("--itch", type=Path, default=None, help="publish this ITCH 5.0 file")
    ex.add_argument(
        "--messages",
        type=int,
        default=default(SyntheticSource, "messages"),
        help="synthetic: messages",
    )
    ex.add_argument(
        "--seed", type=int, default=default(SyntheticSource, "seed"), help="synthetic: seed"
    )
    ex.add_argument(
        "--symbols",
        type=int,
        default=default(SyntheticSource, "symbols"),
        help="synthetic: symbols",
    )
    ex.add_argument("--rate", type=float, default=0.0, help="messages/s (default: as fast as can)")
    ex.add_argument("--speed", type=float, default=0.0, help="ITCH timestamps x this factor")
    ex.add_argument("--line-a", type=_endpoint("--line-a"), default=endpoint.LINE_A)
    ex.add_argument("--line-b", type=_endpoint("--line-b"), default=endpoint.LINE_B)
    ex.add_argument(
        "--interface",
        default=default(LineConfig, "interface"),
        help="address of the sending interface",
    )
    ex.add_argument("--ttl", type=int, default=default(LineConfig, "ttl"))
    ex.add_argument("--no-loopback", action="store_true", help="do not loop multicast back")
    ex.add_argument("--drop-a", type=float, default=0.0, help="loss injected on line A")
    ex.add_argument("--drop-b", type=float, default=0.0, help="loss injected on line B")
    ex.add_argument("--drop-seed", type=int, default=default(ExchangeConfig, "drop_seed"))
    ex.add_argument("--rerequest", type=_endpoint("--rerequest"), default=endpoint.REREQUEST)
    ex.add_argument("--no-rerequest", action="store_true")
    ex.add_argument("--replay", type=_endpoint("--replay"), default=endpoint.REPLAY)
    ex.add_argument("--no-replay", action="store_true")
    ex.add_argument(
        "--eos-seconds",
        type=float,
        default=default(ExchangeConfig, "end_of_session_seconds"),
        help="end of session lasts this",
    )
    ex.add_argument(
        "--sent-log",
        metavar="PATH",
        default=None,
        help="write each line's data packets, with the monotonic time of their send call, to "
        "PATH (.npy) at the end",
    )
    ex.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    ex.add_argument("--metrics", type=_endpoint("--metrics"), default=None, metavar="HOST:PORT",
                    help="serve Prometheus metrics here")
    ex.set_defaults(func=_exchange)

    from tickerplant.replay import build_parser as replay_arguments
    from tickerplant.replay import run_replay

    replay = sub.add_parser("replay", help="build books from an ITCH file; BBO, trades to Parquet")
    replay_arguments(replay)
    replay.set_defaults(func=run_replay)

    run = sub.add_parser("run", help="the whole plant: feed, books and the itch stream")
    run.add_argument("config", type=Path, nargs="?", default=None, help="CONFIG.toml")
    run.add_argument("--example-config", action="store_true", help="print every setting")
    run.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    run.add_argument("--json", action="store_true", help="print final figures as JSON")
    run.add_argument("--metrics", type=_endpoint("--metrics"), default=None, metavar="HOST:PORT",
                     help="serve Prometheus metrics here (overrides [metrics] listen)")
    run.set_defaults(func=_run)

    passwd = sub.add_parser("passwd", help="a user's password as the config stores it")
    passwd.add_argument("user", help="SoupBinTCP user name (up to 6 characters)")
    passwd.set_defaults(func=_passwd)

    subscribe = sub.add_parser("subscribe", help="read a plant's stream (SoupBinTCP)")
    subscribe.add_argument("endpoint", type=_endpoint("HOST:PORT"), metavar="HOST:PORT")
    subscribe.add_argument("--from", dest="first", type=int, default=1,
                           help="first sequence number (0: from now)")
    subscribe.add_argument("--session", default="", help="session (default: the current one)")
    subscribe.add_argument("--username", default="")
    subscribe.add_argument("--password", default="")
    subscribe.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    subscribe.add_argument("--json", action="store_true",
                           help="one JSON line per message (events: per record)")
    subscribe.add_argument("--events", action="store_true",
                           help="the server is the events stream (tickerplant run: port 31012):"
                           " a live table of BBOs and last trades")
    subscribe.add_argument("--symbols", metavar="SYM,SYM", default=None,
                           help="narrow the events stream to these symbols (implies --events)")
    subscribe.add_argument("--parquet", metavar="FILE", default=None,
                           help="write the events stream's records to FILE (Parquet)")
    subscribe.set_defaults(func=_subscribe)

    feed = sub.add_parser("feed", help="join line A and line B, repair gaps, show figures")
    feed.add_argument("--line-a", type=_endpoint("--line-a"), default=endpoint.LINE_A)
    feed.add_argument("--line-b", type=_endpoint("--line-b"), default=endpoint.LINE_B)
    feed.add_argument("--no-line-b", action="store_true", help="one line only")
    feed.add_argument(
        "--interface",
        default=default(FeedConfig, "interface"),
        help="address of the joining interface",
    )
    feed.add_argument("--session", default=None, help="pin a session (default: follow the feed)")
    feed.add_argument("--rerequest", type=_endpoint("--rerequest"), default=endpoint.REREQUEST)
    feed.add_argument("--no-rerequest", action="store_true")
    feed.add_argument("--replay", type=_endpoint("--replay"), default=endpoint.REPLAY)
    feed.add_argument("--no-replay", action="store_true")
    feed.add_argument(
        "--rcvbuf", type=int, default=default(FeedConfig, "rcvbuf"), help="SO_RCVBUF to ask for"
    )
    feed.add_argument(
        "--line-wait",
        type=float,
        default=default(RecoveryConfig, "line_wait"),
        help="s to wait for the other line",
    )
    feed.add_argument(
        "--give-up-after",
        type=float,
        default=default(RecoveryConfig, "give_up_after"),
        help="s before a gap is lost",
    )
    feed.add_argument("--capture", type=Path, default=None, help="write the stream to an ITCH file")
    feed.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    feed.add_argument("--until-end", action="store_true", help="stop at the end of session")
    feed.add_argument("--json", action="store_true", help="print final figures as JSON")
    feed.add_argument("--metrics", type=_endpoint("--metrics"), default=None, metavar="HOST:PORT",
                      help="serve Prometheus metrics here")
    feed.set_defaults(func=_feed)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command. With ``argv`` None this process is it (the ``tickerplant`` script,
    ``python -m tickerplant``), and it ends here: see :func:`_end`."""
    code = _command(argv)
    if argv is None:
        _end(code)
    return code


def _end(code: int) -> None:
    """Exit now, without the interpreter's teardown: freeing every object and module one by one
    took 0.3-0.7 s after a plant, a feed or a demo had closed everything (the slowest phase of a
    stop once the others were fixed), time a service stopped by SIGTERM does not have, for
    memory the kernel frees at once. What exit does that matters is done first: the atexit
    handlers (logging's flush among them), then the standard streams' flush. Not while a
    thread that is no daemon still runs: exit would wait for it, and so must we."""
    main_thread = threading.main_thread()
    if any(not t.daemon for t in threading.enumerate() if t is not main_thread):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, a stream closed
            stream.flush()
    os._exit(code)


def _command(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_format, args.log_level)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, not at the interpreter's exit: a reader gone is seen below
        return code
    except ConfigError as err:
        # The user's mistake: say which setting and how to fix it. Anything else is our bug,
        # and its traceback is what the report needs.
        print(f"tickerplant {args.command}: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        gone = _readers_gone()
        if not gone:
            raise  # a socket's, not our output's: a bug
        # Whoever read our output closed it early (`| head`): end quietly, as a Unix tool
        # killed by SIGPIPE does (the shell sees the same 141). Python would flush the dead
        # stream again at exit and complain: it writes to /dev/null instead.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in gone:
            os.dup2(devnull, fd)
        os.close(devnull)
        return 128 + signal.SIGPIPE


def _readers_gone() -> list[int]:
    """Which of stdout and stderr lead to a pipe whose reader has closed it."""
    poll = select.poll()
    for fd in (1, 2):
        poll.register(fd, select.POLLOUT)
    return [fd for fd, events in poll.poll(0) if events & select.POLLERR]
