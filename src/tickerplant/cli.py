"""The ``tickerplant`` command line: its parser, and how the process ends (exit codes, a reader
that went away, the interpreter's teardown skipped); what each command does is ``commands.py``."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tickerplant import commands, endpoint
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.ops import logs
from tickerplant.ops.config import default


def _endpoint(field: str) -> Callable[[str], Endpoint]:
    def parse(text: str) -> Endpoint:
        try:
            return Endpoint.parse(text, field)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    from tickerplant.demo import DemoConfig
    from tickerplant.exchange.simulator import ExchangeConfig, SyntheticSource
    from tickerplant.feed.handler import FeedConfig
    from tickerplant.io.multicast import LineConfig
    from tickerplant.receive.recovery import RecoveryConfig

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
    demo.add_argument("--channels", type=int, default=default(DemoConfig, "channels"),
                      help="the exchange's stocks over this many channels, each its own "
                           "session on its own groups; the plant takes them all, the demo's "
                           "clients read channel 1")  # fmt: skip
    demo.add_argument("--edges", type=int, default=default(DemoConfig, "edges"),
                      help="edges (tickerplant edge, a process each) joining the plant's tier-2, "
                           "each with an events client checked against the plant's journal")
    demo.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    demo.add_argument("--metrics", type=_endpoint("--metrics"), default=endpoint.METRICS,
                      metavar="HOST:PORT", help=f"Prometheus metrics (default {endpoint.METRICS})")
    demo.add_argument("--no-metrics", action="store_true", help="serve no metrics")
    demo.set_defaults(func=commands.demo)

    ex = sub.add_parser("exchange", help="the exchange simulator: publish a session on A and B")
    ex.add_argument(
        "--session",
        default=default(ExchangeConfig, "session"),
        help="session name (10 ASCII characters)",
    )
    ex.add_argument("--itch", type=Path, default=None, help="publish this ITCH 5.0 file")
    ex.add_argument("--channels", type=int, default=default(ExchangeConfig, "channels"),
                    help="partition the stocks over this many channels, each its own session "
                         "on its own groups (channel k: the base groups' third octet + k - 1); "
                         "one re-request and one replay port for all, by session")  # fmt: skip
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
    ex.add_argument("--journal-dir", metavar="DIR", default=None,
                    help="write the session's journal here (default: a temporary directory, "
                    "deleted at the end)")
    ex.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    ex.add_argument("--metrics", type=_endpoint("--metrics"), default=None, metavar="HOST:PORT",
                    help="serve Prometheus metrics here")
    ex.set_defaults(func=commands.exchange)

    from tickerplant.replay import build_parser as replay_arguments
    from tickerplant.replay import run_replay

    rec = sub.add_parser("recovery", help="the exchange's recovery host: re-requests and replay "
                         "from the journal file its publisher writes (exchange --journal-dir)")
    rec.add_argument("--journal-dir", type=Path, required=True, metavar="DIR")
    rec.add_argument("--rerequest", type=_endpoint("--rerequest"), default=endpoint.REREQUEST)
    rec.add_argument("--no-rerequest", action="store_true")
    rec.add_argument("--replay", type=_endpoint("--replay"), default=endpoint.REPLAY)
    rec.add_argument("--no-replay", action="store_true")
    rec.set_defaults(func=commands.recovery)

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
    run.set_defaults(func=commands.run)

    edge = sub.add_parser("edge", help="the plant's events streams served from another host, "
                          "joined by the plant's tier-2")  # fmt: skip
    edge.add_argument("config", type=Path, nargs="?", default=None, help="CONFIG.toml")
    edge.add_argument("--example-config", action="store_true", help="print every setting")
    edge.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    edge.add_argument("--json", action="store_true", help="print final figures as JSON")
    edge.set_defaults(func=commands.edge)

    passwd = sub.add_parser("passwd", help="a user's password as the config stores it")
    passwd.add_argument("user", help="SoupBinTCP user name (up to 6 characters)")
    passwd.set_defaults(func=commands.passwd)

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
    subscribe.set_defaults(func=commands.subscribe)

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
    feed.set_defaults(func=commands.feed)
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
