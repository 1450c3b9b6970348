"""The exchange's publishing side: a block stream becomes MoldUDP64 packets on lines A and B.

Each slice of work takes the messages the pacer releases, journals them (so that a re-request for
a message can never arrive before the journal holds it), cuts them into packets with one compiled
call (:func:`~tickerplant.wire.moldudp64.pack_runs`) and sends the same packet bytes on every line.
Per packet the Python work is a header, a slice and one send per line; nothing is done per
message in Python.

A line whose socket buffer is full (EAGAIN, ENOBUFS) keeps the packets it could not send in a
backlog, in order, and retries them on the next tick; no new messages are published until every
backlog is empty, so the lines never drift more than one slice apart and no line loses a packet
because another was slow. The publisher can also lose packets on purpose: each line's ``drop``
probability skips a data packet on that line only, decided by a hash of the seed, the line and the
packet's sequence number, so a run is reproducible whatever the slicing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import numpy as np

from tickerplant.distribute.journal import Journal
from tickerplant.errors import InputError
from tickerplant.exchange.pacing import AsFastAsPossible, Pacer
from tickerplant.io.multicast import MAX_BLOCKS, RETRY_DELAY, Downstream, Line
from tickerplant.wire.blocks import as_array, index_blocks
from tickerplant.wire.channels import split
from tickerplant.wire.moldudp64 import (
    END_OF_SESSION_SECONDS,
    HEARTBEAT_INTERVAL,
    MAX_PACKET,
    SESSION_LEN,
    encode_end_of_session,
    encode_heartbeat,
    pack_runs,
)

SLICE_PACKETS = 128  # packets per slice (~2 ms) between event loop turns


class SourceError(InputError):
    """The message source handed over something the publisher cannot send."""


class Channel:
    """One MoldUDP64 session of the exchange: its journal, its lines (``number``, from 0, tells
    their loss apart from other channels', as ``drop_seed`` seeds it), what it sent."""

    def __init__(self, journal: Journal, lines: Sequence[Line], number: int, drop_seed: int = 0,
                 slice_packets: int = SLICE_PACKETS) -> None:  # fmt: skip
        if len(journal.session) != SESSION_LEN:
            raise ValueError(f"session {journal.session!r} is not {SESSION_LEN} bytes")
        self.journal = journal
        self.session = journal.session
        self.downstream = Downstream(lines, number, drop_seed, slice_packets)
        self.lines = self.downstream.lines
        self.number = number
        self.digest = hashlib.sha256()
        self.next_sequence = journal.next_sequence
        self.messages = 0
        self.packets = 0  # data packets (each sent once per line, unless dropped)
        self.heartbeats = 0
        self.end_of_session_packets = 0
        self.last_sent = 0.0  # (from the publisher's first slice)

    @property
    def sha256(self) -> str:
        """Digest of every message block this channel published, as one block stream."""
        return self.digest.hexdigest()


class Publisher:
    """Publishes ``source`` (an iterator of block streams) as one MoldUDP64 session on ``lines``,
    or over several channels: ``more_channels`` (``(journal, lines)`` of channels 2 to K) each
    get the messages of their stocks (:func:`~tickerplant.wire.channels.split`), each its own
    session, numbering, heartbeats and end of session; the source is paced once, as one day.

    Driven like every machine here: :meth:`handle_timer` does at most one slice of work
    (``slice_packets``) and :meth:`get_timer` says when it wants to be called again.
    """

    def __init__(
        self,
        journal: Journal,
        source: Iterator[bytes],
        lines: Sequence[Line],
        pacer: Pacer | None = None,
        *,
        drop_seed: int = 0,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        end_of_session_seconds: float = END_OF_SESSION_SECONDS,
        slice_packets: int = SLICE_PACKETS,
        more_channels: Sequence[tuple[Journal, Sequence[Line]]] = (),
    ) -> None:
        if slice_packets < 1:
            raise ValueError(f"slice_packets must be at least 1, not {slice_packets}")
        every = [(journal, lines), *more_channels]
        self.channels = [Channel(j, ls, k, drop_seed, slice_packets)
                         for k, (j, ls) in enumerate(every)]  # fmt: skip
        if len({c.session for c in self.channels}) != len(self.channels):
            raise ValueError("two channels have the same session")
        self.journal = journal  # the first channel's
        self.lines = self.channels[0].lines
        self.pacer: Pacer = pacer if pacer is not None else AsFastAsPossible()
        self.drop_seed = drop_seed
        self.heartbeat_interval = heartbeat_interval
        self.end_of_session_seconds = end_of_session_seconds
        self._source = source
        self._exhausted = False
        self._digest = hashlib.sha256()
        # A slice over several channels is cut here first: how much of the day it takes.
        self._starts = np.empty(slice_packets, dtype=np.int64)
        self._counts = np.empty(slice_packets, dtype=np.int64)
        # The chunk being published: its bytes, each message's offset, and where we are in it.
        self._chunk = memoryview(b"")
        self._offsets = np.empty(0, dtype=np.int64)
        # Reused from chunk to chunk: fresh memory costs a page fault per 4 KiB on first touch.
        self._offsets_buffer = np.empty(0, dtype=np.int64)
        self._index = 0
        self._pos = 0
        self._started = False
        self._ending_since: float | None = None
        self._ends_at = math.inf  # when the end of session is over
        self._next_end_of_session = 0.0
        self.messages = 0  # of the source (a message of no stock goes to every channel, once)
        self.done = False
        self._timer = -math.inf  # work from the start

    @property
    def sha256(self) -> str:
        """Digest of every message block published so far, as one block stream (the source's)."""
        if len(self.channels) == 1:
            return self.channels[0].sha256
        return self._digest.hexdigest()

    @property
    def next_sequence(self) -> int:
        """The first channel's next sequence number."""
        return self.channels[0].next_sequence

    @property
    def packets(self) -> int:
        """Data packets, every channel's (each sent once per line, unless dropped)."""
        return sum(c.packets for c in self.channels)

    @property
    def heartbeats(self) -> int:
        return sum(c.heartbeats for c in self.channels)

    @property
    def end_of_session_packets(self) -> int:
        return sum(c.end_of_session_packets for c in self.channels)

    @property
    def ending(self) -> bool:
        return self._ending_since is not None

    def finish(self, now: float, within: float | None = None) -> None:
        """Stop publishing messages and start the end of session (a user asked to stop), over
        at most ``within`` seconds from now if given (a stopped process has little time)."""
        if self._ending_since is None:
            self._exhausted = True
            self._chunk = memoryview(b"")
            self._offsets = np.empty(0, dtype=np.int64)
            self._begin_end(now)
        if within is not None:
            self._ends_at = min(self._ends_at, now + within)
            self._next_end_of_session = min(self._next_end_of_session, self._ends_at)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` has work again (at once: now or earlier; None: done)."""
        return None if self.done else self._timer

    def handle_timer(self, now: float) -> None:
        """Do at most one slice of work."""
        self._timer = self._slice(now)

    def _slice(self, now: float) -> float:
        if self.done:
            return math.inf
        if not all([line.flush() for c in self.channels for line in c.lines]):
            return now + RETRY_DELAY
        if not self._started:
            self._started = True
            for channel in self.channels:
                channel.last_sent = now
        if self._ending_since is None:
            if self._publish(now):
                return now
            if self._exhausted:
                self._begin_end(now)
            else:
                due = self.pacer.deadline(now)
                for channel in self.channels:  # a channel with nothing to send says it lives
                    if now - channel.last_sent >= self.heartbeat_interval:
                        heartbeat = encode_heartbeat(channel.session, channel.next_sequence)
                        self._broadcast(channel, heartbeat, now)
                        channel.heartbeats += 1
                    due = min(due, channel.last_sent + self.heartbeat_interval)
                return due
        return self._end_of_session(now)

    def _next_chunk(self) -> bool:
        """Queue the next non-empty chunk of the source; False when the source is exhausted."""
        while not self._exhausted:
            try:
                chunk = next(self._source, None)
            except (ValueError, OSError) as exc:
                raise SourceError(f"the message source failed: {exc}") from exc
            if chunk is None:
                self._exhausted = True
                break
            if not chunk:
                continue
            arr = as_array(chunk)
            if self._offsets_buffer.shape[0] < arr.shape[0] // 2 + 1:
                self._offsets_buffer = np.empty(arr.shape[0] // 2 + 1, dtype=np.int64)
            found, consumed = index_blocks(arr, self._offsets_buffer)
            offsets = self._offsets_buffer[:found]
            if consumed != len(chunk):
                raise SourceError(
                    f"chunk of {len(chunk)} bytes ends in {len(chunk) - consumed} bytes that are "
                    "not a whole message block"
                )
            sizes = np.diff(offsets, append=consumed) - 2
            too_big = np.flatnonzero(sizes > MAX_BLOCKS - 2)
            if too_big.shape[0]:
                first = int(too_big[0])
                raise SourceError(
                    f"message {self.next_sequence + first} is {int(sizes[first])} bytes: no "
                    f"MoldUDP64 packet of {MAX_PACKET} bytes can carry it"
                )
            # The journal keeps views of this chunk: it must never change under them.
            self._chunk = memoryview(chunk if isinstance(chunk, bytes) else bytes(chunk))
            self._offsets = offsets
            self._index = 0
            self._pos = 0
            self.pacer.load(arr, offsets)
            return True
        return False

    def _publish(self, now: float) -> bool:
        """Publish one slice of what the pacer allows; True if anything went out."""
        remaining = self._offsets.shape[0] - self._index
        if remaining == 0:
            if not self._next_chunk():
                return False
            remaining = self._offsets.shape[0]
        allowed = self.pacer.allowance(now, remaining)
        if allowed <= 0:
            return False
        end = (
            len(self._chunk) if allowed == remaining else int(self._offsets[self._index + allowed])
        )
        stream = self._chunk[self._pos : end]
        if len(self.channels) == 1:
            channel = self.channels[0]
            packets, consumed = channel.downstream.pack(as_array(stream))
            segment = stream[:consumed]
            messages = self._send(channel, segment, packets, now)
        else:
            _, consumed = pack_runs(as_array(stream), MAX_BLOCKS, self._starts, self._counts)
            segment = stream[:consumed]
            self._digest.update(segment)
            # Each channel's part holds no more messages than the slice, so no more packets.
            messages = int(np.searchsorted(self._offsets, self._pos + consumed)) - self._index
            for channel, part in zip(self.channels, split(segment, len(self.channels)),
                                     strict=True):  # fmt: skip
                if part:
                    count, used = channel.downstream.pack(as_array(part))
                    assert used == len(part), "a channel's part must fit its slice"
                    self._send(channel, part, count, now)
        self.messages += messages
        self._index += messages
        self._pos += consumed
        self.pacer.sent(messages)
        return True

    def _send(self, channel: Channel, segment: memoryview | bytes, packets: int,
              now: float) -> int:  # fmt: skip
        """Journal ``segment`` (cut into ``packets`` by its downstream) as ``channel``'s next
        messages, then send them on its lines; how many."""
        messages = channel.journal.append(segment)
        channel.digest.update(segment)
        first = channel.next_sequence
        channel.downstream.send_packed(channel.session, as_array(segment), packets, first)
        channel.next_sequence = first + messages
        channel.messages += messages
        channel.packets += packets
        channel.last_sent = now
        return messages

    def _broadcast(self, channel: Channel, packet: bytes, now: float) -> None:
        channel.downstream.broadcast(packet)
        channel.last_sent = now

    def _begin_end(self, now: float) -> None:
        self._ending_since = now
        self._ends_at = now + self.end_of_session_seconds
        self._next_end_of_session = now

    def _end_of_session(self, now: float) -> float:
        over = self._ends_at
        if now >= self._next_end_of_session:
            for channel in self.channels:
                ending = encode_end_of_session(channel.session, channel.next_sequence)
                self._broadcast(channel, ending, now)
                channel.end_of_session_packets += 1
            # An end cut short still sends its last round at its end: a receiver that missed
            # the first gets a second.
            self._next_end_of_session = min(now + self.heartbeat_interval, over)
        if now >= over and self.channels[0].end_of_session_packets > 0:
            self.done = True
            return math.inf
        return min(self._next_end_of_session, over)
