"""The re-request policy: which MoldUDP64 requests the exchange answers, and with what.

Sans-I/O: :meth:`Rerequests.handle` takes a datagram, its source and ``now`` and returns the
packets to send back to that source, read from the :class:`Journal` of the session it names
(one server answers for every channel of an exchange). The server must
never become an amplifier that a spoofed source can aim at a victim, so:

- a request gets at most ``max_messages`` messages (the head of the range it asked for; the client
  asks again for the rest), which bounds the bytes one 20-byte request can cause;
- every source address has a token bucket of messages per second (``source_rate``, bursts of
  ``source_burst``), and all sources together share one more (``total_rate``), so the volume a
  flood of requests can draw is capped whatever addresses it claims to come from.

Every refusal is counted by kind; the sender of a bad request gets no reply at all.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from tickerplant.distribute.journal import Journal
from tickerplant.errors import MalformedPacket
from tickerplant.ops.config import check
from tickerplant.wire.blocks import as_array
from tickerplant.wire.moldudp64 import (
    HEADER_LEN,
    MAX_PACKET,
    decode_request,
    encode_blocks,
    pack_runs,
)


@dataclass(frozen=True, slots=True)
class RerequestLimits:
    max_messages: int = 1000  # per request; the rest of a longer range is left for the next
    source_rate: float = 50_000.0  # messages per second one source address may draw
    source_burst: float = 10_000.0  # messages a quiet source may draw at once
    total_rate: float = 500_000.0  # messages per second all sources together may draw
    total_burst: float = 100_000.0
    max_sources: int = 4096  # buckets kept; the least recently seen are forgotten first
    max_packet: int = MAX_PACKET  # bytes of UDP payload per response packet

    def __post_init__(self) -> None:
        checks = [
            ("max_messages", self.max_messages >= 1, "at least 1"),
            ("source_rate", self.source_rate > 0, "messages per second above 0"),
            ("total_rate", self.total_rate > 0, "messages per second above 0"),
            ("source_burst", self.source_burst >= 1, "at least one message"),
            ("total_burst", self.total_burst >= 1, "at least one message"),
            ("max_sources", self.max_sources >= 1, "at least 1"),
            ("max_packet", self.max_packet > HEADER_LEN + 2, "bytes enough for one message"),
        ]
        for name, ok, fix in checks:
            check(name, ok, getattr(self, name), f"use {fix}")


@dataclass(slots=True)
class RerequestCounters:
    requests: int = 0  # datagrams received
    answered: int = 0  # requests that got at least one message back
    messages: int = 0  # messages sent back
    packets: int = 0  # response packets sent back
    bytes: int = 0  # bytes of response packets
    capped: int = 0  # answered with fewer messages than asked (request cap or rate limit)
    beyond_end: int = 0  # asked only for messages not published yet: no answer
    wrong_session: int = 0
    rate_limited_source: int = 0  # the source had used up its messages
    rate_limited_total: int = 0  # all sources together had used up theirs
    malformed: dict[str, int] = field(default_factory=dict)  # by defect name

    @property
    def refused(self) -> int:
        return (
            self.wrong_session
            + self.rate_limited_source
            + self.rate_limited_total
            + sum(self.malformed.values())
        )


class _Bucket:
    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def refill(self, now: float) -> float:
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now
        return self.tokens


class Rerequests:
    """Answers MoldUDP64 requests for a session from its journal, and for each session added
    (:meth:`add`) from its own: an exchange's channels, told apart by the session a request
    names. The limits are the server's: a source has one bucket, whatever sessions it asks."""

    def __init__(self, journal: Journal, limits: RerequestLimits | None = None) -> None:
        self._journals = {journal.session: journal}
        self.limits = limits if limits is not None else RerequestLimits()
        self.counters = RerequestCounters()
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._total: _Bucket | None = None
        cap = self.limits.max_messages
        self._starts = np.empty(cap, dtype=np.int64)
        self._counts = np.empty(cap, dtype=np.int64)

    def add(self, journal: Journal) -> None:
        """Answer requests for ``journal``'s session too."""
        if journal.session in self._journals:
            raise ValueError(f"session {journal.session!r} is served already")
        self._journals[journal.session] = journal

    def remove(self, journal: Journal) -> None:
        """No longer answer for ``journal``'s session (a newer one replaced it)."""
        if self._journals.get(journal.session) is journal:
            del self._journals[journal.session]

    def handle(self, datagram: bytes, source: tuple[str, int], now: float) -> list[bytes]:
        """The packets that answer ``datagram`` from ``source``, to be sent back to it unicast."""
        counters = self.counters
        counters.requests += 1
        try:
            request = decode_request(datagram)
        except MalformedPacket as exc:
            name = exc.defect.name.lower()
            counters.malformed[name] = counters.malformed.get(name, 0) + 1
            return []
        journal = self._journals.get(request.session)
        if journal is None:
            counters.wrong_session += 1
            return []
        available = len(journal) - request.sequence + 1
        if available <= 0:
            counters.beyond_end += 1
            return []
        wanted = min(request.count, available, self.limits.max_messages)
        total = self._total_bucket(now)
        if total.refill(now) < 1:
            counters.rate_limited_total += 1
            return []
        bucket = self._bucket(source[0], now)
        if bucket.refill(now) < 1:
            counters.rate_limited_source += 1
            return []
        granted = min(wanted, int(bucket.tokens), int(total.tokens))
        messages, blocks = journal.blocks(request.sequence, granted)
        bucket.tokens -= messages
        total.tokens -= messages
        if messages < min(request.count, available):
            counters.capped += 1
        packets = self._packets(journal.session, request.sequence, blocks)
        counters.answered += 1
        counters.messages += messages
        counters.packets += len(packets)
        counters.bytes += sum(map(len, packets))
        return packets

    def _packets(self, session: bytes, sequence: int, blocks: bytes) -> list[bytes]:
        limit = self.limits.max_packet - HEADER_LEN
        found, consumed = pack_runs(as_array(blocks), limit, self._starts, self._counts)
        cuts = [*self._starts[:found].tolist(), consumed]
        out = []
        for k, count in enumerate(self._counts[:found].tolist()):
            out.append(encode_blocks(session, sequence, count, blocks[cuts[k] : cuts[k + 1]]))
            sequence += count
        return out

    def _total_bucket(self, now: float) -> _Bucket:
        if self._total is None:
            self._total = _Bucket(self.limits.total_rate, self.limits.total_burst, now)
        return self._total

    def _bucket(self, address: str, now: float) -> _Bucket:
        bucket = self._sources.get(address)
        if bucket is not None:
            self._sources.move_to_end(address)
            return bucket
        if len(self._sources) >= self.limits.max_sources:
            # Forgetting a source hands it a full bucket again; forget the one idle longest.
            self._sources.popitem(last=False)
        bucket = _Bucket(self.limits.source_rate, self.limits.source_burst, now)
        self._sources[address] = bucket
        return bucket
