"""The feed session on scripted datagrams and a fake clock: no socket, no sleep.

Everything the feed handler decides is here: arbitration of the lines, repair by the other line,
by re-request and by replay, giving up, line health on exact timers, session changes, defects,
and the checks on what it delivers.
"""

from __future__ import annotations

from rich.console import Console

from tickerplant.endpoint import Endpoint
from tickerplant.latency import Latencies
from tickerplant.ops.dashboard import render
from tickerplant.receive.events import (
    Batch,
    GapLost,
    GapRepaired,
    LineState,
    LineStateChanged,
    Repair,
    SessionEnded,
    SessionStarted,
    Source,
    SuspectDecided,
)
from tickerplant.receive.feed import (
    FeedSession,
    FeedSessionConfig,
    ReplayCancel,
    ReplayStart,
    SnapshotStart,
)
from tickerplant.receive.recovery import RecoveryConfig
from tickerplant.receive.sequencer import SUSPECT_WAIT
from tickerplant.wire import moldudp64 as mold
from tickerplant.wire.blocks import iter_messages, join_messages

A, B, RR = Source.LINE_A, Source.LINE_B, Source.REREQUEST
S1 = mold.session_bytes("SESSION001")
S2 = mold.session_bytes("SESSION002")
LINE_A, LINE_B = Endpoint("239.192.99.1", 40001), Endpoint("239.192.99.2", 40002)
SERVICE = Endpoint("127.0.0.1", 40003)


def msgs(first: int, count: int) -> list[bytes]:
    return [b"m%d" % s for s in range(first, first + count)]


def packet(first: int, count: int, session: bytes = S1) -> bytes:
    return mold.encode_packet(session, first, msgs(first, count))


class Plant:
    """A feed session, what it put out, and the clock it was given."""

    def __init__(self, rerequest: bool = False, replay: bool = False, snapshot: bool = False,
                 **kw: object) -> None:  # fmt: skip
        config = FeedSessionConfig(**kw)  # type: ignore[arg-type]
        self.session = FeedSession(config, rerequest=rerequest, replay=replay, snapshot=snapshot)
        self.now = 0.0
        self.delivered: list[int] = []
        self.lost: list[tuple[int, int]] = []
        self.markers: list[object] = []
        self.events: list[object] = []
        self.requests: list[tuple[int, int]] = []
        self.replays: list[object] = []

    def send(self, source: Source, *datagrams: bytes, at: float | None = None) -> None:
        self.now = self.now if at is None else at
        buffer = mold.Datagrams.holding(list(datagrams))
        self.session.receive_datagrams(source, buffer, len(datagrams), self.now)
        self.collect()

    def tick(self, until: float) -> None:
        """Fire every timer due up to ``until``, each at its own moment."""
        while (at := self.session.get_timer()) is not None and at <= until:
            self.now = max(self.now, at)
            self.session.handle_timer(self.now)
            self.collect()
        self.now = until

    def collect(self) -> None:
        s = self.session
        while (item := s.next_event()) is not None:
            if isinstance(item, Batch):
                got = [int(m[1:]) for m in iter_messages(item.blocks)]
                assert got == list(range(item.first, item.end))
                self.delivered += got
            elif isinstance(item, ReplayStart | ReplayCancel | SnapshotStart):
                self.replays.append(item)
            elif isinstance(item, GapLost):
                self.lost.append((item.start, item.end))
            elif isinstance(item, SessionStarted | SessionEnded):
                self.markers.append(item)
            else:
                self.events.append(item)
        for datagram in s.datagrams_to_send():
            request = mold.decode_request(datagram)
            assert request.session == S1 or request.session == S2
            self.requests.append((request.sequence, request.count))

    def repaired(self) -> list[GapRepaired]:
        return [e for e in self.events if isinstance(e, GapRepaired)]


