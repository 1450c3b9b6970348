"""Sequencer and recovery driven by scripted packets and a fake clock: no sockets, no sleeps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tickerplant.receive.events import (
    Batch,
    GapLost,
    GapRepaired,
    SessionEnded,
    SessionStarted,
    Source,
    SuspectDecided,
)
from tickerplant.receive.recovery import (
    Action,
    CancelReplay,
    Recovery,
    RecoveryConfig,
    Replay,
    Rerequest,
)
from tickerplant.receive.sequencer import SUSPECT_WAIT, Sequencer
from tickerplant.wire.blocks import iter_messages, join_messages

A, B, RR, RP = Source.LINE_A, Source.LINE_B, Source.REREQUEST, Source.REPLAY
S1 = b"SESSION001"


def msgs(first: int, count: int) -> bytes:
    return join_messages([b"m%d" % s for s in range(first, first + count)])


def due(rec: Recovery, now: float) -> list[Action]:
    """What recovery finds due at ``now``."""
    rec.handle_timer(now)
    return list(iter(rec.next_event, None))


def drained(seq: Sequencer) -> list[object]:
    return list(iter(seq.next_event, None))


class Plant:
    """The sequencer with what it delivered, checked as it goes."""

    def __init__(self, **kw: object) -> None:
        self.seq = Sequencer(**kw)  # type: ignore[arg-type]
        self.delivered: list[int] = []
        self.lost: list[tuple[int, int]] = []
        self.events: list[object] = []

    def packet(self, source: Source, first: int, count: int, now: float = 0.0) -> None:
        assert self.seq.accepts(S1, now)
        self.seq.on_packet(source, first, count, msgs(first, count), now)
        self.collect()

    def collect(self) -> None:
        while (item := self.seq.next_event()) is not None:
            if isinstance(item, Batch):
                got = [int(m[1:]) for m in iter_messages(item.blocks)]
                assert got == list(range(item.first, item.end))
                assert item.first == self.next_expected()
                self.delivered += got
            elif isinstance(item, GapLost):
                self.lost.append((item.start, item.end))
                assert item.start == self.next_expected()
                self.delivered += [-1] * (item.end - item.start)
            else:
                self.events.append(item)  # session markers in stream position, then the rest

    def next_expected(self) -> int:
        return len(self.delivered) + 1

    def repaired(self) -> list[GapRepaired]:
        return [e for e in self.events if isinstance(e, GapRepaired)]


def test_in_order_one_line() -> None:
    p = Plant()
    for first in (1, 4, 7):
        p.packet(A, first, 3)
    assert p.delivered == list(range(1, 10))
    assert sum(p.seq.counters.gaps_seen.values()) == 0


def test_duplicates_from_the_other_line_are_dropped() -> None:
    p = Plant()
    for first in (1, 4, 7):
        p.packet(A, first, 3)
        p.packet(B, first, 3)
    assert p.delivered == list(range(1, 10))
    assert p.seq.counters.duplicate_packets == 3
    assert p.seq.counters.duplicate_messages == 9


def test_reorder_is_held_back_and_delivered_in_order() -> None:
    p = Plant()
    p.packet(A, 7, 3, now=1.0)
    p.packet(A, 4, 3, now=1.001)
    assert p.delivered == []
    p.packet(A, 1, 3, now=1.002)
    assert p.delivered == list(range(1, 10))
    (gap,) = p.repaired()
    assert (gap.start, gap.end, gap.revealed_by, gap.repaired_by) == (1, 7, A, A)
    assert abs(gap.latency - 0.002) < 1e-9


def test_loss_on_one_line_is_repaired_by_the_other() -> None:
    p = Plant()
    p.packet(A, 1, 3, 0.0)
    p.packet(A, 7, 3, 0.010)  # line A lost 4..6
    p.packet(B, 1, 3, 0.0101)
    p.packet(B, 4, 3, 0.0102)
    p.packet(B, 7, 3, 0.0103)
    assert p.delivered == list(range(1, 10))
    (gap,) = p.repaired()
    assert (gap.start, gap.end, gap.revealed_by, gap.repaired_by) == (4, 7, A, B)


def test_loss_on_both_lines_is_rerequested() -> None:
    p = Plant()
    rec = Recovery(p.seq, RecoveryConfig(line_wait=0.001))
    p.packet(A, 1, 3, 0.0)
    p.packet(A, 7, 3, 0.010)
    p.packet(B, 7, 3, 0.0101)
    assert due(rec, 0.0105) == []  # still within the other line's window
    assert rec.get_timer() == 0.011
    assert due(rec, 0.011) == [Rerequest(4, 3)]
    p.packet(RR, 4, 3, 0.013)
    assert p.delivered == list(range(1, 10))
    (gap,) = p.repaired()
    assert (gap.repaired_by, round(gap.latency, 6)) == (RR, 0.003)
    assert due(rec, 0.02) == [] and rec.get_timer() is None


def test_gap_revealed_by_heartbeat_only() -> None:
    p = Plant()
    rec = Recovery(p.seq)
    p.packet(A, 1, 3, 0.0)
    p.seq.on_heartbeat(B, 8, 1.0)  # messages 4..7 exist; no line carried them
    assert [(g.start, g.end) for g in p.seq.gaps] == [(4, 8)]
    assert due(rec, 1.01) == [Rerequest(4, 4)]
    p.packet(RR, 4, 4, 1.02)
    assert p.delivered == list(range(1, 8))
    assert p.repaired()[0].revealed_by == B


def test_retries_back_off_then_gap_is_lost_and_stream_goes_on() -> None:
    p = Plant()
    cfg = RecoveryConfig(line_wait=0.001, rerequest_timeout=0.01, rerequest_attempts=3,
                         replay=False, give_up_after=1.0)
    rec = Recovery(p.seq, cfg)
    p.packet(A, 1, 3, 0.0)
    p.packet(A, 7, 3, 0.0)
    sent = []
    now = 0.0
    while now < 2.0:
        sent += [(round(now, 4), a) for a in due(rec, now)]
        p.collect()
        if rec.get_timer() is None:
            break
        now = rec.get_timer()
    assert sent == [(0.001, Rerequest(4, 3)), (0.011, Rerequest(4, 3)), (0.031, Rerequest(4, 3))]
    assert p.lost == [(4, 7)]
    assert p.delivered == [1, 2, 3, -1, -1, -1, 7, 8, 9]
    p.packet(A, 10, 2, 2.0)
    assert p.delivered[-2:] == [10, 11]
    # A late copy of a lost range is a duplicate, never a second delivery.
    p.packet(RR, 4, 3, 2.1)
    assert len(p.delivered) == 11 and p.seq.counters.lost == 3


def test_large_gap_and_late_join_go_to_replay() -> None:
    p = Plant()
    rec = Recovery(p.seq, RecoveryConfig(replay_threshold=100))
    p.packet(A, 1001, 10, 5.0)  # joined late: 1..1000 went by before we started
    actions = due(rec, 5.01)
    assert actions == [Replay(1, 1001)]
    assert due(rec, 5.02) == []  # one replay at a time
    p.packet(RP, 1, 600, 5.1)
    p.packet(RP, 601, 410, 5.2)  # overlaps held 1001..1010: trimmed, not doubled
    rec.replay_finished(True, 5.2)
    assert p.delivered == list(range(1, 1011))
    assert p.repaired()[0].repaired_by == RP


def test_failed_replay_is_retried_then_lost() -> None:
    p = Plant()
    cfg = RecoveryConfig(rerequest=False, replay_threshold=10, replay_retry=0.5, give_up_after=2)
    rec = Recovery(p.seq, cfg)
    p.packet(A, 100, 1, 0.0)
    assert due(rec, 0.01) == [Replay(1, 100)]
    rec.replay_finished(False, 0.2)
    assert due(rec, 0.3) == [] and rec.get_timer() == 0.7
    assert due(rec, 0.7) == [Replay(1, 100)]
    rec.replay_finished(False, 0.8)
    due(rec, 2.0)
    p.collect()
    assert p.lost == [(1, 100)] and p.delivered[-1] == 100


def test_answers_in_flight_are_not_asked_again_and_the_next_part_follows_at_once() -> None:
    p = Plant()
    rec = Recovery(p.seq, RecoveryConfig(max_request=1000, rerequest_timeout=0.01))
    p.packet(A, 1, 1, 0.0)
    p.packet(A, 3002, 1, 0.0)
    assert due(rec, 0.002) == [Rerequest(2, 1000)]
    for first in range(2, 1002, 40):  # the answer arrives as many packets
        p.packet(RR, first, min(40, 1002 - first), 0.003)
        if first < 962:
            assert due(rec, 0.003) == []  # the rest of that answer is on its way: no storm
    # all of it came: the next part at once
    assert due(rec, 0.004) == [Rerequest(1002, 1000)]


def test_a_capped_answer_is_completed_after_the_timeout() -> None:
    p = Plant()
    rec = Recovery(p.seq, RecoveryConfig(max_request=1000, rerequest_timeout=0.01))
    p.packet(A, 1, 1, 0.0)
    p.packet(A, 3002, 1, 0.0)
    assert due(rec, 0.002) == [Rerequest(2, 1000)]
    p.packet(RR, 2, 400, 0.003)  # the server capped its answer at 400
    assert due(rec, 0.004) == []
    assert due(rec, 0.012) == [Rerequest(402, 1000)]


def test_while_replay_is_failing_large_gaps_fall_back_to_rerequests() -> None:
    p = Plant()
    rec = Recovery(p.seq, RecoveryConfig(replay_threshold=10, replay_retry=0.5))
    p.packet(A, 100, 1, 0.0)
    assert due(rec, 0.01) == [Replay(1, 100)]
    rec.replay_finished(False, 0.2)
    assert due(rec, 0.3) == [Rerequest(1, 99)]


def test_a_gap_a_failed_replay_held_past_give_up_after_falls_back_to_re_requests() -> None:
    p = Plant()
    cfg = RecoveryConfig(replay_threshold=10, replay_retry=0.5, give_up_after=2, max_request=50)
    rec = Recovery(p.seq, cfg)
    p.packet(A, 100, 1, 0.0)
    assert due(rec, 0.01) == [Replay(1, 100)]
    rec.replay_finished(False, 2.5)  # stalled or cut after give_up_after had passed
    assert due(rec, 2.6) == [Rerequest(1, 50)]  # not given up: re-requested
    p.packet(RR, 1, 50, 4.0)  # answered whole
    assert due(rec, 4.0) == [Rerequest(51, 49)]  # the next part, though replay is usable again
    due(rec, 5.99)
    p.collect()
    assert p.lost == []  # its give-up clock started again with the answer
    due(rec, 6.0)  # unanswered since: given up give_up_after after the last answer
    p.collect()
    assert p.lost == [(51, 100)] and p.delivered[:50] == list(range(1, 51))


def test_large_gaps_are_rerequested_when_there_is_no_replay() -> None:
    p = Plant()
    rec = Recovery(p.seq, RecoveryConfig(replay=False, replay_threshold=100, max_request=500))
    p.packet(A, 1, 1, 0.0)
    p.packet(A, 30_002, 1, 0.0)
    assert due(rec, 0.002) == [Rerequest(2, 500)]


def test_one_stray_far_ahead_cannot_turn_the_stream_into_duplicates() -> None:
    p = Plant(max_jump=1000)
    rec = Recovery(p.seq, RecoveryConfig(give_up_after=1.0))
    p.packet(A, 1, 10, 0.0)
    p.packet(B, 2**62, 1, 0.1)  # a stray: set aside, the horizon stays
    assert p.seq.horizon == 11 and p.seq.counters.suspect_packets == 1
    assert p.seq.get_timer() == 0.1 + SUSPECT_WAIT
    for first in range(11, 100, 10):
        p.packet(A, first, 10, 0.2)
    due(rec, 5.0)
    p.seq.handle_timer(0.1 + SUSPECT_WAIT)  # the lines went on where they were: a stray
    p.collect()
    assert p.delivered == list(range(1, 101)) and p.lost == []
    assert [e for e in p.events if isinstance(e, SuspectDecided)] == [
        SuspectDecided(B, 2**62, 1, False, SUSPECT_WAIT)]
    assert p.seq.counters.suspects_rejected == 1 and p.seq.get_timer() is None
    # A real jump is confirmed by the next packet, which admits the one set aside with it.
    p.packet(A, 10_000, 10, 6.0)
    p.packet(A, 10_010, 10, 6.0)
    assert [(g.start, g.end) for g in p.seq.gaps] == [(101, 10_000)]
    assert p.seq.horizon == 10_020 and p.seq.counters.suspects_accepted == 0
    due(rec, 7.5)
    p.collect()
    assert p.lost == [(101, 10_000)] and p.delivered[-20:] == list(range(10_000, 10_020))


def test_a_stray_with_nothing_after_it_is_told_when_decided() -> None:
    """Two packets millions apart and then nothing (the excerpt of a session a capture holds):
    when it has waited suspect_wait, or the input ends, the far packet is the stream's."""
    for decide in ("timer", "end"):
        p = Plant(max_jump=1000)
        p.packet(A, 1, 1, 0.0)
        p.packet(A, 5_000_000, 38, 38.0)
        assert p.delivered == [1] and p.seq.suspect is not None
        if decide == "timer":
            p.seq.handle_timer(38.0 + SUSPECT_WAIT - 0.001)
            assert p.seq.suspect is not None  # not due yet
            p.seq.handle_timer(38.0 + SUSPECT_WAIT)
        else:
            p.seq.decide_suspect(38.5)
        assert p.seq.counters.suspects_accepted == 1
        assert [(g.start, g.end) for g in p.seq.gaps] == [(2, 5_000_000)]
        p.seq.give_up(p.seq.gaps[0], 50.0)
        p.collect()
        assert p.lost == [(2, 5_000_000)] and p.delivered[-38:] == list(range(5_000_000,
                                                                             5_000_038))


