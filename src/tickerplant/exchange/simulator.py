"""The exchange simulator: a message source, a pacer and a publisher on lines A and B, with the
re-request server (MoldUDP64 over UDP) and the replay server (SoupBinTCP) answering from the
session's journal.

Everything runs on one event loop. The publisher works in slices of at most ``slice_packets``
packets (about a millisecond or two) and yields to the loop between them, so requests for repairs
and replays are served while the lines run at full speed, and through the end of session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tickerplant import endpoint
from tickerplant.capture.journal import JournalFile, mark_ended
from tickerplant.capture.lines import read_messages
from tickerplant.distribute.fanout import FanOut
from tickerplant.distribute.journal import Journal
from tickerplant.distribute.rerequest import RerequestLimits
from tickerplant.endpoint import Endpoint, ipv4
from tickerplant.errors import ConfigError
from tickerplant.exchange.pacing import AsFastAsPossible, FixedRate, ItchClock, Pacer
from tickerplant.exchange.publisher import SLICE_PACKETS, Publisher, SourceError
from tickerplant.exchange.summary import ExchangeSummary, summarize
from tickerplant.exchange.synthetic import SyntheticMarket
from tickerplant.io.listener import Router
from tickerplant.io.loop import Timer, clock
from tickerplant.io.multicast import DEFAULT_SNDBUF, Line, LineConfig, SentLog, write_sent_log
from tickerplant.io.rerequest import RerequestServer
from tickerplant.io.soupbin import SoupServer
from tickerplant.wire.channels import lines_of, session_of
from tickerplant.wire.moldudp64 import END_OF_SESSION_SECONDS, HEARTBEAT_INTERVAL, session_bytes

PACING_MODES = ("fast", "rate", "itch")
PROGRESS_INTERVAL = 0.5  # seconds between on_progress calls
# A stopped exchange's end of session lasts at most this: two rounds of end-of-session packets
# (one lost is not the end told to no one), repairs answered in between. A service stopped must
# be gone within 2 s, and a demo stopped waits for the exchange's summary within its own 2 s;
# the configured end (END_OF_SESSION_SECONDS, 3 s) is for a session that ran its course.
STOPPED_END_OF_SESSION = 0.3
_LINE_FIX = "give the address of a local interface that can send multicast"


@dataclass(frozen=True, slots=True)
class SyntheticSource:
    """A seeded synthetic ITCH day of ``messages`` messages over ``symbols`` stocks."""

    seed: int = 1
    symbols: int = 500
    messages: int = 1_000_000


@dataclass(frozen=True, slots=True)
class FileSource:
    """A historical ITCH 5.0 file (u16 length + message, repeated; plain or gzip), or a packet
    capture of a day's MoldUDP64 lines (published as their arbitrated stream)."""

    path: str