def test_a_packet_lost_on_line_a_is_repaired_by_line_b() -> None:
    p = Plant()
    p.send(A, packet(1, 2), packet(5, 3), at=1.0)  # 3..4 missing on A
    p.send(B, packet(1, 2), packet(3, 2), packet(5, 3), at=1.0002)
    assert p.delivered == list(range(1, 8)) and p.requests == []
    (repair,) = p.repaired()
    assert (repair.start, repair.end, repair.revealed_by, repair.repaired_by) == (3, 5, A, B)
    assert abs(repair.latency - 0.0002) < 1e-9
    figures = p.session.figures()
    assert figures["gaps_repaired"]["a"] == {"line": 1, "rerequest": 0, "replay": 0}
    assert figures["duplicate_messages"] == 2 + 3  # B's copies of what A had already brought
    assert figures["packets"] == {"a": 2, "b": 3, "rerequest": 0, "replay": 0}
    assert figures["repair_latency_seconds"]["line"]["count"] == 1


def test_lost_on_both_lines_is_re_requested_after_the_line_wait_and_repaired() -> None:
    p = Plant(rerequest=True, recovery=RecoveryConfig(line_wait=0.001))
    p.send(A, packet(1, 1), packet(4, 1), at=1.0)
    p.send(B, packet(1, 1), packet(4, 1), at=1.0001)
    assert p.requests == []  # the other line might still bring it
    assert p.session.get_timer() == 1.001
    p.tick(1.001)
    assert p.requests == [(2, 2)]
    p.send(RR, packet(2, 2), at=1.0015)
    assert p.delivered == [1, 2, 3, 4]
    (repair,) = p.repaired()
    assert repair.repaired_by is RR and repair.latency == 1.0015 - 1.0
    assert p.session.figures()["rerequests_sent"] == 1


def test_without_a_re_request_server_nothing_is_asked_and_the_gap_is_given_up_in_place() -> None:
    p = Plant(recovery=RecoveryConfig(give_up_after=0.5))
    p.send(A, packet(1, 1), packet(4, 2), at=1.0)
    p.tick(1.49)
    assert p.delivered == [1] and p.lost == [] and p.requests == []
    p.tick(1.5)
    assert p.lost == [(2, 4)] and p.delivered == [1, 4, 5]
    figures = p.session.figures()
    assert figures["lost_messages"] == 2 and figures["lost_ranges"] == [[2, 4]]
    assert figures["gaps_lost"]["a"] == 1 and figures["skipped_unreported"] == 0


def test_a_late_join_asks_for_a_replay_and_its_runs_repair_the_gap() -> None:
    p = Plant(replay=True, recovery=RecoveryConfig(replay_threshold=10))
    p.send(A, packet(1001, 1), at=5.0)
    p.tick(5.01)
    assert p.replays == [ReplayStart(S1, 1, 1001)]
    p.session.receive_replay(S2, 1, 10, join_messages(msgs(1, 10)), 5.1)  # another session's
    p.session.receive_replay(S1, 1, 500, join_messages(msgs(1, 500)), 5.2)
    p.session.receive_replay(S1, 501, 500, join_messages(msgs(501, 500)), 5.3)
    p.session.replay_ended(True, "complete", 5.3)
    p.collect()
    assert p.delivered == list(range(1, 1002))
    assert [r.repaired_by for r in p.repaired()] == [Source.REPLAY]
    figures = p.session.figures()
    assert figures["messages"]["replay"] == 1000 and figures["replays_started"] == 1
    assert figures["replays_failed"] == 0


def test_a_session_heard_under_way_is_joined_from_a_snapshot_and_followed_from_there() -> None:
    """Nothing of it is asked for, nor given up, nor said, until the snapshot says where its
    stream starts; then what is held beyond that is delivered, and what lies between the
    snapshot and the lines is repaired as any gap (its clock started at the join)."""
    p = Plant(rerequest=True, replay=True, snapshot=True, join="snapshot",
              recovery=RecoveryConfig(replay_threshold=100))  # fmt: skip
    p.send(A, packet(1001, 5), at=5.0)
    assert p.replays == [SnapshotStart(S1)] and p.markers == []
    p.tick(60.0)  # a slow snapshot: far past give_up_after
    p.send(B, packet(1006, 2), at=60.0)
    assert p.requests == [] and p.lost == [] and p.delivered == [] and p.replays[1:] == []
    p.session.snapshot_taken(S1, 1003, 60.1)
    p.collect()
    assert p.markers == [SessionStarted(S1, None, 1003)]
    assert p.delivered == list(range(1003, 1008))  # the held packet cut where the snapshot ends
    assert p.session.figures()["snapshots_taken"] == 1

    early = Plant(rerequest=True, replay=True, snapshot=True, join="snapshot")
    early.send(A, packet(1001, 5), at=5.0)
    early.session.snapshot_taken(S2, 990, 5.1)  # of another session: not this one's
    early.session.snapshot_taken(S1, 990, 5.2)
    early.collect()
    early.tick(5.21)
    assert early.requests == [(990, 11)]  # between the snapshot and the lines: re-requested
    early.send(RR, packet(990, 11), at=5.22)
    assert early.delivered == list(range(990, 1006)) and early.lost == []
    assert early.session.counters.skipped_unreported == 0
    figures = early.session.figures()  # the gap the join cut: seen once, repaired once
    assert figures["gaps_seen"]["a"] == 1 and figures["gaps_repaired"]["a"]["rerequest"] == 1


