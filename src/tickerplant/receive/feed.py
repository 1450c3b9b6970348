"""The feed session: everything the feed handler decides, with no socket and no clock.

In the shape of aioquic's connection. Inputs: :meth:`FeedSession.receive_datagrams` (a drained
batch from a line or from the re-request socket), :meth:`FeedSession.receive_replay` (a run of
messages from the TCP replay), :meth:`FeedSession.replay_ended`, what a snapshot said
(:meth:`FeedSession.snapshot_taken`, :meth:`FeedSession.snapshot_failed`), and
:meth:`FeedSession.handle_timer` at :meth:`FeedSession.get_timer`. Outputs, drained after every
input, two as in aioquic: :meth:`FeedSession.next_event`, one :data:`FeedOutput` at a time in the
order the session produced them (the repaired stream's batches, with lost ranges and session
markers in their stream positions; gap repairs, line state changes and suspects decided; TCP
replays to start or cancel, a snapshot to take), and :meth:`FeedSession.datagrams_to_send`
(re-requests, bytes for their socket). ``now`` always comes in as an argument.

The machines it composes: the :class:`Sequencer` (arbitration, hold-back, gaps), the
:class:`Recovery` (what to ask for, when to give up) and one :class:`Liveness` per line. Around
them it keeps what the plant must check and count: the delivered stream's continuity (neither
overlap nor hole without a GapLost), its digest, repair latencies, per-source counters.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tickerplant.errors import ConfigError
from tickerplant.latency import Latencies
from tickerplant.receive.events import (
    Batch,
    Delivery,
    Event,
    GapLost,
    GapRepaired,
    Repair,
    SessionEnded,
    SessionStarted,
    Source,
)
from tickerplant.receive.liveness import Liveness
from tickerplant.receive.recovery import (
    CancelReplay,
    Recovery,
    RecoveryConfig,
    Replay,
    Rerequest,
)
from tickerplant.receive.sequencer import MAX_HELD_BYTES, Sequencer
from tickerplant.wire import moldudp64 as mold

log = logging.getLogger(__name__)

LOST_RANGES_KEPT = 10_000  # GapLost ranges listed; beyond, counted only
REPLAY_FAILURES_KEPT = 32  # distinct reasons; a peer inventing new ones must not grow this


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedSessionConfig:
    """What the feed session decides by: the machine's settings, none of its sockets or files
    (the feed handler's :class:`~tickerplant.feed.handler.FeedConfig` adds those)."""

    session: str | None = None  # the MoldUDP64 session to follow; None: the first one heard
    heartbeat_interval: float = mold.HEARTBEAT_INTERVAL
    down_after: int = 3
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    max_held_bytes: int = MAX_HELD_BYTES
    first_sequence: int = 1
    digest: bool = False  # sha256 of the delivered block stream, for end-to-end checks
    # A session heard under way: "replay" it from its first number, or take a "snapshot" of
    # the state it stands at (when there is a snapshot service) and follow it from there.
    join: str = "replay"

    def __post_init__(self) -> None:
        if self.join not in ("replay", "snapshot"):
            raise ConfigError("join", repr(self.join), 'use "replay" or "snapshot"')
        if self.join == "snapshot" and self.session is not None:
            raise ConfigError("join", '"snapshot" with a session given', "a session given is "
                              'followed from its first number: join by "replay", or leave the '
                              "session out")  # fmt: skip
        if self.first_sequence < 1:
            raise ConfigError("first_sequence", f"{self.first_sequence}", "sequences start at 1")
        if self.session is not None:
            try:
                mold.session_bytes(self.session)
            except (ValueError, UnicodeEncodeError):
                raise ConfigError(
                    "session", f"{self.session!r}", "give ASCII of at most 10 characters"
                ) from None


@dataclass(frozen=True, slots=True)
class ReplayStart:
    """Open a TCP replay of ``session`` for messages [first, end); report with replay_ended."""

    session: bytes
    first: int
    end: int


@dataclass(frozen=True, slots=True)
class ReplayCancel:
    """End the replay under way; ``reason`` is counted as its failure (None: not a failure)."""

    reason: str | None


@dataclass(frozen=True, slots=True)
class SnapshotStart:
    """Take a snapshot of ``session`` where it stands now; report with snapshot_taken (the
    number its stream goes on from) or snapshot_failed."""

    session: bytes


ReplayRequest = ReplayStart | ReplayCancel
FeedOutput = Delivery | Event | ReplayRequest | SnapshotStart


def _defects() -> dict[mold.Defect, int]:
    return {}


def _repairs() -> dict[Repair, int]:
    return dict.fromkeys(Repair, 0)


@dataclass(slots=True)
class SourceCounters:
    """What one source (line A, line B, the re-request socket, the replay) carried."""

    packets: int = 0  # datagrams received (for the replay: runs of messages), good or bad
    messages: int = 0  # in data packets of our session
    heartbeats: int = 0  # heartbeats and end-of-session packets
    end_of_session: int = 0
    foreign_packets: int = 0  # of another session
    defects: dict[mold.Defect, int] = field(default_factory=_defects)  # dropped, by defect
    gaps_repaired: dict[Repair, int] = field(default_factory=_repairs)  # revealed here


@dataclass(slots=True)
class FeedCounters:
    delivered: int = 0  # messages handed on
    # Checked, not assumed: what is delivered must neither overlap nor skip.
    duplicates_delivered: int = 0
    skipped_unreported: int = 0  # missing from the stream without a GapLost
    rerequest_send_errors: int = 0
    replay_failures: dict[str, int] = field(default_factory=dict)  # why replays ended short
    snapshots_taken: int = 0
    snapshots_failed: int = 0
    sources: dict[Source, SourceCounters] = field(
        default_factory=lambda: {s: SourceCounters() for s in Source}
    )


class FeedSession:
    """``lines``: the lines it hears; ``rerequest``, ``replay``, ``snapshot``: whether somebody
    is there to ask (a repair means nobody configured is never tried, and never fails; a
    session heard under way is joined by ``config.join`` when there is a snapshot service, by
    replay otherwise)."""

    def __init__(self, config: FeedSessionConfig,
                 lines: Sequence[Source] = (Source.LINE_A, Source.LINE_B), *,
                 rerequest: bool = False, replay: bool = False,
                 snapshot: bool = False) -> None:  # fmt: skip
        self.config = config
        pinned = mold.session_bytes(config.session) if config.session else None
        self.sequencer = Sequencer(pinned, config.first_sequence, config.max_held_bytes,
                                   snapshot=snapshot and config.join == "snapshot")  # fmt: skip
        recovery = replace(
            config.recovery,
            rerequest=config.recovery.rerequest and rerequest,
            replay=config.recovery.replay and replay,
        )
        self.recovery = Recovery(self.sequencer, recovery)
        self.liveness = {
            source: Liveness(source, config.heartbeat_interval, config.down_after)
            for source in lines
        }
        self.counters = FeedCounters()
        self.latencies = {kind: Latencies() for kind in Repair}
        # [start, end) of the first LOST_RANGES_KEPT GapLost, in order (figures count them all)
        self.lost_ranges: list[tuple[int, int]] = []
        self.ended = False  # the session's end has been delivered
        self._next_delivery = config.first_sequence
        self._digest = hashlib.sha256() if config.digest else None
        self._replaying = False
        self._snapshot: bytes | None = None  # the session a snapshot was asked of
        self._outputs: deque[FeedOutput] = deque()
        self._datagrams: list[bytes] = []
        self._line_timer: float | None = None  # the lines' earliest deadline (all down: none)
        self._seqs = np.zeros(mold.DRAIN_ROWS, dtype=np.int64)
        self._counts = np.zeros(mold.DRAIN_ROWS, dtype=np.int64)
        self._defects = np.zeros(mold.DRAIN_ROWS, dtype=np.int8)

    # ---- inputs -------------------------------------------------------------------------------

    def receive_datagrams(self, source: Source, datagrams: mold.Datagrams, n: int,
                          now: float) -> None:  # fmt: skip
        """The first ``n`` rows of ``datagrams`` came from ``source``'s socket.

        The rows may be reused once this returns: what the sequencer delivered is joined into
        batches before it does, and what it holds it copies.
        """
        if n == 0:
            return
        if n > self._seqs.shape[0]:
            self._seqs, self._counts = np.zeros(n, np.int64), np.zeros(n, np.int64)
            self._defects = np.zeros(n, np.int8)
        mold.scan_packets(
            datagrams.rows, datagrams.lengths, n, self._seqs, self._counts, self._defects
        )
        seqs = self._seqs[:n].tolist()
        counts = self._counts[:n].tolist()
        defects = self._defects[:n].tolist()
        lengths = datagrams.lengths[:n].tolist()
        views = datagrams.views
        seq = self.sequencer
        session = memoryview(seq.session or b"")
        fig = self.counters.sources[source]
        messages = heartbeats = accepted = 0
        for i in range(n):
            defect = defects[i]
            if defect:
                kind = mold.Defect(defect)
                fig.defects[kind] = fig.defects.get(kind, 0) + 1
                continue
            view = views[i]
            if view[:10] != session:  # rare: the first packet, a new session, a stranger
                if not seq.accepts(view[:10].tobytes(), now):
                    fig.foreign_packets += 1
                    continue
                session = memoryview(seq.session or b"")
            accepted += 1
            count = counts[i]
            if count == mold.HEARTBEAT:
                heartbeats += 1
                seq.on_heartbeat(source, seqs[i], now)
            elif count == mold.END_OF_SESSION:
                fig.end_of_session += 1
                heartbeats += 1
                seq.on_end_of_session(source, seqs[i], now)
            else:
                messages += count
                seq.on_packet(source, seqs[i], count, view[20 : lengths[i]], now)
        if accepted:
            seq.heard(now)
        fig.packets += n
        fig.messages += messages
        fig.heartbeats += heartbeats
        live = self.liveness.get(source)
        if live is not None:
            if messages:
                live.heard_data(now)
            elif heartbeats:
                live.heard_heartbeat(now)
            self._line_state(live)
        self._advance(now)

    def receive_replay(self, session: bytes, first: int, count: int, blocks: bytes,
                       now: float) -> None:
        """A run of messages the TCP replay of ``session`` brought."""
        if session != self.sequencer.session:
            return  # the old session's replay, still draining its socket after a session change
        fig = self.counters.sources[Source.REPLAY]
        fig.packets += 1
        fig.messages += count
        self.recovery.replay_progress(now)
        self.sequencer.on_packet(Source.REPLAY, first, count, blocks, now)
        self._advance(now)

    def replay_ended(self, ok: bool, reason: str, now: float) -> None:
        """The replay last requested is over: complete (``ok``) or not, and why."""
        if not self._replaying:
            return  # cancelled meanwhile: recovery already knows
        self._replaying = False
        if not ok:
            self._replay_failed(reason)
        self.recovery.replay_finished(ok, now)
        self._advance(now)

    def snapshot_taken(self, session: bytes, first: int, now: float) -> None:
        """The snapshot asked of ``session`` is the state before ``first``: its stream goes
        on from there (what lies between it and the lines repaired as any gap)."""
        if session != self._snapshot or session != self.sequencer.session:
            return  # asked of a session since left
        self._snapshot = None
        self.counters.snapshots_taken += 1
        self.sequencer.start_at(first, now)
        self._advance(now)

    def snapshot_failed(self, session: bytes, reason: str, now: float) -> None:
        """No snapshot of ``session``: it is joined from its first number, by replay."""
        if session != self._snapshot or session != self.sequencer.session:
            return
        self._snapshot = None
        self.counters.snapshots_failed += 1
        log.warning("no snapshot of %s (%s): replaying it from %d instead",
                    session.decode("ascii", "replace").strip(), reason,
                    self.config.first_sequence)  # fmt: skip
        self.sequencer.start_at(self.config.first_sequence, now)
        self._advance(now)

    def rerequest_unsent(self) -> None:
        """The socket refused a re-request: no worse than a lost one (its retry timer covers
        both), but counted, so that a re-request server nobody can reach shows."""
        self.counters.rerequest_send_errors += 1

    def handle_timer(self, now: float) -> None:
        for live in self.liveness.values():
            live.handle_timer(now)
            self._line_state(live)
        self._line_timer = self._next_line_timer()
        self.sequencer.handle_timer(now)
        self._advance(now)

    def input_ended(self, now: float) -> None:
        """Nothing more will come (a capture's end): a packet still set aside as suspect is
        decided now rather than left unsaid."""
        self.sequencer.decide_suspect(now)
        self._advance(now)

    # ---- outputs ------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next moment :meth:`handle_timer` may have something to do (None: nothing is due).

        Never late, sometimes early: the lines' deadlines only move later while they are heard,
        so the earliest is recomputed when one changes state or fires, not on every wake-up.
        """
        recovery = None if self.sequencer.joining else self.recovery.get_timer()
        timers = [t for t in (recovery, self._line_timer,
                              self.sequencer.get_timer()) if t is not None]  # fmt: skip
        return min(timers) if timers else None

    def next_event(self) -> FeedOutput | None:
        """The oldest output not yet taken (None: none left until the next input).

        The deliveries among them come in stream order: batches, lost ranges, session markers.
        """
        return self._outputs.popleft() if self._outputs else None

    def datagrams_to_send(self) -> list[bytes]:
        """MoldUDP64 requests for the re-request server."""
        out, self._datagrams = self._datagrams, []
        return out

    def figures(self) -> dict[str, Any]:
        """A JSON-ready snapshot, named and nested as ``tickerplant.ops.figures`` registers."""
        seq = self.sequencer
        c = self.counters
        sc = seq.counters
        rc = self.recovery.counters
        sources = c.sources.items()
        return {
            "session": (seq.session or b"").decode("ascii", "replace").strip(),
            "delivered_messages": c.delivered,
            "next_sequence": seq.expected,
            "outstanding_messages": seq.outstanding,
            "held_bytes": seq.held_bytes,
            "open_gaps": len(seq.gaps),
            "lost_messages": sc.lost,
            "lost_ranges": [list(r) for r in self.lost_ranges[:100]],
            "duplicates_delivered": c.duplicates_delivered,
            "skipped_unreported": c.skipped_unreported,
            "duplicate_messages": sc.duplicate_messages,
            "hold_overflow_packets": sc.hold_overflow_packets,
            "suspect_packets": sc.suspect_packets,
            "suspects_rejected": sc.suspects_rejected,
            "suspects_accepted": sc.suspects_accepted,
            "rerequests_sent": rc.rerequests_sent,
            "rerequest_send_errors": c.rerequest_send_errors,
            "replays_started": rc.replays_started,
            "replays_failed": rc.replays_failed,
            "replay_failures": dict(c.replay_failures),
            "snapshots_taken": c.snapshots_taken,
            "snapshots_failed": c.snapshots_failed,
            "repair_latency_seconds": {k.value: v.figures() for k, v in self.latencies.items()},
            "line_state": {s.label: live.state.value for s, live in self.liveness.items()},
            "packets": {s.label: f.packets for s, f in sources},
            "messages": {s.label: f.messages for s, f in sources},
            "heartbeats": {s.label: f.heartbeats for s, f in sources},
            "end_of_session_packets": {s.label: f.end_of_session for s, f in sources},
            "foreign_packets": {s.label: f.foreign_packets for s, f in sources},
            "defects": {
                s.label: {d.name.lower(): n for d, n in f.defects.items()} for s, f in sources
            },
            "gaps_seen": {s.label: sc.gaps_seen[s] for s in Source},
            "gaps_repaired": {
                s.label: {k.value: n for k, n in f.gaps_repaired.items()} for s, f in sources
            },
            "gaps_lost": {s.label: sc.gaps_lost[s] for s in Source},
        }

    @property
    def digest(self) -> str | None:
        return self._digest.hexdigest() if self._digest is not None else None

    # ---- internals ----------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        seq = self.sequencer
        rec = self.recovery
        timer = rec.get_timer()
        if seq.joining:
            # Heard under way: where its stream starts for us is the snapshot's to say, and
            # nothing before it is asked for meanwhile.
            if seq.gaps and self._snapshot != seq.session:
                assert seq.session is not None
                self._snapshot = seq.session
                self._outputs.append(SnapshotStart(seq.session))
        elif seq.gaps or (timer is not None and now >= timer):
            rec.handle_timer(now)
            while (action := rec.next_event()) is not None:
                if isinstance(action, Rerequest):
                    if seq.session is not None:
                        self._datagrams.append(
                            mold.encode_request(seq.session, action.sequence, action.count)
                        )
                elif isinstance(action, Replay):
                    assert seq.session is not None
                    self._replaying = True
                    self._outputs.append(ReplayStart(seq.session, action.first, action.end))
                elif isinstance(action, CancelReplay):
                    self._cancel_replay("stalled: nothing delivered for replay_stall seconds")
        while (item := seq.next_event()) is not None:
            if isinstance(item, Delivery):
                self._deliver(item)
                continue
            if isinstance(item, GapRepaired):
                kind = item.repaired_by.repair
                self.counters.sources[item.revealed_by].gaps_repaired[kind] += 1
                self.latencies[kind].add(item.latency)
            self._outputs.append(item)

    def _deliver(self, item: Delivery) -> None:
        if isinstance(item, Batch):
            self._check_continuity(item.first)
            self._next_delivery = item.end
            self.counters.delivered += item.count
            if self._digest is not None:
                self._digest.update(item.blocks)
        elif isinstance(item, GapLost):
            self._check_continuity(item.start)
            self._next_delivery = item.end
            if len(self.lost_ranges) < LOST_RANGES_KEPT:
                self.lost_ranges.append((item.start, item.end))
        elif isinstance(item, SessionEnded):
            self.ended = True
        elif isinstance(item, SessionStarted):
            self._next_delivery = item.joined or self.config.first_sequence
            if item.previous is not None:
                # The exchange started a new session: what was under way belonged to the old one.
                self.ended = False
                self._cancel_replay(None)
                self.recovery.reset()
        self._outputs.append(item)

    def _check_continuity(self, first: int) -> None:
        """Count a delivery that overlaps what went before, or leaves a hole no GapLost covers."""
        if first < self._next_delivery:
            self.counters.duplicates_delivered += self._next_delivery - first
        elif first > self._next_delivery:
            self.counters.skipped_unreported += first - self._next_delivery
            log.error("messages [%d, %d) skipped without a GapLost", self._next_delivery, first)

    def _line_state(self, live: Liveness) -> None:
        while (change := live.next_event()) is not None:
            self._outputs.append(change)
            self._line_timer = self._next_line_timer()

    def _next_line_timer(self) -> float | None:
        timers = [t for t in (live.get_timer() for live in self.liveness.values()) if t is not None]
        return min(timers) if timers else None

    def _cancel_replay(self, reason: str | None) -> None:
        if self._replaying:
            self._replaying = False
            self._outputs.append(ReplayCancel(reason))
            if reason is not None:
                self._replay_failed(reason)

    def _replay_failed(self, reason: str) -> None:
        failures = self.counters.replay_failures
        if reason in failures or len(failures) < REPLAY_FAILURES_KEPT:
            failures[reason] = failures.get(reason, 0) + 1