@dataclass(frozen=True, slots=True)
class ExchangeConfig:
    session: str = "TP00000001"
    # The day partitioned by stock over this many channels, each its own session and lines
    # (wire/channels.py: names, groups); one re-request server for them all (a request names
    # its session) and one replay port (a login names its session).
    channels: int = 1
    source: SyntheticSource | FileSource = field(default_factory=SyntheticSource)
    pacing: str = "fast"  # "fast", "rate" (messages/s) or "itch" (the messages' own timestamps)
    rate: float = 100_000.0  # messages per second, for pacing "rate"
    speed: float = 1.0  # times real time, for pacing "itch"
    line_a: LineConfig = field(default_factory=lambda: LineConfig(*endpoint.LINE_A.pair))
    line_b: LineConfig = field(default_factory=lambda: LineConfig(*endpoint.LINE_B.pair))
    rerequest: Endpoint | None = endpoint.REREQUEST
    replay: Endpoint | None = endpoint.REPLAY
    rerequest_limits: RerequestLimits = field(default_factory=RerequestLimits)
    end_of_session_seconds: float = END_OF_SESSION_SECONDS
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    drop_seed: int = 0  # seeds the loss injected on the lines
    chunk_messages: int = 4096  # messages the synthetic source makes per call (~3 ms)
    slice_packets: int = SLICE_PACKETS
    sndbuf: int = DEFAULT_SNDBUF
    # A file (.npy) that gets every data packet sent on each line with the monotonic clock just
    # before its send call, written when the session is over (issue 19's sent-to-read latency).
    sent_log: str | None = None
    # The session's journal (what re-requests and replays are answered from) is written here
    # as SESSION.journal with its checksums, and only its newest memory_bytes kept in memory.
    # None: a temporary directory, deleted when the session ends.
    journal_dir: str | None = None
    memory_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        """Raise :class:`ConfigError` for the first bad field (each line checked itself)."""
        try:
            session_bytes(self.session)
        except (ValueError, UnicodeEncodeError):
            raise ConfigError(
                "session", f"{self.session!r} is not ASCII of at most 10 characters", "e.g. TP001"
            ) from None
        if not self.session.strip():
            raise ConfigError("session", "is blank", "give a name, e.g. TP001")
        # Every channel's lines told apart (and the count checked).
        lines_of(Endpoint(self.line_a.group, self.line_a.port),
                 Endpoint(self.line_b.group, self.line_b.port), self.channels)  # fmt: skip
        self._validate_source()
        if self.pacing not in PACING_MODES:
            raise ConfigError("pacing", f"unknown mode {self.pacing!r}", f"use {PACING_MODES}")
        if self.pacing == "rate" and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ConfigError("rate", f"{self.rate} messages/s", "give a rate above 0")
        if self.pacing == "itch" and not (self.speed > 0 and math.isfinite(self.speed)):
            raise ConfigError("speed", f"{self.speed}", "give a factor of real time above 0")
        if (self.line_a.group, self.line_a.port) == (self.line_b.group, self.line_b.port):
            raise ConfigError(
                "line_b", "is the same group and port as line_a", "give each line its own"
            )
        for name, where in (("rerequest", self.rerequest), ("replay", self.replay)):
            if where is not None:
                ipv4(where.host, name)
                if not 0 <= where.port < 65536:
                    raise ConfigError(name, f"port {where.port}", "use 0 (any) to 65535")
        if not (self.end_of_session_seconds >= 0 and math.isfinite(self.end_of_session_seconds)):
            raise ConfigError(
                "end_of_session_seconds", f"{self.end_of_session_seconds}", "give 0 or more"
            )
        if not (self.heartbeat_interval > 0 and math.isfinite(self.heartbeat_interval)):
            raise ConfigError(
                "heartbeat_interval", f"{self.heartbeat_interval}", "give seconds above 0"
            )
        for name, value in (
            ("chunk_messages", self.chunk_messages),
            ("slice_packets", self.slice_packets),
            ("sndbuf", self.sndbuf),
        ):
            if value < 1:
                raise ConfigError(name, f"{value}", "give 1 or more")
        if self.sent_log is not None and not self.sent_log.strip():
            raise ConfigError("sent_log", "is blank", "give a file to write, or none")
        if self.journal_dir is not None and not self.journal_dir.strip():
            raise ConfigError("journal_dir", "is blank", "give a directory, or none")
        if self.memory_bytes < 0:
            raise ConfigError("memory_bytes", f"{self.memory_bytes}", "give bytes, 0 or more")

    def _validate_source(self) -> None:
        source = self.source
        if isinstance(source, FileSource):
            if not os.path.isfile(source.path):
                raise ConfigError(
                    "source.path", f"{source.path!r} is not a file",
                    "give an ITCH 5.0 file or a capture of MoldUDP64 lines"
                )
            return
        if not 1 <= source.symbols <= 0xFFFF:
            raise ConfigError("source.symbols", f"{source.symbols}", "use 1..65535")
        least = SyntheticMarket(source.seed, source.symbols).minimum_messages
        if source.messages < least:
            raise ConfigError(
                "source.messages",
                f"{source.messages} cannot hold a day over {source.symbols} symbols",
                f"give at least {least}",
            )


_FILE_CHUNK_BYTES = 256 << 10


def _source(config: ExchangeConfig) -> Iterator[bytes]:
    source = config.source
    if isinstance(source, FileSource):
        # Read (and checked) inside a publisher tick, on the loop that also serves re-requests
        # and replay: a small chunk keeps that pause near the tick's slice, not 4 MiB of I/O
        # (the first, which may list a whole capture, is taken on a thread: see _ahead).
        return read_messages(source.path, _FILE_CHUNK_BYTES)
    market = SyntheticMarket(source.seed, source.symbols)
    return market.chunks(source.messages, config.chunk_messages)


