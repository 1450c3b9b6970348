"""``tickerplant run``: a whole plant in one process.

The feed handler (lines, re-request, replay) hands its repaired stream to the live books and to
the ``itch`` stream, a SoupBinTCP server of its journal: a client logs in at any sequence number,
is replayed from there at full speed and then stays live, and a range the plant lost keeps its
numbers as marks (:mod:`tickerplant.session.stream`). What the books raise (BBO changes, trades,
status changes) and the ranges lost are the ``events`` stream's records
(:mod:`tickerplant.wire.events`), journaled and served the same way; its clients may narrow it to
symbols and, as slow consumers, be conflated or skipped. ``glimpse`` serves snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from tickerplant.book import normalize
from tickerplant.book.snapshot import Directory, picture
from tickerplant.endpoint import EVENTS, GLIMPSE, ITCH, LINE_A, LINE_B, REPLAY, REREQUEST, Endpoint
from tickerplant.errors import ConfigError
from tickerplant.feed.books import LiveBooks
from tickerplant.feed.handler import FeedHandler
from tickerplant.io.soupbin import SoupServer
from tickerplant.io.web import MetricsConfig
from tickerplant.ops import passwords
from tickerplant.ops.config import check
from tickerplant.session.events import Batch, Event, GapLost, SessionEnded, SessionStarted
from tickerplant.session.fanout import FanOut, FanOutLimits, Policy
from tickerplant.session.feed import FeedConfig
from tickerplant.session.journal import Journal
from tickerplant.session.stream import EventStream, ItchStream
from tickerplant.wire.moldudp64 import session_bytes

log = logging.getLogger(__name__)

MEMORY_BYTES = 256 << 20  # of each stream's journal kept in memory (with a journal file)


def _feed() -> FeedConfig:
    return FeedConfig(LINE_A, LINE_B, rerequest=REREQUEST, replay=REPLAY)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """One SoupBinTCP stream the plant serves."""

    listen: Endpoint = ITCH
    limits: FanOutLimits = field(default_factory=FanOutLimits)
    # Each session's journal is also appended to a file here (SESSION.journal: the block
    # stream as served, marks included); a plant started again reopens the newest and serves
    # the same numbers. None: memory only, gone with the process.
    journal_dir: Path | None = None
    # With a journal_dir, the newest this many bytes stay in memory; older ones are read back
    # from the file (the page cache, as a rule) when a client catches up through them.
    memory_bytes: int = MEMORY_BYTES
    # What becomes of a slow consumer of this stream: "disconnect" (told why and closed; it
    # resumes from the journal), or on the events stream "conflate" (each symbol's latest
    # state while it lags) or "skip" (moved to live, told the range skipped). Per user name
    # (with no users configured, the name a client logs in with), else ``slow_consumer``.
    slow_consumer: str = Policy.DISCONNECT.value
    slow_consumers: dict[str, str] = field(default_factory=dict)
    # The policies this stream can carry out: itch's messages can be neither merged nor skipped.
    POLICIES: ClassVar[tuple[Policy, ...]] = (Policy.DISCONNECT,)

    def __post_init__(self) -> None:
        check("memory_bytes", self.memory_bytes >= 0, self.memory_bytes, "give bytes, 0 or more")
        self.policy(self.slow_consumer, "slow_consumer")
        for name, policy in self.slow_consumers.items():
            _check_user(name, f"slow_consumers.{name}")
            self.policy(policy, f"slow_consumers.{name}")

    def policy(self, name: str, where: str) -> Policy:
        """The policy ``name`` (the setting at ``where``), if this stream can carry it out."""
        fix = "give one of " + ", ".join(p.value for p in self.POLICIES)
        try:
            policy = Policy(name)
        except ValueError:
            raise ConfigError(where, f"{name!r} is not a policy", fix) from None
        if policy not in self.POLICIES:
            raise ConfigError(where, f"{name!r} cannot be done on this stream (its messages "
                              "can be neither merged nor skipped)", fix)  # fmt: skip
        return policy

    def policies(self) -> dict[bytes, Policy]:
        """Each user's policy, by the name a login carries."""
        return {user.encode("ascii"): self.policy(policy, f"slow_consumers.{user}")
                for user, policy in self.slow_consumers.items()}  # fmt: skip