def test_a_session_given_is_followed_from_its_first_number_not_joined_from_a_snapshot() -> None:
    import pytest

    from tickerplant.errors import ConfigError

    with pytest.raises(ConfigError, match=r'join: "snapshot" with a session given'):
        FeedSessionConfig(session="SESSION001", join="snapshot")


def test_a_session_heard_from_its_first_number_needs_no_snapshot() -> None:
    p = Plant(snapshot=True, join="snapshot")
    p.send(A, packet(1, 2), at=1.0)
    assert p.markers == [SessionStarted(S1, None)] and p.delivered == [1, 2] and p.replays == []
    empty = Plant(snapshot=True, join="snapshot")
    empty.send(A, mold.encode_end_of_session(S1, 1), at=1.0)
    assert [type(m) for m in empty.markers] == [SessionStarted, SessionEnded]


def test_a_failed_snapshot_joins_the_session_from_its_first_number_by_replay() -> None:
    p = Plant(replay=True, snapshot=True, join="snapshot",
              recovery=RecoveryConfig(replay_threshold=10))  # fmt: skip
    p.send(A, packet(1001, 1), at=5.0)
    p.session.snapshot_failed(S1, "ConnectionRefusedError", 5.1)
    p.collect()
    p.tick(5.2)
    assert p.markers == [SessionStarted(S1, None)]
    assert p.replays == [SnapshotStart(S1), ReplayStart(S1, 1, 1001)]
    assert p.session.figures()["snapshots_failed"] == 1
    # Without a snapshot service the setting changes nothing: a replay, as before.
    plain = Plant(replay=True, join="snapshot", recovery=RecoveryConfig(replay_threshold=10))
    plain.send(A, packet(1001, 1), at=5.0)
    plain.tick(5.1)
    assert plain.replays == [ReplayStart(S1, 1, 1001)]


def test_a_failed_replay_is_retried_then_the_gap_reported_lost_with_the_reason_counted() -> None:
    cfg = RecoveryConfig(replay_threshold=10, replay_retry=0.1, give_up_after=0.5)
    p = Plant(replay=True, recovery=cfg)
    p.send(A, packet(1001, 1), at=0.0)
    while not p.lost and p.now < 2.0:
        p.tick(p.now + 0.05)
        for start in p.replays:
            assert start == ReplayStart(S1, 1, 1001)
            p.session.replay_ended(False, "ReplayError: login rejected", p.now)
            p.collect()
        p.replays.clear()
    assert p.lost == [(1, 1001)] and p.delivered == [1001]
    assert 0.5 <= p.now <= 0.6  # given up at give_up_after, not held open by the retries
    figures = p.session.figures()
    tries = figures["replays_started"]
    assert tries >= 3  # at once, then every replay_retry
    assert figures["replay_failures"] == {"ReplayError: login rejected": tries}
    assert figures["replays_failed"] == tries


def test_a_stalled_replay_is_cancelled_with_its_reason() -> None:
    cfg = RecoveryConfig(replay_threshold=10, replay_stall=0.5, give_up_after=0.8)
    p = Plant(replay=True, recovery=cfg)
    p.send(A, packet(1001, 1), at=0.0)
    p.tick(0.6)
    assert p.replays[0] == ReplayStart(S1, 1, 1001)
    cancel = p.replays[1]
    assert isinstance(cancel, ReplayCancel) and "stalled" in str(cancel.reason)
    assert p.now == 0.6 and len(p.replays) == 2
    p.session.replay_ended(False, "cancelled", 0.61)  # the task's own end: already accounted
    p.tick(1.0)
    assert p.lost == [(1, 1001)]
    assert list(p.session.figures()["replay_failures"].values()) == [1]