async def _ahead(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks`` with its first taken on a thread: opening a capture lists its streams in a pass
    over the whole file (about a second per million packets), which would stall the loop that
    serves re-requests and replay in the first tick. A failure is raised where the publisher
    would have met it."""
    first: bytes | Exception | None
    try:
        first = await asyncio.to_thread(next, chunks, None)
    except (ValueError, OSError) as exc:
        first = exc
    return _resumed(first, chunks)


def _resumed(first: bytes | Exception | None, rest: Iterator[bytes]) -> Iterator[bytes]:
    if isinstance(first, Exception):
        raise first
    if first is not None:
        yield first
        yield from rest


def _pacer(config: ExchangeConfig) -> Pacer:
    if config.pacing == "rate":
        return FixedRate(config.rate)
    if config.pacing == "itch":
        return ItchClock(config.speed)
    return AsFastAsPossible()


async def run_exchange(
    config: ExchangeConfig,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[ExchangeSummary], None] | None = None,
) -> ExchangeSummary:
    """Publish one session; setting ``stop`` ends it early (the end of session is still sent,
    for at most STOPPED_END_OF_SESSION)."""
    started = clock()
    count = config.channels
    journals = [Journal(session_bytes(session_of(config.session, n, count)))
                for n in range(1, count + 1)]  # fmt: skip
    bases = (Endpoint(config.line_a.group, config.line_a.port),
             Endpoint(config.line_b.group, config.line_b.port))  # fmt: skip
    lines: list[list[Line]] = []
    rerequest: RerequestServer | None = None
    replays: list[SoupServer] = []
    router: Router | None = None
    sent_log: BinaryIO | None = None
    files = _journal_files(config)
    for file, journal in zip(files, journals, strict=True):
        file.open(journal)
    try:
        if config.sent_log is not None:
            sent_log = _open_sent_log(config.sent_log)
        for pair in lines_of(*bases, count):
            lines.append([])
            for name, base, where in zip("AB", (config.line_a, config.line_b), pair, strict=True):
                try:
                    log = SentLog(len(lines)) if sent_log is not None else None
                    line_config = dataclasses.replace(base, group=where.host)
                    lines[-1].append(Line(name, line_config, config.sndbuf, log))
                except OSError as exc:
                    raise ConfigError(
                        f"line_{name.lower()}", f"cannot open its socket ({exc})", _LINE_FIX
                    ) from exc
        if config.rerequest is not None:
            rerequest = RerequestServer(
                journals[0], config.rerequest.host, config.rerequest.port, config.rerequest_limits
            )
            for journal in journals[1:]:  # one server for every channel: requests name theirs
                rerequest.policy.add(journal)
            await _listen("rerequest", config.rerequest, rerequest.start())
        if config.replay is not None:
            where = config.replay
            replays = [SoupServer(FanOut(journal), where.host, where.port) for journal in journals]
            if count == 1:
                await _listen("replay", where, replays[0].start())
            else:  # one port: each login is served by the channel its session names
                router = Router(replays, where.host, where.port)
                for replay in replays:
                    await replay.start(listen=False)
                await _listen("replay", where, router.start())
                for replay in replays:
                    replay.port = router.port
        publisher = Publisher(
            journals[0],
            await _ahead(_source(config)),
            lines[0],
            _pacer(config),
            drop_seed=config.drop_seed,
            heartbeat_interval=config.heartbeat_interval,
            end_of_session_seconds=config.end_of_session_seconds,
            slice_packets=config.slice_packets,
            more_channels=list(zip(journals[1:], lines[1:], strict=True)),
        )
        servers = (rerequest, replays)

        def snapshot(error: str | None) -> ExchangeSummary:
            return summarize(config.session, publisher, servers, clock() - started, error)

        error = await _drive(publisher, replays, stop, on_progress, snapshot, files)
        for file, journal in zip(files, journals, strict=True):
            file.close()
            if config.journal_dir is not None and file.directory is not None:
                # Whole: its recovery host may end the session (not after a run that failed).
                name = f"{journal.session.decode('ascii').strip()}.journal"
                mark_ended(file.directory / name, journal.size)
        return snapshot(error)
    finally:
        for file in files:
            file.close()
        if config.journal_dir is None:
            shutil.rmtree(files[0].directory or "", ignore_errors=True)
        if router is not None:
            router.close()
        for replay in replays:
            await replay.close()
        if rerequest is not None:
            await rerequest.close()
        for line in (line for pair in lines for line in pair):
            line.close()
        if sent_log is not None:
            with sent_log:
                write_sent_log(sent_log, [line for pair in lines for line in pair])


def _journal_files(config: ExchangeConfig) -> list[JournalFile]:
    """Each channel's journal file, in one directory: a new one (an earlier run's is not
    reopened: the session starts again from 1); ``memory_bytes`` shared out between them."""
    if config.journal_dir is None:
        directory = Path(tempfile.mkdtemp(prefix="tickerplant-exchange-"))
    else:
        directory = Path(config.journal_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("journal_dir", f"cannot make {str(directory)!r} ({exc.strerror})",
                              "give a writable directory") from exc  # fmt: skip
    memory = config.memory_bytes // config.channels
    return [JournalFile(directory, "journal", memory, reopen=False)
            for _ in range(config.channels)]  # fmt: skip


def _open_sent_log(path: str) -> BinaryIO:
    """Opened before anything is published: a path that cannot be written fails at the start,
    not after the session."""
    try:
        return open(path, "wb")  # closed in run_exchange's finally, once written
    except OSError as exc:
        raise ConfigError(
            "sent_log",
            f"cannot write {path!r} ({exc.strerror})",
            "give a file in a writable directory",
        ) from exc


async def _listen(name: str, where: Endpoint, start: Coroutine[Any, Any, int]) -> None:
    try:
        await start
    except OSError as exc:
        raise ConfigError(
            name, f"cannot listen on {where} ({exc})", "choose a free port on a local address"
        ) from exc


async def _drive(
    publisher: Publisher,
    replays: list[SoupServer],
    stop: asyncio.Event | None,
    on_progress: Callable[[ExchangeSummary], None] | None,
    snapshot: Callable[[str | None], ExchangeSummary],
    files: list[JournalFile],
) -> str | None:
    """Run the publisher on its timer until its session has ended; returns why the source
    failed, if it did. ``stop`` fires the timer at once (the publisher starts its end of
    session); progress is reported at least every PROGRESS_INTERVAL."""
    done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    error: str | None = None
    next_progress = clock() + PROGRESS_INTERVAL
    ended = False

    def step() -> None:
        nonlocal error, next_progress, ended
        now = clock()
        if stop is not None and stop.is_set():
            publisher.finish(now, STOPPED_END_OF_SESSION)
        try:
            publisher.handle_timer(now)
        except SourceError as exc:  # a damaged file: end the session on what was published
            error = str(exc)
            publisher.finish(now)
        for file, channel in zip(files, publisher.channels, strict=True):
            file.follow(channel.journal)
        deadline = publisher.get_timer()
        for replay in replays:
            replay.publish()
            if publisher.ending and not ended:
                replay.end_session()
        ended = ended or publisher.ending
        if on_progress is not None and now >= next_progress:
            next_progress = now + PROGRESS_INTERVAL
            on_progress(snapshot(error))
        if deadline is None:
            done.set_result(error)
        else:
            timer.arm(min(deadline, next_progress))

    def guarded() -> None:
        # A callback's exception would go to the loop's handler, not to whoever awaits the run.
        if done.done():
            return
        try:
            step()
        except BaseException as exc:
            done.set_exception(exc)

    def stopped(_: object) -> None:
        timer.cancel()
        guarded()

    timer = Timer(guarded)
    waiter = asyncio.ensure_future(stop.wait()) if stop is not None else None
    if waiter is not None:
        waiter.add_done_callback(stopped)
    guarded()
    try:
        return await done
    finally:
        timer.cancel()
        if waiter is not None:
            waiter.remove_done_callback(stopped)
            waiter.cancel()
