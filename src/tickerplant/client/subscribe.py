"""Subscribing to a plant's stream: ``async for record in subscribe(...)``.

One SoupBinTCP login at the next sequence number wanted; Sequenced Data comes out as
:class:`~tickerplant.receive.events.Batch` es (a block stream each, never one object per message),
lost messages (the plant's marks) as :class:`Lost` notices at their position. Heartbeats go both
ways (the session machine's). A connection that breaks (reset, dead link, a server that goes away
and comes back) is opened again after ``retry`` seconds at the number after the last one received,
so the records are every message exactly once, in order, across reconnects; each reconnect is
surfaced as a :class:`Reconnected` record. The iteration ends at the server's End of Session.

Flow control: what the consumer has not taken yet is bounded; past ``max_queued`` records the
connection stops reading (TCP pushes back on the server, whose slow-consumer policy decides).

The ``events`` stream (``events=True``) comes out as :class:`Events` (an array of its records,
:mod:`tickerplant.wire.events`), with its notices surfaced as :class:`Lost` (itch numbers the
plant lost), :class:`Skipped` and :class:`Conflated`. Its records carry their own numbers, and
a reconnect resumes after the last one received. ``symbols`` narrows it (a :class:`Watchlist`
can be changed while connected, and is asked for again on each reconnect).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tickerplant.endpoint import Endpoint
from tickerplant.errors import RemoteError
from tickerplant.io.loop import clock
from tickerplant.io.soupbin import SoupConnection, connect
from tickerplant.receive.events import Batch
from tickerplant.session.soupbin import (
    CloseCause,
    Closed,
    DebugReceived,
    LoggedIn,
    Rejected,
    SoupClientSession,
)
from tickerplant.wire import events as ev
from tickerplant.wire.blocks import offsets_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lost:
    """Messages [start, end) were lost by the plant: never coming. On the events stream they
    are itch numbers, told by the record numbered ``sequence``."""

    start: int
    end: int
    sequence: int = 0


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The connection broke (``reason``) and was opened again at ``sequence``."""

    sequence: int
    reason: str


@dataclass(frozen=True, slots=True)
class Events:
    """Records of the events stream in the order sent (a ``wire.events.RECORD`` array: view one
    kind's fields with ``wire.events.view``); images (``flags`` & IMAGE) before updates."""

    records: npt.NDArray[np.void]


@dataclass(frozen=True, slots=True)
class Skipped:
    """Events [start, end) were skipped: this client was a slow consumer under ``skip``, or
    resumed from numbers the server no longer held."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Conflated:
    """Of events [start, end), ``dropped`` BBO changes were not sent (a slow consumer under
    ``conflate``): each symbol's latest was."""

    start: int
    end: int
    dropped: int


Record = Batch | Lost | Reconnected | Events | Skipped | Conflated


class Watchlist:
    """The symbols an events subscription is narrowed to; change it while connected."""

    def __init__(self, symbols: Iterable[str] = ()) -> None:
        self._symbols: dict[str, None] = {}
        self._send: Callable[[bytes], None] | None = None
        self.add(*symbols)

    @property
    def symbols(self) -> list[str]:
        return list(self._symbols)

    def add(self, *symbols: str) -> None:
        new = [s for s in symbols if s not in self._symbols]
        self._symbols.update(dict.fromkeys(new))
        if new and self._send is not None:
            self._send(b"+" + _padded(new))

    def remove(self, *symbols: str) -> None:
        gone = [s for s in symbols if s in self._symbols]
        for symbol in gone:
            del self._symbols[symbol]
        if gone and self._send is not None:
            self._send(b"-" + _padded(gone))

    def request(self) -> bytes:
        """The request that asks for all of it (Unsequenced Data, sent with each login)."""
        return b"+" + _padded(self.symbols)


def _padded(symbols: list[str]) -> bytes:
    out = b""
    for symbol in symbols:
        name = symbol.encode("ascii")
        if not 0 < len(name) <= 8:
            raise ValueError(f"{symbol!r} is not an ITCH symbol (1 to 8 characters)")
        out += name.ljust(8)
    return out


class SubscribeError(RemoteError):
    """The server refused the login: trying again the same way will not help."""