@dataclass(frozen=True, slots=True)
class EventsConfig(StreamConfig):
    """The normalized events stream: BBO changes, trades, status changes, lost ranges. Its
    journal files are journal_dir/SESSION.events."""

    listen: Endpoint = EVENTS
    # Price levels per side in the image a client gets of each symbol it adds.
    depth: int = 5
    POLICIES: ClassVar[tuple[Policy, ...]] = (Policy.DISCONNECT, Policy.CONFLATE, Policy.SKIP)

    def __post_init__(self) -> None:
        StreamConfig.__post_init__(self)  # (zero-argument super() fails in a slots dataclass)
        if not 0 <= self.depth <= 255:
            raise ConfigError("depth", f"{self.depth}", "give 0 to 255 levels")


@dataclass(frozen=True, slots=True)
class GlimpseConfig:
    """The snapshot service: log in at 1, read the books as ITCH messages up to End of Snapshot
    ``G`` (the itch number to continue from), then End of Session."""

    listen: Endpoint = GLIMPSE
    limits: FanOutLimits = field(default_factory=FanOutLimits)
    # A snapshot is rebuilt this often while the stream moves (one vectorised pass over the
    # resting orders); a login gets the latest, and G says where it stands.
    refresh: float = 1.0

    def __post_init__(self) -> None:
        if not self.refresh > 0:
            raise ConfigError("refresh", f"{self.refresh}", "give seconds above 0")