def test_far_packets_that_disagree_each_decide_the_one_before() -> None:
    """An excerpt of three far-apart packets: each later one decides the one before it (nothing
    came between them near the stream, so it is the stream's), and the last the input's end."""
    p = Plant(max_jump=1000)
    p.packet(A, 1, 1, 0.0)
    p.packet(A, 1_000_000, 2, 1.0)
    p.packet(A, 3_000_000, 3, 2.0)
    assert p.seq.counters.suspects_accepted == 1 and p.seq.suspect is not None
    p.seq.decide_suspect(3.0)
    for _ in range(10):  # (a bound: each is given up once)
        if p.seq.gaps:
            p.seq.give_up(p.seq.gaps[0], 10.0)
    assert not p.seq.gaps, f"gaps given up stay open: {p.seq.gaps}"
    p.collect()
    assert p.lost == [(2, 1_000_000), (1_000_002, 3_000_000)]
    assert [d for d in p.delivered if d > 0] == [1, 1_000_000, 1_000_001, *range(3_000_000,
                                                                               3_000_003)]


def test_a_far_heartbeat_is_weighed_as_a_packet_is() -> None:
    p = Plant(max_jump=1000)
    p.packet(A, 1, 5, 0.0)
    p.seq.on_heartbeat(B, 2**50, 0.5)  # a stray heartbeat: the horizon stays
    assert p.seq.horizon == 6 and p.seq.gaps == []
    p.seq.on_heartbeat(A, 6, 1.0)  # line A says where the stream is
    p.seq.handle_timer(0.5 + SUSPECT_WAIT)
    assert p.seq.counters.suspects_rejected == 1 and p.seq.horizon == 6
    # The session ends where the stream is: a stray pending then is decided at once.
    p.seq.on_heartbeat(B, 2**51, 6.0)
    p.seq.on_end_of_session(A, 6, 6.1)
    p.collect()
    assert p.seq.counters.suspects_rejected == 2 and p.seq.suspect is None
    assert any(isinstance(e, SessionEnded) for e in p.events)


