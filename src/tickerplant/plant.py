"""``tickerplant run``: a whole plant in one process.

The feed handler (lines, re-request, replay) hands its repaired stream to the live books and to
the ``itch`` stream, a SoupBinTCP server of its journal: a client logs in at any sequence number,
is replayed from there at full speed and then stays live, and a range the plant lost keeps its
numbers as marks (:mod:`tickerplant.session.stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from tickerplant.book.snapshot import Directory, snapshot
from tickerplant.endpoint import GLIMPSE, ITCH, LINE_A, LINE_B, REPLAY, REREQUEST, Endpoint
from tickerplant.feed.books import LiveBooks
from tickerplant.feed.handler import FeedHandler
from tickerplant.io.soupbin import SoupServer
from tickerplant.ops import passwords
from tickerplant.ops.config import ConfigError
from tickerplant.session.events import Batch, Event, GapLost, SessionEnded, SessionStarted
from tickerplant.session.fanout import FanOutLimits
from tickerplant.session.feed import FeedConfig
from tickerplant.session.journal import Journal
from tickerplant.session.stream import ItchStream
from tickerplant.wire.moldudp64 import session_bytes

log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        for name, stored in self.users.items():
            if not (0 < len(name) <= 6 and name.isascii() and name.isprintable()):
                raise ConfigError(f"users.{name}", "is not a SoupBinTCP user name",
                                  "use 1 to 6 ASCII characters")
            passwords.check(stored, f"users.{name}")


class Plant:
    def __init__(self, config: PlantConfig) -> None:
        self.config = config
        self.books = LiveBooks()
        directory = config.itch.journal_dir
        self._reopened = _reopen(directory) if directory is not None else None
        self.stream = ItchStream(config.feed.first_sequence, self._reopened)
        self._file: BinaryIO | None = None
        self.feed = FeedHandler(config.feed, self._on_batch, self._on_event)
        listen = config.itch.listen
        users = {name.encode("ascii"): stored for name, stored in config.users.items()}
        # Before the feed hears the exchange, the journal of the run before (clients resume on
        # it at once), or an empty one waiting for the first session.
        serving = self._reopened if self._reopened is not None else ItchStream.waiting()
        self.itch = SoupServer(
            serving, listen.host, listen.port,
            limits=config.itch.limits,
            users=users or None, verify=passwords.verify, local_only=not users,
        )  # fmt: skip
        self.directory = Directory()
        glimpse = config.glimpse
        self.glimpse = SoupServer(
            ItchStream.waiting(), glimpse.listen.host, glimpse.listen.port, limits=glimpse.limits,
            users=users or None, verify=passwords.verify, local_only=not users,
        )  # fmt: skip
        self._snapshot_at = 0  # the itch number the current snapshot continues from
        # The number after the last message the books applied (or were told lost): what a
        # snapshot continues from. Behind the journal's end while a restarted plant catches up.
        self._books_at = config.feed.first_sequence
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen first, then join the lines: a client may log in before the first packet."""
        self.books.warm()
        await self.itch.start()
        await self.glimpse.start()
        await self.feed.start()
        self._refresher = asyncio.ensure_future(self._refresh())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self.feed.close()
        await self.itch.close()
        await self.glimpse.close()
        if self._file is not None:
            self._file.close()

    def figures(self) -> dict[str, Any]:
        counters = self.itch.counters
        return self.feed.figures() | self.books.figures() | {
            "stream_messages": {"itch": self.stream.counters.messages},
            "stream_lost_messages": {"itch": self.stream.counters.lost},
            "clients": {"itch": self.itch.clients},
            "logins": {"itch": counters.logins},
            "rejected_logins": {"itch": counters.rejected},
            "sent_messages": {"itch": counters.messages_sent},
            "sent_bytes": {"itch": counters.bytes_sent},
            "slow_consumers": {"itch": counters.slow_consumers},
            "refused_connections": {"itch": counters.refused},
            "glimpse_logins": self.glimpse.counters.logins,
        }

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.config.glimpse.refresh)
            journal = self.stream.journal
            if journal is None or self._books_at == self._snapshot_at:
                continue
            self._snapshot_at = self._books_at
            view = Journal(journal.session)
            view.append(snapshot(self.books.engine, self.directory, self._snapshot_at))
            self.glimpse.start_session(view)
            self.glimpse.end_session()  # each login: the snapshot, then End of Session

    def _on_batch(self, batch: Batch) -> None:
        self.books.on_batch(batch)
        self.directory.take(batch.blocks)
        self._books_at = batch.end
        self.stream.deliver(batch)
        self._write()
        self.itch.publish()

    def _on_event(self, event: Event) -> None:
        self.books.on_event(event)
        if isinstance(event, GapLost):
            self._books_at = event.end
        if isinstance(event, SessionStarted | GapLost | SessionEnded):
            if self.stream.deliver(event):
                if isinstance(event, SessionStarted) and event.previous is not None:
                    self.directory = Directory()  # the new session's books start empty too
                    self._books_at = self.config.feed.first_sequence
                journal = self.stream.journal
                assert journal is not None
                self._open(journal)
                self.itch.start_session(journal)
            elif isinstance(event, SessionEnded):
                self.itch.end_session()
            self._write()
            self.itch.publish()

    def _open(self, journal: Journal) -> None:
        directory = self.config.itch.journal_dir
        if directory is None:
            return
        if self._file is not None:
            self._file.close()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{journal.session.decode('ascii').strip()}.journal"
        # A new session's file starts empty; a reopened one goes on where it ended.
        self._file = path.open("ab" if journal is self._reopened else "wb", buffering=0)

    def _write(self) -> None:
        appended = self.stream.take_appended()
        if self._file is not None:
            # Page-cache writes of what was just served, a batch at a time: microseconds.
            self._file.write(b"".join(appended))


def _reopen(directory: Path) -> Journal | None:
    """The newest session journal a previous run left in ``directory``, read back."""
    files = sorted(directory.glob("*.journal"), key=lambda p: p.stat().st_mtime)
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