def test_a_stray_far_packet_mid_stream_is_decided_on_the_session_timer_and_told() -> None:
    """A stray far ahead on line B while both lines go on: no lost range, no duplicate, no
    re-request; the session's own timer decides it (rejected), with its numbers in an event."""
    p = Plant(rerequest=True)
    p.send(A, packet(1, 5), at=1.0)
    p.send(B, packet(1, 5), mold.encode_packet(S1, 2**40, [b"x"] * 3), at=1.0001)
    assert p.session.sequencer.get_timer() == 1.0001 + SUSPECT_WAIT
    for k in range(6, 200, 5):
        p.now += 0.05
        p.send(A, packet(k, 5))
        p.send(B, packet(k, 5))
    p.tick(10.0)
    assert p.delivered == list(range(1, 201)) and p.lost == [] and p.requests == []
    (decided,) = [e for e in p.events if isinstance(e, SuspectDecided)]
    assert (decided.source, decided.sequence, decided.count, decided.accepted) == (B, 2**40, 3,
                                                                                  False)
    figures = p.session.figures()
    assert figures["suspects_rejected"] == 1 and figures["suspects_accepted"] == 0
    assert figures["duplicates_delivered"] == figures["skipped_unreported"] == 0


def test_a_far_packet_with_nothing_after_it_is_the_streams_when_the_input_ends() -> None:
    p = Plant()
    p.send(A, packet(1, 1), at=0.0)
    p.send(A, packet(19_009_117, 38), at=38.0)
    assert p.delivered == [1]
    p.session.input_ended(38.0)
    p.tick(38.0 + RecoveryConfig().give_up_after + 1)
    assert p.lost == [(2, 19_009_117)]
    assert p.delivered == [1, *range(19_009_117, 19_009_155)]
    assert p.session.figures()["suspects_accepted"] == 1


def test_lines_go_up_quiet_and_down_on_exact_timers() -> None:
    p = Plant(heartbeat_interval=1.0, down_after=3)
    p.send(A, packet(1, 1), at=10.0)
    p.send(B, packet(1, 1), at=10.0)
    assert p.events == [LineStateChanged(A, LineState.DOWN, LineState.UP),
                        LineStateChanged(B, LineState.DOWN, LineState.UP)]
    p.events.clear()
    p.send(A, mold.encode_heartbeat(S1, 2), at=11.0)  # A keeps heartbeating, B falls silent
    p.tick(11.5)
    assert p.events == [LineStateChanged(A, LineState.UP, LineState.QUIET),
                        LineStateChanged(B, LineState.UP, LineState.QUIET)]
    assert p.now == 11.5
    p.events.clear()
    p.tick(13.0)
    assert p.events == [LineStateChanged(B, LineState.QUIET, LineState.DOWN)]
    p.tick(14.0)
    assert p.events[-1] == LineStateChanged(A, LineState.QUIET, LineState.DOWN)
    assert p.session.get_timer() is None  # both down: nothing due until traffic returns
    assert p.session.figures()["line_state"] == {"a": "down", "b": "down"}


def test_bad_datagrams_are_counted_by_defect_and_a_stranger_by_session() -> None:
    p = Plant()
    p.send(A, packet(1, 1), b"", b"tiny", packet(2, 1)[:-1], b"\xff" * 3000,
           packet(2, 1, mold.session_bytes("SOMEONEELS")), at=1.0)
    figures = p.session.figures()
    assert figures["defects"]["a"] == {"short_header": 2, "truncated_block": 1,
                                       "truncated_datagram": 1}
    assert figures["foreign_packets"]["a"] == 1 and p.delivered == [1]
    assert figures["packets"]["a"] == 6


def test_a_new_session_cancels_the_old_replay_and_starts_over_at_one() -> None:
    p = Plant(replay=True, recovery=RecoveryConfig(replay_threshold=10, give_up_after=30))
    p.send(A, packet(1001, 1), at=0.0)
    p.tick(0.01)
    assert p.replays == [ReplayStart(S1, 1, 1001)]
    p.send(A, mold.encode_end_of_session(S1, 1002), at=0.02)
    p.send(A, packet(1, 2, S2), at=0.03)
    assert p.replays[1:] == [ReplayCancel(None)]
    assert p.lost == [(1, 1001)]  # the old session's gap, lost at the change
    assert p.delivered == [1001, 1, 2]
    assert [type(m) for m in p.markers] == [SessionStarted, SessionEnded, SessionStarted]
    assert p.session.figures()["replay_failures"] == {}  # a change of session is no failure
    assert p.session.counters.duplicates_delivered == 0
    assert p.session.figures()["session"] == "SESSION002"