class _Connection(SoupConnection[SoupClientSession]):
    def __init__(
        self, session: SoupClientSession, queue: asyncio.Queue[Record | Closed], max_queued: int,
        events: bool = False,
    ) -> None:
        super().__init__(session)
        self.split = _events if events else _split
        self.queue = queue
        self.max_queued = max_queued
        self.accepted: int | None = None
        self.reading = True
        self.debug = ""

    def on_event(self, event: object) -> None:
        if isinstance(event, Batch):
            for record in self.split(event):
                self.queue.put_nowait(record)
            if self.reading and self.queue.qsize() > self.max_queued and self.transport:
                self.reading = False
                self.transport.pause_reading()
        elif isinstance(event, LoggedIn):
            self.accepted = event.sequence
        elif isinstance(event, DebugReceived):
            self.debug = event.text.decode("ascii", "replace")
            log.info("server says: %s", self.debug)
        elif isinstance(event, Rejected):
            reason = {b"A": "not authorized", b"S": "session not available"}.get(event.reason)
            self.queue.put_nowait(Closed(CloseCause.LOGIN_REJECTED, reason or repr(event.reason)))
        elif isinstance(event, Closed):
            self.queue.put_nowait(event)

    def request(self, message: bytes) -> None:
        """Unsequenced Data to the server now (a subscription change)."""
        if not self.session.closed:
            self.session.send_unsequenced(message)
            self.service()

    def taken(self) -> None:
        """The consumer took a record: read again once the queue has room."""
        if not self.reading and self.queue.qsize() <= self.max_queued // 2 and self.transport:
            self.reading = True
            self.transport.resume_reading()


def _events(batch: Batch) -> list[Record]:
    """An events stream batch as runs of records and the notices between them. Lost and
    skipped notices stand where they were; conflated ones go first and do not split the
    records: a slow consumer that reads several rounds at once takes them as one batch, and is
    at the latest at once rather than one of its pauses per round later."""
    records = ev.from_blocks(batch.blocks)
    kinds = records["kind"]
    conflated = kinds == ev.CONFLATED
    out: list[Record] = []
    if conflated.any():
        for notice in ev.view(records, ev.CONFLATED).tolist():
            first, count, dropped = notice[-3:]
            out.append(Conflated(first, first + count, dropped))
        records, kinds = ev.where(records, ~conflated), kinds[~conflated]
    notices = np.flatnonzero(np.isin(kinds, [ev.LOST, ev.SKIPPED]))
    at = 0
    for i in [*notices.tolist(), records.shape[0]]:
        if i > at:
            out.append(Events(records[at:i]))
        if i < records.shape[0]:
            notice = records[i : i + 1].view(ev.RECORDS[ev.LOST])[0]
            first, count = int(notice["first"]), int(notice["count"])
            if bytes(notice["kind"]) == ev.LOST:
                out.append(Lost(first, first + count, int(notice["sequence"])))
            else:
                out.append(Skipped(first, first + count))
        at = i + 1
    return out


def _split(batch: Batch) -> list[Record]:
    """A batch as runs of messages and of lost ones (marks: the one-byte message 0x00, see
    :mod:`tickerplant.distribute.stream`); no work per message in Python."""
    offsets, size = offsets_of(batch.blocks)
    ends = np.append(offsets[1:], size)
    short = (ends - offsets) == 3
    if not short.any():
        return [batch]
    raw = np.frombuffer(batch.blocks, dtype=np.uint8)
    empty = short & (raw[np.minimum(offsets + 2, size - 1)] == 0)
    if not empty.any():
        return [batch]
    # Where a run of empty (or of real) messages starts.
    edges = np.flatnonzero(np.diff(empty.astype(np.int8))) + 1
    starts = [0, *edges.tolist()]
    stops = [*edges.tolist(), len(empty)]
    out: list[Record] = []
    blocks = batch.blocks
    for lo, hi in zip(starts, stops, strict=True):
        first = batch.first + lo
        if empty[lo]:
            out.append(Lost(first, batch.first + hi))
        else:
            cut = blocks[int(offsets[lo]) : int(ends[hi - 1])]
            out.append(Batch(first, hi - lo, cut))
    return out


