"""Pacing: how many messages the exchange may publish now, and when to ask again.

Sans-I/O: every method takes ``now`` (seconds, any monotonic clock) and nothing here sleeps. The
publisher hands each chunk of messages to :meth:`Pacer.load` as it queues it, asks
:meth:`Pacer.allowance` how many of its pending messages may go, reports what it published with
:meth:`Pacer.sent`, and sleeps until :meth:`Pacer.deadline` when the answer was zero.

Three modes: as fast as possible; a fixed message rate (a token bucket on messages); and the ITCH
clock, which replays the messages' own timestamps scaled by a speed factor.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from tickerplant.jit import kernel
from tickerplant.wire.blocks import I64, U8

# Type (1) + stock locate (2) + tracking number (2) precede the 6-byte timestamp in every ITCH
# message; the block's own u16 length comes before that.
_TIMESTAMP_AT = 2 + 5
_TIMESTAMP_END = _TIMESTAMP_AT + 6


class Pacer(Protocol):
    def load(self, stream: U8, offsets: I64) -> None:
        """Queue the messages of a chunk (block stream and each block's offset) behind the rest."""

    def allowance(self, now: float, pending: int) -> int:
        """How many of the ``pending`` queued messages may be published at ``now``."""

    def sent(self, messages: int) -> None:
        """The publisher published this many of the queued messages."""

    def deadline(self, now: float) -> float:
        """When the next queued message may go (``now`` if it may go already)."""


class AsFastAsPossible:
    """No pacing: every pending message may go at once."""

    def load(self, stream: U8, offsets: I64) -> None:
        pass

    def allowance(self, now: float, pending: int) -> int:
        return pending

    def sent(self, messages: int) -> None:
        pass

    def deadline(self, now: float) -> float:
        return now


class FixedRate:
    """A token bucket on messages: ``rate`` per second, bursts of at most ``burst``.

    The burst defaults to 10 ms worth of messages so that a publisher woken by a coarse event loop
    timer (about a millisecond late) still keeps the rate.
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"message rate must be a positive number of messages/s, not {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 100)
        if self.burst < 1:
            raise ValueError(f"burst must allow at least one message, not {self.burst}")
        self._tokens = self.burst
        self._at: float | None = None

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        if self._at is None or now > self._at:
            self._at = now

    def load(self, stream: U8, offsets: I64) -> None:
        pass

    def allowance(self, now: float, pending: int) -> int:
        self._refill(now)
        return min(pending, int(self._tokens))

    def sent(self, messages: int) -> None:
        self._tokens -= messages

    def deadline(self, now: float) -> float:
        self._refill(now)
        if self._tokens >= 1:
            return now
        return now + (1 - self._tokens) / self.rate


@kernel
def itch_timestamps(stream: U8, offsets: I64, out: I64) -> None:  # pragma: no cover - compiled
    """Write each message's 6-byte ITCH timestamp (ns since midnight) into ``out``.

    A message too short to hold a timestamp takes the one before it (0 for the first), so that a
    stray short message neither stalls nor rushes the clock.
    """
    previous = np.int64(0)
    for i in range(offsets.shape[0]):
        pos = offsets[i]
        size = (np.int64(stream[pos]) << 8) | np.int64(stream[pos + 1])
        if size + 2 >= _TIMESTAMP_END:
            ts = np.int64(0)
            for k in range(pos + _TIMESTAMP_AT, pos + _TIMESTAMP_END):
                ts = (ts << 8) | np.int64(stream[k])
            previous = ts
        out[i] = previous


class ItchClock:
    """Publish each message when its ITCH timestamp comes due, ``speed`` times real time.

    The first message's timestamp is mapped to the moment of the first :meth:`allowance` call. A
    timestamp earlier than one already seen (a file that goes back in time) is due at once rather
    than reordering the stream.
    """

    def __init__(self, speed: float) -> None:
        if not speed > 0 or math.isinf(speed):
            raise ValueError(f"speed must be a positive factor of real time, not {speed}")
        self.speed = speed
        self._due = np.empty(0, dtype=np.int64)  # timestamps (ns) of the queued messages
        self._next = 0  # index in _due of the next message to publish
        self._first: int | None = None  # timestamp mapped to _start
        self._start: float | None = None
        self._latest = 0  # highest timestamp queued so far

    def load(self, stream: U8, offsets: I64) -> None:
        stamps = np.empty(offsets.shape[0], dtype=np.int64)
        itch_timestamps(stream, offsets, stamps)
        if stamps.shape[0]:
            np.maximum.accumulate(np.maximum(stamps, self._latest), out=stamps)
            self._latest = int(stamps[-1])
            if self._first is None:
                self._first = int(stamps[0])
        self._due = np.concatenate((self._due[self._next :], stamps))
        self._next = 0

    def _clock(self, now: float) -> int:
        """``now`` as an ITCH timestamp."""
        if self._first is None or self._start is None:
            return 0
        # Rounded, not truncated: a deadline computed from a timestamp must find it due.
        return self._first + round((now - self._start) * self.speed * 1e9)

    def allowance(self, now: float, pending: int) -> int:
        if self._first is None:
            return 0
        if self._start is None:
            self._start = now
        due = self._due[self._next :]
        return min(pending, int(np.searchsorted(due, self._clock(now), side="right")))

    def sent(self, messages: int) -> None:
        self._next += messages

    def deadline(self, now: float) -> float:
        if self._start is None or self._next >= self._due.shape[0]:
            return now
        wait = (int(self._due[self._next]) - self._clock(now)) / (self.speed * 1e9)
        return now + max(0.0, wait)
