"""Arbitration of line A and line B into one in-order stream, with gaps tracked exactly.

Sans-I/O, in the shape of aioquic's connection: the feed handler hands in each packet's header
fields and block stream with ``now``; the sequencer keeps the first copy of every sequence number,
holds back what arrives early, records each gap with when and by whom it was seen, and gives,
one at a time from :meth:`next_event`, in-order :class:`Batch` es (with :class:`GapLost` markers
and session markers in stream position), then what it noticed on the way (repairs, suspects
decided).

State, all of it here:
- ``expected``: the next sequence number to deliver; everything below it has been delivered or
  reported lost.
- ``horizon``: one past the highest sequence number known to exist (from data or heartbeats).
- held packets: data in [expected, horizon) that arrived early, keyed by first sequence number.
- ``gaps``: the ranges in [expected, horizon) that nobody has sent us yet, sorted, disjoint.
- a suspect: one packet (or heartbeat) more than ``max_jump`` past the horizon, set aside until a
  second agrees with it; never dropped unsaid (see :meth:`Sequencer._set_aside`).
- ``joining``: one that may join a session under way from a snapshot has heard a session but
  not yet where its stream starts for us: at its first number (a packet there), or where a
  snapshot ends (:meth:`Sequencer.start_at`); nothing is delivered nor said until then.

A gap may be filled piecewise (from a line, a capped re-request, a replay); the :class:`GapRecord`
its pieces share decides when it is over and who finished it.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

from tickerplant.receive.events import (
    Batch,
    Delivery,
    Event,
    GapLost,
    GapRepaired,
    Marker,
    SessionEnded,
    SessionStarted,
    Source,
    SuspectDecided,
)
from tickerplant.receive.gaps import Gap, GapRecord, Suspect
from tickerplant.wire.blocks import offsets_of

Buffer = bytes | memoryview


# Early packets held back while a gap is repaired; past this, they are dropped and fetched again.
MAX_HELD_BYTES = 128 << 20
# How long a suspect waits for a second packet to agree before it is decided: above MoldUDP64's
# heartbeat interval, so that a line still carrying the stream has said where it is meanwhile.
SUSPECT_WAIT = 5.0


def _by_source() -> dict[Source, int]:
    return dict.fromkeys(Source, 0)


@dataclass(slots=True)
class SequencerCounters:
    duplicate_packets: int = 0
    duplicate_messages: int = 0  # copies of messages already had: arbitration at work
    foreign_packets: int = 0
    hold_overflow_packets: int = 0
    delivered: int = 0
    lost: int = 0  # messages given up, each reported by a GapLost
    gaps_seen: dict[Source, int] = field(default_factory=_by_source)  # by revealing source
    gaps_lost: dict[Source, int] = field(default_factory=_by_source)  # by revealing source
    suspect_packets: int = 0  # far beyond the horizon, awaiting a second packet to agree
    suspects_rejected: int = 0  # decided strays: the lines went on near the stream meanwhile
    suspects_accepted: int = 0  # decided real: nothing contradicted them (a capture's end, ...)


class Sequencer:
    def __init__(
        self,
        session: bytes | None = None,
        first_sequence: int = 1,
        max_held_bytes: int = MAX_HELD_BYTES,
        session_timeout: float = 5.0,
        max_jump: int = 1 << 20,
        suspect_wait: float = SUSPECT_WAIT,
        snapshot: bool = False,
    ) -> None:
        self.session = session
        self._snapshot = snapshot
        self.joining = False
        self._previous: bytes | None = None  # the session followed before the one joining
        self._pinned = session is not None
        self._first_sequence = first_sequence
        self.max_held_bytes = max_held_bytes
        self.session_timeout = session_timeout
        self.max_jump = max_jump
        self.suspect_wait = suspect_wait
        self.counters = SequencerCounters()
        self._out: list[tuple[int, int, Buffer] | Marker] = []
        self._events: list[Event] = []
        self._ready: deque[Delivery | Event] = deque()  # drained from the two, in that order
        self._reset(first_sequence)

    def _reset(self, first_sequence: int) -> None:
        self.expected = first_sequence
        self.horizon = first_sequence
        self.gaps: list[Gap] = []
        self._held: dict[int, tuple[int, bytes | GapLost]] = {}
        self._heap: list[int] = []
        self.held_bytes = 0
        self.ended_at: int | None = None  # next sequence announced by end of session
        self._end_reported = False
        self._last_heard = float("-inf")
        self.suspect: Suspect | None = None

    # ---- inputs -------------------------------------------------------------------------------

    def accepts(self, session: bytes, now: float) -> bool:
        """Whether a packet of ``session`` belongs to the stream; may switch to a new session.

        An unpinned sequencer adopts the first session it hears, and moves to a different one only
        once the current one has ended or fallen silent for ``session_timeout``; anything else is
        a foreign session's packet, counted and ignored.
        """
        if session == self.session:
            self._last_heard = now
            return True
        if self.session is None:
            self._start_session(session, now)
            return True
        silent = now - self._last_heard > self.session_timeout
        if not self._pinned and (self.ended_at is not None or silent):
            self._abandon_outstanding(now)
            self._start_session(session, now)
            return True
        self.counters.foreign_packets += 1
        return False

    def heard(self, now: float) -> None:
        """Packets of the current session arrived (callers that checked the session themselves)."""
        self._last_heard = now

    def on_packet(
        self, source: Source, sequence: int, count: int, blocks: Buffer, now: float
    ) -> None:
        """A run of ``count`` messages starting at ``sequence`` (its session already accepted).

        ``blocks`` may be a view of a receive buffer: what is held back is copied, and what is
        delivered must stay unchanged until the next :meth:`next_event`, which copies it out.
        """
        c = self.counters
        end = sequence + count
        expected = self.expected
        if self.joining and sequence == expected:
            self.start_at(expected, now)  # heard from its first number: nothing to join
        if sequence == expected and not self._held and not self.gaps and self.suspect is None:
            # The steady state: in order, nothing outstanding.
            self._out.append((sequence, count, blocks))
            self.expected = end
            if end > self.horizon:
                self.horizon = end
            c.delivered += count
            return
        if sequence > self.horizon + self.max_jump:
            if self._set_aside(Suspect(source, sequence, count, bytes(blocks), now), now):
                return
            expected = self.expected
        elif self.suspect is not None and source.is_line:
            self.suspect.contradicted = True
        if end <= expected:
            c.duplicate_packets += 1
            c.duplicate_messages += count
            return
        if sequence < expected:
            blocks = _skip(blocks, expected - sequence)
            c.duplicate_messages += expected - sequence
            count -= expected - sequence
            sequence = expected
        if sequence != self.expected and self.held_bytes + len(blocks) > self.max_held_bytes:
            # Order within bounded memory: the packet goes, its range stays (or becomes) missing
            # and recovery fetches it once the head of the stream has moved on.
            c.hold_overflow_packets += 1
            self._reveal(end, source, now)
            return
        if sequence >= self.horizon:
            self._reveal(sequence, source, now)
            self.horizon = end
        else:
            filled = self._fill(sequence, end, source, now)
            if end > self.horizon:  # the tail is news even if the head was a duplicate
                self.horizon = end
            elif not filled:
                c.duplicate_packets += 1
                c.duplicate_messages += count
                return
        if sequence == self.expected:
            self._deliver(sequence, count, blocks)
            self._drain_held()
        else:
            self._hold(sequence, count, blocks)

    def on_heartbeat(self, source: Source, next_sequence: int, now: float) -> None:
        """A heartbeat (or end of session) says messages up to ``next_sequence`` exist."""
        if next_sequence > self.horizon + self.max_jump:
            if self._set_aside(Suspect(source, next_sequence, -1, b"", now), now):
                return
        elif self.suspect is not None and source.is_line:
            self.suspect.contradicted = True
        self._reveal(next_sequence, source, now)
        self._check_end()

    def on_end_of_session(self, source: Source, next_sequence: int, now: float) -> None:
        if next_sequence > self.horizon + self.max_jump:
            suspect = Suspect(source, next_sequence, -1, b"", now, end_of_session=True)
            if self._set_aside(suspect, now):
                return
        self.ended_at = next_sequence
        if self.joining and next_sequence <= self.expected:
            self.start_at(self.expected, now)  # an empty session: it starts and ends
        self.on_heartbeat(source, next_sequence, now)
        if self.suspect is not None:  # the session is over where it was: nothing jumped
            self.decide_suspect(now)

    def start_at(self, first: int, now: float) -> None:
        """A session being joined starts for us at ``first`` (what came before, a snapshot
        holds): its gaps before are closed, neither repaired nor lost, what is held before let
        go of, and its gaps after opened now (nobody worked on them meanwhile)."""
        if not self.joining or self.session is None:
            return
        self.joining = False
        self._out.append(SessionStarted(self.session, self._previous,
                                        first if first != self._first_sequence else None))
        gaps, self.gaps, opened = self.gaps, [], set()
        for gap in gaps:
            if gap.end > first:
                record = gap.record  # (each still counted once, as seen and as repaired)
                if id(record) not in opened:
                    opened.add(id(record))
                    record.start, record.opened_at, record.pieces = max(record.start, first), now, 0
                record.pieces += 1
                self.gaps.append(Gap(max(gap.start, first), gap.end, record))
        if first <= self.expected:
            return
        held, self._held, self._heap, self.held_bytes = self._held, {}, [], 0
        self.expected = first
        self.horizon = max(self.horizon, first)
        for start, (count, blocks) in held.items():  # (nothing given up before it starts)
            if start + count > first and isinstance(blocks, bytes):
                skip = max(first - start, 0)
                self._hold(start + skip, count - skip, _skip(blocks, skip) if skip else blocks)
        self._drain_held()

    def decide_suspect(self, now: float) -> None:
        """Decide the suspect set aside, if any, now: rejected (counted, told with its numbers)
        if a line was heard near the stream since it came, else taken as the stream's own (the
        range before it revealed, repaired or reported lost as any gap). Called when it has
        waited ``suspect_wait``, when the session ends, and when the input ends (a capture)."""
        suspect, self.suspect = self.suspect, None
        if suspect is None:
            return
        accepted = not suspect.contradicted
        if accepted:
            self.counters.suspects_accepted += 1
        else:
            self.counters.suspects_rejected += 1
        self._events.append(SuspectDecided(suspect.source, suspect.sequence, suspect.count,
                                          accepted, now - suspect.at))  # fmt: skip
        if accepted:
            self._admit(suspect, now)

    def give_up(self, gap: Gap, now: float) -> None:
        """Recovery has run out of means: report [start, end) lost, in stream order, and go on."""
        self.gaps.remove(gap)
        record = gap.record
        if not record.lost:
            self.counters.gaps_lost[record.revealed_by] += 1
        record.lost = True
        lost = GapLost(gap.start, gap.end, record.revealed_by, now - record.opened_at)
        if gap.start not in self._held:
            heapq.heappush(self._heap, gap.start)
        self._held[gap.start] = (gap.size, lost)
        self.counters.lost += gap.size
        self._piece_done(record, None, now)
        self._drain_held()

    # ---- outputs ------------------------------------------------------------------------------

    def next_event(self) -> Delivery | Event | None:
        """The oldest output not yet taken (None: none until the next input): what was
        delivered, in stream order (batches of messages, each run of contiguous pieces joined
        into one; lost gaps; the session markers between them), then the repairs and suspects
        decided meanwhile."""
        if not self._ready:
            self._ready.extend(self._batches())
            self._out = []
            self._ready.extend(self._events)
            self._events = []
        return self._ready.popleft() if self._ready else None

    def _batches(self) -> list[Delivery]:
        out: list[Delivery] = []
        run: list[Buffer] = []
        first = count = 0
        for item in self._out:
            if not isinstance(item, tuple) or (run and item[0] != first + count):
                if run:
                    out.append(Batch(first, count, b"".join(run)))
                    run = []
                if not isinstance(item, tuple):
                    out.append(item)
                    continue
            if not run:
                first, count = item[0], 0
            run.append(item[2])
            count += item[1]
        if run:
            out.append(Batch(first, count, b"".join(run)))
        return out

    def get_timer(self) -> float | None:
        """When the suspect set aside is due to be decided (None: there is none)."""
        return None if self.suspect is None else self.suspect.at + self.suspect_wait

    def handle_timer(self, now: float) -> None:
        timer = self.get_timer()
        if timer is not None and now >= timer:
            self.decide_suspect(now)

    @property
    def outstanding(self) -> int:
        """Messages known to exist but not yet delivered (held plus missing)."""
        return self.horizon - self.expected

    # ---- internals ----------------------------------------------------------------------------

    def _start_session(self, session: bytes, now: float) -> None:
        if self._snapshot:
            # Said once it is known where its stream starts for us (start_at), as following on
            # from the last session said to have started.
            if not self.joining:
                self._previous = self.session
            self.joining = True
        else:
            self._out.append(SessionStarted(session, self.session))
        self.session = session
        self._reset(self._first_sequence)
        self._last_heard = now

    def _abandon_outstanding(self, now: float) -> None:
        """A session that ends with gaps still open loses them, and says so (one never joined
        was never started for the consumer: nothing of it is said)."""
        if self.joining:
            return
        self.decide_suspect(now)
        for gap in list(self.gaps):
            self.give_up(gap, now)

    def _reveal(self, end: int, source: Source, now: float) -> None:
        """Messages below ``end`` exist: whatever lies between the horizon and ``end`` is missing.

        A gap still ending at the horizon grows instead of a new one opening: the overflowing
        packets of one stall, or heartbeats during one outage, are one gap, not thousands.
        """
        if end <= self.horizon:
            return
        last = self.gaps[-1] if self.gaps else None
        if last is not None and last.end == self.horizon:
            last.end = end
            last.record.end = max(last.record.end, end)
        else:
            self.counters.gaps_seen[source] += 1
            self.gaps.append(Gap(self.horizon, end, GapRecord(self.horizon, end, now, source)))
        self.horizon = end

    def _set_aside(self, suspect: Suspect, now: float) -> bool:
        """Whether a packet this far ahead is set aside (True) or goes on (False).

        One stray datagram (a stale publisher, a corrupted header, a spoof) must not move the
        horizon to 2**62 and turn the real stream into duplicates once that gap is given up. A
        real jump (late join, long outage) is confirmed by the next packet, which admits the one
        set aside with it. A second far packet that does not agree decides the first (see
        :meth:`decide_suspect`) and is then weighed against what that left.
        """
        pending = self.suspect
        if pending is not None and abs(suspect.sequence - pending.sequence) <= self.max_jump:
            self.suspect = None
            self._admit(pending, now)
            return False
        if pending is not None:
            self.decide_suspect(now)
            if suspect.sequence <= self.horizon + self.max_jump:
                return False
        self.suspect = suspect
        self.counters.suspect_packets += 1
        return True

    def _admit(self, suspect: Suspect, now: float) -> None:
        """The suspect is the stream's: everything between the horizon and it is missing."""
        self._reveal(suspect.sequence, suspect.source, now)
        if suspect.end_of_session:
            self.on_end_of_session(suspect.source, suspect.sequence, now)
        elif suspect.count < 0:
            self.on_heartbeat(suspect.source, suspect.sequence, now)
        else:
            self.on_packet(suspect.source, suspect.sequence, suspect.count, suspect.blocks, now)

    def _fill(self, start: int, end: int, source: Source, now: float) -> bool:
        """Remove [start, end) from the gaps; False if it filled nothing (a duplicate)."""
        filled = False
        gaps = self.gaps
        i = 0
        while i < len(gaps):
            g = gaps[i]
            if g.start >= end:
                break
            if g.end <= start:
                i += 1
                continue
            filled = True
            if start <= g.start and end >= g.end:
                del gaps[i]
                self._piece_done(g.record, source, now)
                continue
            if start <= g.start:
                g.start = end
            elif end >= g.end:
                g.end = start
            else:
                tail = Gap(end, g.end, g.record, g.attempts, g.next_try, g.requested_end,
                           g.replay_failed_at)
                g.record.pieces += 1
                g.end = start
                gaps.insert(i + 1, tail)
                break
            i += 1
        return filled

    def _piece_done(self, record: GapRecord, source: Source | None, now: float) -> None:
        """One piece of a gap is over; the last piece's source repaired it (None: lost)."""
        record.pieces -= 1
        if record.pieces or record.lost or source is None:
            return  # a lost gap is reported by its GapLost marker, in stream position
        age = now - record.opened_at
        self._events.append(GapRepaired(record.start, record.end, record.revealed_by, source, age))

    def _hold(self, sequence: int, count: int, blocks: Buffer) -> None:
        previous = self._held.get(sequence)
        if previous is not None:
            if previous[0] >= count:
                return
            if isinstance(previous[1], bytes):
                self.held_bytes -= len(previous[1])
        else:
            heapq.heappush(self._heap, sequence)
        self._held[sequence] = (count, bytes(blocks))
        self.held_bytes += len(blocks)

    def _deliver(self, sequence: int, count: int, blocks: Buffer) -> None:
        self._out.append((sequence, count, blocks))
        self.expected = sequence + count
        self.counters.delivered += count

    def _drain_held(self) -> None:
        heap = self._heap
        held = self._held
        while heap and heap[0] <= self.expected:
            start = heapq.heappop(heap)
            count, blocks = held.pop(start)
            if isinstance(blocks, GapLost):
                self._out.append(blocks)
                self.expected = max(self.expected, blocks.end)
                continue
            self.held_bytes -= len(blocks)
            end = start + count
            if end <= self.expected:
                self.counters.duplicate_messages += count  # covered by data delivered meanwhile
                continue
            if start < self.expected:
                self.counters.duplicate_messages += self.expected - start
                blocks = _skip(blocks, self.expected - start)
                count = end - self.expected
                start = self.expected
            self._deliver(start, count, blocks)
        self._check_end()

    def _check_end(self) -> None:
        if (
            self.ended_at is not None
            and not self._end_reported
            and not self.joining
            and self.expected >= self.ended_at
            and self.session is not None
        ):
            self._end_reported = True
            self._out.append(SessionEnded(self.session, self.ended_at))


def _skip(blocks: Buffer, messages: int) -> bytes:
    """The block stream without its first ``messages`` messages."""
    offsets, _ = offsets_of(blocks)
    return bytes(blocks[int(offsets[messages]) :]) if messages < len(offsets) else b""