def test_the_end_of_session_is_delivered_after_the_last_message() -> None:
    p = Plant()
    p.send(A, mold.encode_end_of_session(S1, 3), at=0.0)
    assert not p.session.ended
    p.send(B, packet(1, 2), at=0.001)
    assert p.session.ended and isinstance(p.markers[-1], SessionEnded)


def test_a_hole_without_gap_lost_is_counted_and_shown() -> None:
    s = FeedSession(FeedSessionConfig(), [A])
    for item in (Batch(1, 2, b"\x00\x01a\x00\x01b"), Batch(10, 1, b"\x00\x01c"),
                 GapLost(15, 20, A, 0.1), Batch(20, 1, b"\x00\x01d")):
        s._deliver(item)  # what the sequencer never hands over: the check behind it
    c = s.counters
    assert c.skipped_unreported == 7 + 4  # [3, 10) and [11, 15)
    assert c.duplicates_delivered == 0 and c.delivered == 4
    assert s.lost_ranges == [(15, 20)]
    assert "skipped unreported 11" in _text(s)


def test_an_overlap_is_counted_as_duplicates_not_as_a_hole() -> None:
    s = FeedSession(FeedSessionConfig(), [A])
    s._deliver(Batch(1, 5, b""))
    s._deliver(Batch(3, 4, b""))
    assert (s.counters.duplicates_delivered, s.counters.skipped_unreported) == (3, 0)
    assert "skipped" not in _text(s)


def test_the_delivered_digest_is_of_the_block_stream() -> None:
    import hashlib

    p = Plant(digest=True)
    p.send(A, packet(1, 3), packet(4, 2), at=0.0)
    assert p.session.digest == hashlib.sha256(join_messages(msgs(1, 5))).hexdigest()


def test_latencies_keep_every_count_and_the_max_but_only_recent_values() -> None:
    lat = Latencies()
    assert lat.figures()["count"] == 0 and "p50" not in lat.figures()
    lat.add(5.0)  # an old, slow repair
    for _ in range(Latencies.RECENT):
        lat.add(0.001)
    figures = lat.figures()
    assert figures["count"] == Latencies.RECENT + 1
    assert figures["max"] == 5.0  # seconds, over all
    assert figures["p50"] == figures["p99"] == 0.001  # the 5 s one has left the window
    # the histogram keeps them all: cumulative, each bound counting what is at most it
    buckets = dict((str(b), n) for b, n in figures["buckets"])  # type: ignore[attr-defined]
    assert buckets["0.0005"] == 0 and buckets["0.001"] == Latencies.RECENT
    assert buckets["2.5"] == Latencies.RECENT and buckets["5.0"] == buckets["+Inf"] == lat.count
    assert abs(figures["sum"] - (5.0 + 0.001 * Latencies.RECENT)) < 1e-6  # type: ignore[operator]


def test_latency_buckets_run_from_10_us_to_10_s() -> None:
    from tickerplant.latency import BUCKETS

    assert BUCKETS[0] == 1e-5 and BUCKETS[-1] == 10.0 and list(BUCKETS) == sorted(BUCKETS)
    lat = Latencies()
    lat.add(20.0)  # above every bound: +Inf only
    assert [n for _, n in lat.figures()["buckets"]][-2:] == [0, 1]  # type: ignore[attr-defined]


def test_repair_kinds_are_one_vocabulary() -> None:
    assert [s.repair for s in Source] == [Repair.LINE, Repair.LINE, Repair.REREQUEST,
                                          Repair.REPLAY]


def _text(session: FeedSession) -> str:
    figures = session.figures()
    for name in ("rcvbuf_bytes", "wakeups", "socket_errors"):
        figures[name] = {s.label: 0 for s in Source}
    figures["consumer_errors"] = 0
    console = Console(width=200, record=True)
    console.print(render(figures, None, 1.0))
    return console.export_text()