def test_overflowing_packets_of_one_stall_make_one_gap() -> None:
    p = Plant(max_held_bytes=100)
    p.packet(A, 2, 1)  # 1 is missing: everything after is held back, then overflows
    for first in range(3, 2000, 5):
        p.packet(A, first, 5)
    assert p.seq.counters.hold_overflow_packets > 300
    assert len(p.seq.gaps) <= 2 and sum(p.seq.counters.gaps_seen.values()) <= 2


def test_partial_overlaps_are_trimmed() -> None:
    p = Plant()
    p.packet(A, 1, 5, 0.0)
    p.packet(A, 11, 5, 0.0)
    p.packet(RR, 4, 4, 0.001)  # 4..5 already delivered, 6..7 new
    p.packet(RR, 7, 6, 0.002)  # 7 again, 8..10 fill, 11..12 also in the held packet
    assert p.delivered == list(range(1, 16))
    assert p.seq.counters.duplicate_messages == 2 + 1 + 2


def test_hold_back_is_bounded_and_overflow_is_recovered() -> None:
    p = Plant(max_held_bytes=40)
    rec = Recovery(p.seq, RecoveryConfig(line_wait=0))
    p.packet(A, 1, 1)
    for first in range(3, 30, 3):
        p.packet(A, first, 3)
    assert p.seq.held_bytes <= 40 and p.seq.counters.hold_overflow_packets > 0
    asked = due(rec, 0.001)
    assert asked[0] == Rerequest(2, 1)
    for action in asked:
        assert isinstance(action, Rerequest)
        p.packet(RR, action.sequence, action.count, 0.002)
    while p.seq.gaps:
        for action in due(rec, 0.003):
            assert isinstance(action, Rerequest)
            p.packet(RR, action.sequence, action.count, 0.003)
    assert p.delivered == list(range(1, 30))