async def subscribe(
    endpoint: Endpoint,
    *,
    first: int = 1,
    session: str = "",
    username: str = "",
    password: str = "",
    retry: float | None = 0.5,
    max_queued: int = 1024,
    events: bool = False,
    symbols: Iterable[str] | Watchlist | None = None,
    rcvbuf: int | None = None,
    snapshot: bool = False,
) -> AsyncGenerator[Record]:
    """Records from message ``first`` on (0: from now) until the End of Session.

    ``retry`` seconds between reconnects (None: a broken connection ends the iteration with
    ConnectionError). Raises :class:`SubscribeError` if the login is rejected. ``events``: the
    server is an events stream (``symbols`` narrows it, from the login on). ``rcvbuf``: what
    the kernel may hold unread for us (SO_RCVBUF, set before connecting; None: the kernel's
    autotuning, which grows it to megabytes): a conflated consumer that wants a fresh picture
    keeps it, and ``max_queued``, small, since what waits there is as old as it is long.
    ``snapshot`` (events, from now): every symbol's image first (``*`` with the login), the
    last of them an ``i`` notice saying the number they hold up to, then every update.
    """
    if (symbols is not None or snapshot) and not events:
        raise ValueError("symbols and snapshots are the events stream's: give events=True")
    if snapshot and (first or symbols is not None):
        raise ValueError("a snapshot is of every symbol, from now: give first=0, no symbols")
    watch = symbols if isinstance(symbols, Watchlist) or symbols is None else Watchlist(symbols)
    wanted = first
    reason = ""
    while True:
        queue: asyncio.Queue[Record | Closed] = asyncio.Queue()
        machine = SoupClientSession(
            clock(),
            username=username.encode("ascii"),
            password=password.encode("ascii"),
            session=session.encode("ascii"),
            sequence=wanted,
        )
        if watch is not None:
            machine.send_unsequenced(watch.request())  # with the login: it narrows the replay
        elif snapshot and not wanted:  # (not on a reconnect: it resumes from its number)
            machine.send_unsequenced(b"*")
        connection = _Connection(machine, queue, max_queued, events)
        try:
            # Called within this await, before the loop goes round: it gets this connection.
            await connect(lambda: connection, endpoint, rcvbuf)  # noqa: B023
        except OSError as err:
            if retry is None:
                raise ConnectionError(f"cannot reach {endpoint}: {err}") from err
            reason = reason or f"cannot reach {endpoint}: {err.strerror}"
            await asyncio.sleep(retry)
            continue
        if reason:
            yield Reconnected(wanted, reason)
        if watch is not None:
            watch._send = connection.request
        try:
            while True:
                item = await queue.get()
                connection.taken()
                if isinstance(item, Closed):
                    break
                if connection.accepted is not None and wanted and connection.accepted > wanted:
                    # The server starts later: its ring had moved on (or it started later)
                    yield (Skipped if events else Lost)(wanted, connection.accepted)
                    wanted = connection.accepted
                if events:
                    fresh, wanted = _resumed(item, wanted)
                    if fresh is not None:
                        yield fresh
                    continue
                if isinstance(item, Batch):
                    if wanted and item.first < wanted:
                        if item.end <= wanted:
                            continue  # a server that repeats what we had: never twice to us
                        item = item.since(wanted)
                    wanted = item.end
                elif isinstance(item, Lost):
                    wanted = item.end
                yield item
        finally:
            if watch is not None:
                watch._send = None
            if connection.transport is not None:
                connection.transport.abort()
        if item.cause is CloseCause.END_OF_SESSION:
            return
        if item.cause is CloseCause.LOGIN_REJECTED:
            raise SubscribeError(f"login rejected: {item.detail}")
        if wanted == 0 and connection.accepted is not None:
            wanted = connection.accepted  # from now, as it was then: resume there
        reason = f"{item.cause.value}: {connection.debug or item.detail}"
        if retry is None:
            raise ConnectionError(reason)
        await asyncio.sleep(retry)


def _resumed(item: Record, wanted: int) -> tuple[Record | None, int]:
    """An events record as the consumer gets it (what it had before a reconnect dropped), and
    the number to resume from after it."""
    if isinstance(item, Skipped):
        return item, max(wanted, item.end)
    if isinstance(item, Lost):
        if item.sequence < wanted:
            return None, wanted  # told before the reconnect
        return item, item.sequence + 1
    if not isinstance(item, Events):
        return item, wanted
    records = item.records
    update = (records["flags"] & ev.IMAGE) == 0
    sequence = records["sequence"].astype(np.int64)
    fresh = ~update | (sequence >= wanted)
    if not fresh.all():
        records = ev.where(records, fresh)
        update, sequence = update[fresh], sequence[fresh]
        if not records.shape[0]:
            return None, wanted
        item = Events(records)
    if update.any():
        wanted = max(wanted, int(sequence[update].max()) + 1)
    return item, wanted