@dataclass(frozen=True, slots=True)
class PlantConfig:
    feed: FeedConfig = field(default_factory=_feed)
    itch: StreamConfig = field(default_factory=StreamConfig)
    glimpse: GlimpseConfig = field(default_factory=GlimpseConfig)
    # User name -> scrypt hash of the password (`tickerplant passwd USER` makes one). With none,
    # any login is accepted, from this host's addresses only.
    users: dict[str, str] = field(default_factory=dict)
    events: EventsConfig = field(default_factory=EventsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # Keys a config may still carry from before, and where they went.
    MOVED: ClassVar[dict[str, str]] = {
        "slow_consumer": "[events] slow_consumer (policies are per stream; [itch] takes only "
                         "disconnect)",
        "slow_consumers": "[events] slow_consumers (policies are per stream; [itch] takes only "
                          "disconnect)",
    }  # fmt: skip

    def __post_init__(self) -> None:
        for name, stored in self.users.items():
            _check_user(name, f"users.{name}")
            passwords.check(stored, f"users.{name}")


def _check_user(name: str, where: str) -> None:
    if not (0 < len(name) <= 6 and name.isascii() and name.isprintable()):
        raise ConfigError(where, "is not a SoupBinTCP user name", "use 1 to 6 ASCII characters")


class _Catalog:
    """The books as the events stream's fan-out asks for them (``session.fanout.Catalog``)."""

    def __init__(self, plant: Plant) -> None:
        self._plant = plant
        self._by_symbol: dict[bytes, int] = {}
        self._symbols = -1  # the directory's size when _by_symbol was built

    def locate(self, symbol: bytes) -> int | None:
        engine = self._plant.books.engine
        if engine.symbol_count != self._symbols:  # a Stock Directory since: once per change
            self._by_symbol = {name.encode("latin-1").ljust(8): loc
                               for loc, name in engine.symbols().items()}  # fmt: skip
            self._symbols = engine.symbol_count
        return self._by_symbol.get(symbol)

    def images(self, locates: list[int]) -> Callable[[], bytes]:
        plant = self._plant
        return normalize.imaging(
            plant.books.engine, locates, plant.event_stream.next_sequence - 1,
            plant._books_at - 1, plant.config.events.depth,
        )  # fmt: skip


class Plant:
    def __init__(self, config: PlantConfig) -> None:
        self.config = config
        self.books = LiveBooks()
        self._itch_file = JournalFile(config.itch.journal_dir, "journal", config.itch.memory_bytes)
        self.stream = ItchStream(config.feed.first_sequence, self._itch_file.reopened)
        self._events_file = JournalFile(config.events.journal_dir, "events",
                                        config.events.memory_bytes)
        self.event_stream = EventStream(self._events_file.reopened)
        self.feed = FeedHandler(config.feed, self._on_batch, self._on_event)
        users = {name.encode("ascii"): stored for name, stored in config.users.items()} or None

        def server(journal: Journal, stream: StreamConfig, catalog: _Catalog | None = None
                   ) -> SoupServer:  # fmt: skip
            """A stream's server: the plant's users (none: this host's clients only), the
            stream's limits and its users' slow-consumer policies."""
            return SoupServer(FanOut(
                journal, limits=stream.limits, users=users, local_only=not users,
                catalog=catalog, policies=stream.policies(),
                policy=stream.policy(stream.slow_consumer, "slow_consumer"),
            ), stream.listen.host, stream.listen.port, verify=passwords.verify)  # fmt: skip

        self.itch = server(_serving(self._itch_file.reopened), config.itch)
        self.events = server(_serving(self._events_file.reopened), config.events, _Catalog(self))
        self.directory = Directory()
        glimpse = config.glimpse
        self.glimpse = SoupServer(FanOut(
            ItchStream.waiting(), limits=glimpse.limits, users=users, local_only=not users,
        ), glimpse.listen.host, glimpse.listen.port, verify=passwords.verify)  # fmt: skip
        self._snapshot_at = 0  # the itch number the current snapshot continues from
        # The number after the last message the books applied (or were told lost): what a
        # snapshot continues from. Behind the journal's end while a restarted plant catches up.
        self._books_at = config.feed.first_sequence
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen first, then join the lines: a client may log in before the first packet."""
        self.books.warm()
        servers = {"itch": self.itch, "events": self.events, "glimpse": self.glimpse}
        try:
            for name, server in servers.items():
                try:
                    await server.start()
                except OSError as err:  # in use, or not an address of this host
                    # (the errno's words: the loop's own repeat the address, reworded)
                    why = os.strerror(err.errno) if err.errno else str(err)
                    listen = Endpoint(server.host, server.port)
                    raise ConfigError(f"{name}.listen", f"cannot listen on {listen}: {why}",
                                      "give a free host:port") from None
            await self.feed.start()
        except BaseException:
            for server in servers.values():  # (one never started closes as a no-op)
                await server.close()
            raise
        self._refresher = asyncio.ensure_future(self._refresh())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.feed.close()
        await self.itch.close()
        await self.events.close()
        await self.glimpse.close()
        self._itch_file.close()
        self._events_file.close()

    def figures(self) -> dict[str, Any]:
        servers = {"itch": self.itch, "events": self.events}
        counters = {name: server.counters for name, server in servers.items()}
        return self.feed.figures() | self.books.figures() | {
            "stream_messages": {"itch": self.stream.counters.messages,
                                "events": self.event_stream.counters.records},
            "stream_lost_messages": {"itch": self.stream.counters.lost,
                                     "events": self.event_stream.counters.lost_notices},
            "clients": {name: server.clients for name, server in servers.items()},
            "queued_bytes": {name: server.queued for name, server in servers.items()},
            "journal_memory_bytes": {
                "itch": self.stream.journal.memory if self.stream.journal else 0,
                "events": self.event_stream.journal.memory if self.event_stream.journal else 0,
            },
            "journal_write_errors": {"itch": self._itch_file.errors,
                                     "events": self._events_file.errors},
            "logins": {name: c.logins for name, c in counters.items()},
            "rejected_logins": {name: c.rejected for name, c in counters.items()},
            "sent_messages": {name: c.messages_sent for name, c in counters.items()},
            "sent_bytes": {name: c.bytes_sent for name, c in counters.items()},
            "delivery_latency_seconds": {name: server.fanout.delivery.latency.figures()
                                         for name, server in servers.items()},
            "slow_consumers": {
                name: {"disconnect": c.slow_consumers, "conflate": c.conflating,
                       "skip": c.skips} for name, c in counters.items()
            },
            "conflated_updates": {"events": counters["events"].conflated_updates},
            "conflated_rounds": {"events": counters["events"].conflated_rounds},
            "staleness_seconds": {"events": self.events.fanout.delivery.staleness.figures()},
            "skipped_messages": {"events": counters["events"].skipped_messages},
            "subscriptions": {"events": counters["events"].subscriptions},
            "refused_connections": {name: c.refused for name, c in counters.items()},
            "glimpse_logins": self.glimpse.counters.logins,
        }  # fmt: skip

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.config.glimpse.refresh)
            journal = self.stream.journal
            if journal is None or self._books_at == self._snapshot_at:
                continue
            self._snapshot_at = self._books_at
            # Taken between two batches (the loop is ours here), made on a thread: the loop
            # goes on serving the lines and the clients while it sorts and encodes.
            taken = picture(self.books.engine, self.directory, self._snapshot_at)
            blocks = await asyncio.to_thread(taken.encode)
            if journal is not self.stream.journal:
                self._snapshot_at = 0  # a new session began meanwhile: its books are due
                continue
            view = Journal(journal.session)
            view.append(blocks)
            self.glimpse.start_session(view)
            self.glimpse.end_session()  # each login: the snapshot, then End of Session

    def _on_batch(self, batch: Batch) -> None:
        # The itch stream first: it carries the batch as it came, and waits for nothing the
        # books derive from it (they took 250 of the 950 us of a live batch before its writes).
        self.stream.deliver(batch)
        self._publish_itch()
        events = self.books.on_batch(batch)
        self.directory.apply(batch.blocks)
        self._books_at = batch.end
        stream = self.event_stream
        if stream.journal is not None:
            stream.append(*normalize.records(events, stream.next_sequence, batch.first,
                                             batch.blocks))
        self._publish_events()

    def _on_event(self, event: Event) -> None:
        self.books.on_event(event)
        if isinstance(event, GapLost):
            self._books_at = event.end
            if self.event_stream.journal is not None:
                self.event_stream.lose(event.start, event.end)
        if isinstance(event, SessionStarted | GapLost | SessionEnded):
            if self.stream.deliver(event):
                if isinstance(event, SessionStarted) and event.previous is not None:
                    self.directory = Directory()  # the new session's books start empty too
                    self._books_at = self.config.feed.first_sequence
                journal = self.stream.journal
                assert journal is not None
                self._itch_file.open(journal)
                self.itch.start_session(journal)
                events = self.event_stream.start(journal.session)
                self._events_file.open(events)
                self.events.start_session(events)
            elif isinstance(event, SessionEnded):
                self.itch.end_session()
                self.events.end_session()
            self._publish()

    def _publish(self) -> None:
        self._publish_itch()
        self._publish_events()

    def _publish_itch(self) -> None:
        self._itch_file.write(self.stream.blocks_to_write(), self.stream.journal)
        self.itch.publish()

    def _publish_events(self) -> None:
        self._events_file.write(self.event_stream.blocks_to_write(), self.event_stream.journal)
        self.events.publish()


class JournalFile:
    """A stream's journal on disk: ``directory/SESSION.SUFFIX``, the blocks as served, appended
    a batch at a time by a writer thread (a slow disk must not hold the loop); the newest is read
    back when the plant starts (:attr:`reopened`). With no directory, nothing is written. What
    the file holds, the journal may let go of but its newest ``memory_bytes`` (it reads the rest
    back through the file). A write that fails is logged and counted (:attr:`errors`); the
    journal then keeps everything in memory from there, and a plant restarted later would not
    find the file whole."""

    def __init__(self, directory: Path | None, suffix: str, memory_bytes: int = MEMORY_BYTES,
                 ) -> None:  # fmt: skip
        self.directory = directory
        self.suffix = suffix
        self.memory_bytes = memory_bytes
        self.reopened = _reopen(directory, suffix) if directory is not None else None
        self.errors = 0
        self.written = 0  # bytes the file holds (the writer thread's count)
        self._queue: queue.SimpleQueue[bytes | None] | None = None
        self._writer: threading.Thread | None = None
        self._finishing: list[threading.Thread] = []  # earlier sessions' writers, ending
        self._readers: list[int] = []  # descriptors to read spilled ranges back with

    def open(self, journal: Journal) -> None:
        if self.directory is None:
            return
        self._stop(wait=False)  # the last session's writer finishes its file on its own
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{journal.session.decode('ascii').strip()}.{self.suffix}"
        # A new session's file starts empty; a reopened one goes on where it ended.
        file = path.open("ab" if journal is self.reopened else "wb", buffering=0)
        self.written = journal.size if journal is self.reopened else 0
        reader = os.open(path, os.O_RDONLY)
        self._readers.append(reader)
        journal.backing = lambda offset, size: _pread(reader, offset, size)
        self._queue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_all, args=(file, self._queue),
                                        name=f"journal {path.name}", daemon=True)  # fmt: skip
        self._writer.start()

    def write(self, appended: list[bytes], journal: Journal | None) -> None:
        if self._queue is None:
            return
        if appended:
            self._queue.put(b"".join(appended))
        if journal is not None and journal.backing is not None and not self.errors:
            journal.spill(self.memory_bytes, self.written)

    def close(self) -> None:
        """Write what is queued, then close (at the plant's shutdown): every session's file,
        the earlier ones too, is whole when this returns."""
        self._stop(wait=True)
        for writer in self._finishing:
            writer.join()
        self._finishing = []
        for reader in self._readers:
            os.close(reader)
        self._readers = []

    def _stop(self, wait: bool) -> None:
        if self._queue is not None and self._writer is not None:
            self._queue.put(None)
            if wait:
                self._writer.join()
            else:
                self._finishing = [w for w in self._finishing if w.is_alive()]
                self._finishing.append(self._writer)
        self._queue = self._writer = None
        # The last session's reader stays open until close(): clients may be finishing it.

    def _write_all(self, file: BinaryIO, pending: queue.SimpleQueue[bytes | None]) -> None:
        with file:
            while (data := pending.get()) is not None:
                try:
                    view = memoryview(data)
                    while view:  # a raw file may take less than it is given
                        n = file.write(view) or 0
                        view = view[n:]
                        self.written += n
                except OSError as err:
                    self.errors += 1
                    if self.errors == 1:
                        log.error("journal %s: %s; served from memory only", file.name, err)


def _pread(fd: int, offset: int, size: int) -> bytes:
    parts = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:
            raise RuntimeError(f"journal file ends before {offset + size}: it was cut under us")
        parts.append(part)
        offset += len(part)
        size -= len(part)
    return b"".join(parts)


def _reopen(directory: Path, suffix: str) -> Journal | None:
    """The newest session journal a previous run left in ``directory``, read back."""
    files = sorted(directory.glob(f"*.{suffix}"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    path = files[-1]
    journal = Journal(session_bytes(path.stem))
    data = path.read_bytes()
    taken = journal.restore(data)
    if taken != len(data):
        # A message cut by a crash: never served, so gone from the file too, and served again
        # from the feed as the next number.
        log.warning("%s ends in %d bytes of a cut message: dropped", path, len(data) - taken)
        with path.open("r+b") as f:
            f.truncate(taken)
    return journal


def _serving(reopened: Journal | None) -> Journal:
    """What a stream serves before the feed hears the exchange: the journal of the run before
    (clients resume on it at once), or an empty one waiting for the first session."""
    return reopened if reopened is not None else ItchStream.waiting()