def test_session_change_and_foreign_sessions() -> None:
    p = Plant()
    p.packet(A, 1, 3, 0.0)
    assert not p.seq.accepts(b"OTHER00001", 0.1)  # someone else's session on our group
    assert p.seq.counters.foreign_packets == 1
    p.seq.on_end_of_session(A, 4, 0.2)
    p.collect()
    assert [e for e in p.events if isinstance(e, SessionEnded)] == [SessionEnded(S1, 4)]
    assert p.seq.accepts(b"SESSION002", 0.3)  # the old one ended: follow the new one
    p.seq.on_packet(A, 1, 2, msgs(1, 2), 0.3)
    marker, batch = drained(p.seq)  # the new session's start comes before its first batch
    assert marker == SessionStarted(b"SESSION002", S1)
    assert isinstance(batch, Batch) and batch.first == 1 and batch.count == 2
    starts = [e for e in p.events if isinstance(e, SessionStarted)]
    assert [s.session for s in starts] == [S1]


def test_silent_session_is_replaced_and_its_gaps_reported_lost() -> None:
    p = Plant(session_timeout=5.0)
    p.packet(A, 1, 1, 0.0)
    p.packet(A, 5, 1, 0.0)
    assert not p.seq.accepts(b"SESSION002", 4.0)
    assert p.seq.accepts(b"SESSION002", 6.0)
    lost = [i for i in drained(p.seq) if isinstance(i, GapLost)]
    assert [(g.start, g.end) for g in lost] == [(2, 5)]


