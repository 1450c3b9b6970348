"""Subscribing to a plant's stream: ``async for record in subscribe(...)``.

One SoupBinTCP login at the next sequence number wanted; Sequenced Data comes out as
:class:`~tickerplant.session.events.Batch` es (a block stream each, never one object per message),
lost messages (the plant's marks) as :class:`Lost` notices at their position. Heartbeats go both
ways (the session machine's). A connection that breaks (reset, dead link, a server that goes away
and comes back) is opened again after ``retry`` seconds at the number after the last one received,
so the records are every message exactly once, in order, across reconnects; each reconnect is
surfaced as a :class:`Reconnected` record. The iteration ends at the server's End of Session.

Flow control: what the consumer has not taken yet is bounded; past ``max_queued`` records the
connection stops reading (TCP pushes back on the server, whose slow-consumer policy decides).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from tickerplant.endpoint import Endpoint
from tickerplant.io.soupbin import SoupConnection
from tickerplant.session.events import Batch
from tickerplant.session.soupbin import (
    CloseCause,
    Closed,
    DebugReceived,
    LoggedIn,
    Rejected,
    SoupClientSession,
)
from tickerplant.wire.blocks import offsets_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lost:
    """Messages [start, end) were lost by the plant (or skipped by the server): never coming."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The connection broke (``reason``) and was opened again at ``sequence``."""

    sequence: int
    reason: str


Record = Batch | Lost | Reconnected


class SubscribeError(Exception):
    """The server refused the login: trying again the same way will not help."""


class _Connection(SoupConnection[SoupClientSession]):
    def __init__(
        self, session: SoupClientSession, queue: asyncio.Queue[Record | Closed], max_queued: int
    ) -> None:
        super().__init__(session)
        self.queue = queue
        self.max_queued = max_queued
        self.accepted: int | None = None
        self.reading = True
        self.debug = ""

    def on_event(self, event: object) -> None:
        if isinstance(event, Batch):
            for record in _split(event):
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

    def taken(self) -> None:
        """The consumer took a record: read again once the queue has room."""
        if not self.reading and self.queue.qsize() <= self.max_queued // 2 and self.transport:
            self.reading = True
            self.transport.resume_reading()


def _split(batch: Batch) -> list[Record]:
    """A batch as runs of messages and of lost ones (marks: the one-byte message 0x00, see
    :mod:`tickerplant.session.stream`); no work per message in Python."""
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
) -> AsyncIterator[Record]:
    """Records from message ``first`` on (0: from now) until the End of Session.

    ``retry`` seconds between reconnects (None: a broken connection ends the iteration with
    ConnectionError). Raises :class:`SubscribeError` if the login is rejected.
    """
    loop = asyncio.get_running_loop()
    wanted = first
    reason = ""
    while True:
        queue: asyncio.Queue[Record | Closed] = asyncio.Queue()
        machine = SoupClientSession(
            loop.time(),
            username=username.encode("ascii"),
            password=password.encode("ascii"),
            session=session.encode("ascii"),
            sequence=wanted,
        )
        connection = _Connection(machine, queue, max_queued)
        try:
            # Called within this await, before the loop goes round: it gets this connection.
            await loop.create_connection(lambda: connection, endpoint.host, endpoint.port)  # noqa: B023
        except OSError as err:
            if retry is None:
                raise ConnectionError(f"cannot reach {endpoint}: {err}") from err
            reason = reason or f"cannot reach {endpoint}: {err.strerror}"
            await asyncio.sleep(retry)
            continue
        if reason:
            yield Reconnected(wanted, reason)
        try:
            while True:
                item = await queue.get()
                connection.taken()
                if isinstance(item, Closed):
                    break
                if connection.accepted is not None and wanted and connection.accepted > wanted:
                    yield Lost(wanted, connection.accepted)  # the server starts later
                    wanted = connection.accepted
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