@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=40),
    st.lists(st.sampled_from(["A", "B", "AB", "BA", "none"]), min_size=40, max_size=40),
    st.randoms(use_true_random=False),
)
def test_any_interleaving_of_two_lines_delivers_each_message_once_in_order(
    sizes: list[int], fate: list[str], rng: object
) -> None:
    packets = []
    first = 1
    for size in sizes:
        packets.append((first, size))
        first += size
    arrivals: list[tuple[Source, int, int]] = []
    for (f, n), how in zip(packets, fate, strict=False):
        arrivals += [(A if c == "A" else B, f, n) for c in how if c in "AB"]
    rng.shuffle(arrivals)  # type: ignore[attr-defined]
    p = Plant()
    rec = Recovery(p.seq, RecoveryConfig(line_wait=0.0))
    now = 0.0
    for source, f, n in arrivals:
        p.packet(source, f, n, now)
        now += 0.0001
    p.seq.on_heartbeat(A, first, now)
    for _ in range(200):  # the re-request server answers everything asked
        actions = due(rec, now)
        if not actions and not p.seq.gaps:
            break
        for action in actions:
            assert isinstance(action, Rerequest)
            p.packet(RR, action.sequence, action.count, now)
        now += 0.05
    assert p.delivered == list(range(1, first))
    c = p.seq.counters
    assert c.delivered == first - 1 and c.lost == 0


def test_a_silent_replay_is_cancelled_and_its_gap_given_up() -> None:
    p = Plant()
    cfg = RecoveryConfig(rerequest=False, replay_threshold=10, give_up_after=1.0, replay_stall=1.0)
    rec = Recovery(p.seq, cfg)
    p.packet(A, 100, 1, 0.0)
    assert due(rec, 0.01) == [Replay(1, 100)]
    rec.replay_progress(0.5)  # some progress, then silence
    assert due(rec, 1.2) == [] and rec.get_timer() == 1.5
    assert due(rec, 1.5) == [CancelReplay()]
    p.collect()
    assert p.lost == [(1, 100)]


@given(
    st.lists(
        st.tuples(st.sampled_from([A, B, RR, RP]), st.integers(1, 300), st.integers(1, 20)),
        max_size=120,
    ),
    st.lists(st.integers(1, 400), max_size=5),
)
def test_hostile_arrivals_never_break_order_or_repeat_a_message(
    arrivals: list[tuple[Source, int, int]], heartbeats: list[int]
) -> None:
    """Any mix of overlapping, repeated, far and stale runs (content true to its numbers)."""
    p = Plant(max_held_bytes=2000)
    rec = Recovery(p.seq, RecoveryConfig(give_up_after=0.5))
    now = 0.0
    for i, (source, first, count) in enumerate(arrivals):
        p.packet(source, first, count, now)
        if heartbeats and i % 7 == 0:
            p.seq.on_heartbeat(A, heartbeats[i % len(heartbeats)], now)
        due(rec, now)
        p.collect()  # checks each batch is contiguous with the last and true to its numbers
        now += 0.1
    delivered = [s for s in p.delivered if s != -1]
    assert delivered == sorted(set(delivered))
    assert p.seq.counters.delivered == len(delivered)


def test_gaps_are_given_up_in_stream_order_never_above_one_a_replay_covers() -> None:
    """A gap that expires above one under replay waits: it is repaired (here by a re-request
    answer that arrives later), and no GapLost lands inside data that was delivered."""
    p = Plant()
    rec = Recovery(p.seq, RecoveryConfig(replay_threshold=10, rerequest=False))
    p.packet(A, 20, 1, 0.0)  # joined late: [1, 20) to replay
    assert due(rec, 0.01) == [Replay(1, 20)]
    p.packet(A, 25, 5, 0.02)  # reveals [21, 25)
    due(rec, 3.0)  # past give_up_after for [21, 25), while the replay is still running
    assert p.lost == [] and [(g.start, g.end) for g in p.seq.gaps] == [(1, 20), (21, 25)]
    p.packet(RR, 15, 15, 3.1)
    p.packet(RP, 1, 14, 3.2)
    rec.replay_finished(True, 3.2)
    assert p.delivered == list(range(1, 30)) and p.lost == []
    assert p.seq.counters.lost == 0


def test_a_large_gap_above_a_running_replay_is_rerequested_meanwhile() -> None:
    p = Plant()
    rec = Recovery(p.seq, RecoveryConfig(replay_threshold=100))
    p.packet(A, 1001, 10, 0.0)
    assert due(rec, 0.01) == [Replay(1, 1001)]
    p.packet(A, 5001, 10, 0.5)  # an outage: [1011, 5001) is over the threshold
    assert due(rec, 0.51) == [Rerequest(1011, 1000)]  # the replay is busy below it
    p.packet(RR, 1011, 3990, 0.6)
    assert p.lost == [] and [(g.start, g.end) for g in p.seq.gaps] == [(1, 1001)]
    p.packet(RP, 1, 1000, 0.7)
    rec.replay_finished(True, 0.7)
    assert p.delivered == list(range(1, 5011))
