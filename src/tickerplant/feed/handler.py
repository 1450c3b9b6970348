"""The feed handler: line A and line B in, one repaired in-order stream out.

Composition only: sockets and the clock come from io/, every decision from session/. Each
wake-up drains a line's socket, checks the whole batch of datagrams in one compiled call, feeds
the sequencer packet by packet (headers only; message blocks stay one ``bytes`` per packet),
lets recovery act on the gaps, and hands the consumer in-order :class:`Batch` es and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tickerplant.io.datagrams import DatagramDrain
from tickerplant.io.multicast import Endpoint, open_receiver
from tickerplant.io.replay_client import ReplayClient
from tickerplant.session.events import (
    Batch,
    Event,
    GapLost,
    GapRepaired,
    LineState,
    LineStateChanged,
    SessionEnded,
    Source,
)
from tickerplant.session.liveness import Liveness
from tickerplant.session.recovery import Recovery, RecoveryConfig, Replay, Rerequest
from tickerplant.session.sequencer import Delivery, Sequencer
from tickerplant.wire import moldudp64 as mold
from tickerplant.wire import soupbintcp as soup
from tickerplant.wire.blocks import offsets_of

log = logging.getLogger(__name__)

DRAIN_ROWS = 512  # datagrams read per line per wake-up; the packet scan's arrays match it
LOST_RANGES_KEPT = 10_000  # GapLost ranges listed; beyond, counted only

# Liveness and figures need no better than this; gap timers are scheduled exactly.
HOUSEKEEPING_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class FeedConfig:
    line_a: Endpoint
    line_b: Endpoint | None
    interface: str = "127.0.0.1"
    session: str | None = None  # None: follow the first session heard
    rerequest: Endpoint | None = None
    replay: Endpoint | None = None
    replay_username: str = ""
    replay_password: str = ""
    replay_timeout: float = 60.0
    rcvbuf: int = 64 << 20
    heartbeat_interval: float = 1.0
    down_after: int = 3
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    max_held_bytes: int = 128 << 20
    first_sequence: int = 1
    capture: Path | None = None
    digest: bool = False  # sha256 of the delivered block stream, for end-to-end checks

    def __post_init__(self) -> None:
        if self.rcvbuf < 65536:
            raise ValueError(f"feed.rcvbuf = {self.rcvbuf}: ask for at least 65536 bytes")
        if self.first_sequence < 1:
            raise ValueError(f"feed.first_sequence = {self.first_sequence}: sequences start at 1")
        if self.line_b is not None and self.line_b == self.line_a:
            raise ValueError("feed.line_b is line_a: give line B its own group:port, or none")


@dataclass(slots=True)
class LineFigures:
    """What one source carried; rates are differences of these over time."""

    packets: int = 0
    messages: int = 0
    heartbeats: int = 0
    end_of_session: int = 0
    foreign: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    rcvbuf: int = 0
    state: LineState = LineState.DOWN
    gaps_repaired: dict[str, int] = field(
        default_factory=lambda: {"line": 0, "rerequest": 0, "replay": 0}
    )


_REPAIR_KIND = {Source.LINE_A: "line", Source.LINE_B: "line", Source.REREQUEST: "rerequest",
                Source.REPLAY: "replay"}


class FeedHandler:
    def __init__(
        self,
        config: FeedConfig,
        on_batch: Callable[[Batch], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.config = config
        self.on_batch = on_batch
        self.on_event = on_event
        session = mold.session_bytes(config.session) if config.session else None
        self.sequencer = Sequencer(session, config.first_sequence, config.max_held_bytes)
        recovery = config.recovery
        if config.rerequest is None or config.replay is None:
            recovery = _without(recovery, config.rerequest is None, config.replay is None)
        self.recovery = Recovery(self.sequencer, recovery)
        self.lines: dict[Source, LineFigures] = {s: LineFigures() for s in Source}
        self.liveness = {
            s: Liveness(s, config.heartbeat_interval, config.down_after)
            for s in (Source.LINE_A, Source.LINE_B)
            if s is Source.LINE_A or config.line_b is not None
        }
        self.latencies = {kind: Latencies() for kind in ("line", "rerequest", "replay")}
        self.session_ended: asyncio.Event = asyncio.Event()
        self.delivered = 0
        self.consumer_errors = 0
        self.rerequest_send_errors = 0
        self.replay_failures: dict[str, int] = {}  # why replay sessions ended short
        # [start, end) of the first LOST_RANGES_KEPT GapLost, in order (figures count them all)
        self.lost_ranges: list[tuple[int, int]] = []
        # Checked, not assumed: what is delivered must neither overlap nor skip.
        self.duplicates_delivered = 0
        self.skipped_unreported = 0  # messages missing from the stream without a GapLost
        self._next_delivery = config.first_sequence
        self._digest = hashlib.sha256() if config.digest else None
        self._capture: BinaryIO | None = None
        self._sockets: list[socket.socket] = []
        self._drains: dict[Source, DatagramDrain] = {}
        self._rerequest_sock: socket.socket | None = None
        self._replay_task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._housekeeping: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # uvloop's loop.time() ticks in whole milliseconds, too coarse for repair latencies.
        self._clock = time.monotonic
        self._seqs = np.zeros(DRAIN_ROWS, dtype=np.int64)
        self._counts = np.zeros(DRAIN_ROWS, dtype=np.int64)
        self._defects = np.zeros(DRAIN_ROWS, dtype=np.int8)

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        _warm_kernels()
        loop = asyncio.get_running_loop()
        self._loop = loop
        cfg = self.config
        lines = [(Source.LINE_A, cfg.line_a)]
        if cfg.line_b is not None:
            lines.append((Source.LINE_B, cfg.line_b))
        for source, group in lines:
            sock, granted = open_receiver(group, cfg.interface, cfg.rcvbuf)
            self._watch(sock, source)
            self.lines[source].rcvbuf = granted
        if cfg.rerequest is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((cfg.rerequest.host, cfg.rerequest.port))
            self._rerequest_sock = sock
            self._watch(sock, Source.REREQUEST)
        if cfg.capture is not None:
            self._capture = cfg.capture.open("wb")
        self._housekeeping = loop.call_later(HOUSEKEEPING_INTERVAL, self._tick)

    def _watch(self, sock: socket.socket, source: Source) -> None:
        assert self._loop is not None
        drain = DatagramDrain(sock, DRAIN_ROWS)
        self._sockets.append(sock)
        self._drains[source] = drain
        self._loop.add_reader(sock.fileno(), self._on_readable, source, drain)

    async def close(self) -> None:
        assert self._loop is not None
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()
        for handle in (self._timer, self._housekeeping):
            if handle is not None:
                handle.cancel()
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        if self._capture is not None:
            self._capture.close()

    def figures(self) -> dict[str, Any]:
        """A JSON-ready snapshot for the dashboard, the summary and benchmarks."""
        c = self.sequencer.counters
        lines = {}
        for source, fig in self.lines.items():
            drain = self._drains.get(source)
            lines[source.label] = {
                "packets": fig.packets,
                "messages": fig.messages,
                "heartbeats": fig.heartbeats,
                "end_of_session": fig.end_of_session,
                "foreign": fig.foreign,
                "malformed": dict(fig.malformed),
                "rcvbuf": fig.rcvbuf,
                # Wake-ups that drained the socket, and receive errors (an ICMP error reported
                # on the connected re-request socket: its server is unreachable).
                "wakeups": drain.wakeups if drain is not None else 0,
                "socket_errors": drain.errors if drain is not None else 0,
                "state": fig.state.value if source in self.liveness else None,
                "gaps_seen": c.gaps_seen[source],
                "gaps_repaired": dict(fig.gaps_repaired),
                "gaps_lost": c.gaps_lost[source],
            }
        repaired = {"line": 0, "rerequest": 0, "replay": 0}
        for fig in self.lines.values():
            for kind, n in fig.gaps_repaired.items():
                repaired[kind] += n
        return {
            "session": (self.sequencer.session or b"").decode("ascii", "replace").strip(),
            "delivered": self.delivered,
            "next_sequence": self.sequencer.expected,
            "outstanding": self.sequencer.outstanding,
            "held_bytes": self.sequencer.held_bytes,
            "duplicates_delivered": self.duplicates_delivered,
            "skipped_unreported": self.skipped_unreported,
            "duplicate_messages_dropped": c.duplicate_messages,
            "hold_overflow_packets": c.hold_overflow_packets,
            "suspect_packets": c.suspect_packets,
            "messages_lost": c.lost,
            "gaps": {
                "seen": sum(c.gaps_seen),
                "repaired_by_line": repaired["line"],
                "repaired_by_rerequest": repaired["rerequest"],
                "repaired_by_replay": repaired["replay"],
                "lost": sum(c.gaps_lost),
                "open": len(self.sequencer.gaps),
                "lost_ranges": [list(r) for r in self.lost_ranges[:100]],
            },
            "rerequests_sent": self.recovery.requests_sent,
            "rerequest_send_errors": self.rerequest_send_errors,
            "consumer_errors": self.consumer_errors,
            "replays": {"started": self.recovery.replays_started,
                        "failed": self.recovery.replays_failed,
                        "failures": dict(list(self.replay_failures.items())[:20])},
            "repair_latency_ms": {kind: lat.figures() for kind, lat in self.latencies.items()},
            "lines": lines,
        }

    @property
    def digest(self) -> str | None:
        return self._digest.hexdigest() if self._digest is not None else None

    # ---- input --------------------------------------------------------------------------------

    def _on_readable(self, source: Source, drain: DatagramDrain) -> None:
        n = drain.drain()
        if n == 0:
            return
        assert self._loop is not None
        now = self._clock()
        mold.scan_packets(drain.rows, drain.lengths, n, self._seqs, self._counts, self._defects)
        seqs = self._seqs[:n].tolist()
        counts = self._counts[:n].tolist()
        defects = self._defects[:n].tolist()
        lengths = drain.lengths[:n].tolist()
        views = drain.views
        seq = self.sequencer
        session = memoryview(seq.session or b"")
        fig = self.lines[source]
        messages = heartbeats = accepted = 0
        for i in range(n):
            defect = defects[i]
            if defect:
                name = mold.Defect(defect).name.lower()
                fig.malformed[name] = fig.malformed.get(name, 0) + 1
                continue
            view = views[i]
            if view[:10] != session:  # rare: the first packet, a new session, a stranger
                if not seq.accepts(view[:10].tobytes(), now):
                    fig.foreign += 1
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
                # A view into the drain's row: the sequencer copies what it keeps, and what it
                # delivers is joined into the batch before the next drain reuses the row.
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
        self._advance(now)

    def _on_replay_messages(self, session: bytes, first: int, count: int, blocks: bytes) -> None:
        if session != self.sequencer.session:
            return  # the old session's replay, still draining its socket after a session change
        now = self._clock()
        fig = self.lines[Source.REPLAY]
        fig.packets += 1
        fig.messages += count
        self.recovery.replay_progress(now)
        self.sequencer.on_packet(Source.REPLAY, first, count, blocks, now)
        self._advance(now)

    # ---- recovery and output ------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        seq = self.sequencer
        rec = self.recovery
        if seq.gaps or (rec.deadline is not None and now >= rec.deadline):
            for action in rec.poll(now):
                if isinstance(action, Rerequest):
                    self._send_rerequest(action)
                elif isinstance(action, Replay):
                    self._start_replay(action)
                else:
                    self._cancel_replay("stalled: nothing delivered for replay_stall seconds")
            self._schedule(rec.deadline)
        self._deliver(seq.take())
        for event in seq.take_events():
            self._account(event)
            if self.on_event is not None:
                self._hand_over(self.on_event, event)

    def _deliver(self, items: list[Delivery]) -> None:
        for item in items:
            if isinstance(item, Batch):
                self._check_continuity(item.first)
                self._next_delivery = item.end
                self.delivered += item.count
                if self._digest is not None:
                    self._digest.update(item.blocks)
                if self._capture is not None:
                    self._capture.write(item.blocks)
                if self.on_batch is not None:
                    self._hand_over(self.on_batch, item)
                continue
            if isinstance(item, GapLost):
                self._check_continuity(item.start)
                self._next_delivery = item.end
                self._account(item)
            elif isinstance(item, SessionEnded):
                self.session_ended.set()
            elif item.previous is not None:  # a new session, not the first one heard
                self._new_session()
            if self.on_event is not None:
                self._hand_over(self.on_event, item)

    def _check_continuity(self, first: int) -> None:
        """Count a delivery that overlaps what went before, or leaves a hole no GapLost covers."""
        if first < self._next_delivery:
            self.duplicates_delivered += self._next_delivery - first
        elif first > self._next_delivery:
            self.skipped_unreported += first - self._next_delivery
            log.error("messages [%d, %d) skipped without a GapLost", self._next_delivery, first)

    def _hand_over(self, consumer: Callable[[Any], None], item: Delivery | Event) -> None:
        """A consumer's bug must not cost the other items of this wake-up, nor go unnoticed."""
        try:
            consumer(item)
        except Exception:
            self.consumer_errors += 1
            log.exception("consumer failed on %s; the stream goes on", type(item).__name__)

    def _account(self, event: Event) -> None:
        if isinstance(event, GapRepaired):
            kind = _REPAIR_KIND[event.repaired_by]
            self.lines[event.revealed_by].gaps_repaired[kind] += 1
            self.latencies[kind].add(event.latency)
        elif isinstance(event, GapLost):
            if len(self.lost_ranges) < LOST_RANGES_KEPT:
                self.lost_ranges.append((event.start, event.end))
        elif isinstance(event, LineStateChanged):
            self.lines[event.line].state = event.new

    def _send_rerequest(self, action: Rerequest) -> None:
        sock = self._rerequest_sock
        session = self.sequencer.session
        if sock is None or session is None:
            return
        try:
            sock.send(mold.encode_request(session, action.sequence, action.count))
        except OSError:
            # A refused or full socket is no worse than a lost request: the retry timer covers
            # both. Counted, so that a re-request server nobody can reach shows.
            self.rerequest_send_errors += 1

    def _start_replay(self, action: Replay) -> None:
        self._replay_task = asyncio.ensure_future(self._replay(action))

    async def _replay(self, action: Replay) -> None:
        cfg = self.config
        session = self.sequencer.session
        assert cfg.replay is not None and session is not None
        client = ReplayClient(
            cfg.replay.host,
            cfg.replay.port,
            session,
            partial(self._on_replay_messages, session),
            cfg.replay_username,
            cfg.replay_password,
        )
        ok = False
        try:
            last = await client.fetch(action.first, action.end - 1, cfg.replay_timeout)
            ok = last >= action.end - 1
            if not ok:
                self._replay_failed(client.stop_reason)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # Refused, rejected, cut, or a peer speaking nonsense: the replay failed, and the
            # gaps it covered go back to recovery (retry later, else reported lost).
            self._replay_failed(f"{type(err).__name__}: {err}")
        now = self._clock()
        self.recovery.replay_finished(ok, now)
        self._advance(now)

    def _new_session(self) -> None:
        """The exchange started a new session: what was under way belonged to the old one."""
        self.session_ended.clear()
        self._next_delivery = self.config.first_sequence
        self._cancel_replay(None)
        self.recovery.reset()

    def _cancel_replay(self, reason: str | None) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            self._replay_task = None
            if reason is not None:
                self._replay_failed(reason)

    def _replay_failed(self, reason: str) -> None:
        # Reasons are few in practice; a peer inventing new ones must not grow this without end.
        if reason in self.replay_failures or len(self.replay_failures) < 32:
            self.replay_failures[reason] = self.replay_failures.get(reason, 0) + 1

    def _schedule(self, deadline: float | None) -> None:
        if deadline is None or deadline >= self._timer_at:
            return
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_later(max(0.0, deadline - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        self._timer = None
        self._timer_at = float("inf")
        self._advance(self._clock())
        self._schedule(self.recovery.deadline)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._clock()
        for live in self.liveness.values():
            change = live.poll(now)
            if change is not None:
                self._account(change)
                if self.on_event is not None:
                    self._hand_over(self.on_event, change)
        self._advance(now)
        self._housekeeping = self._loop.call_later(HOUSEKEEPING_INTERVAL, self._tick)


def _warm_kernels() -> None:
    """Load (or compile) the kernels before the first packet, not while a gap is open."""
    rows = np.zeros((1, 64), dtype=np.uint8)
    one = np.zeros(1, dtype=np.int64)
    mold.scan_packets(rows, one, 1, one.copy(), one.copy(), np.zeros(1, dtype=np.int8))
    offsets_of(b"\x00\x01x")
    # The replay client's: compiling them in the middle of a late join stalls the catch-up.
    framer = soup.Framer(soup.Side.SERVER)
    framer.feed(soup.encode_sequenced(b"\x00\x01x"))
    framer.take_sequenced()


class Latencies:
    """Repair latencies of one kind: every one counted, the last ``RECENT`` kept for the
    percentiles, so that memory and the work of a dashboard refresh (on the event loop) stay
    bounded over a trading day."""

    RECENT = 1 << 16

    def __init__(self) -> None:
        self._recent = np.zeros(self.RECENT, dtype=np.float64)
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self._recent[self.count % self.RECENT] = seconds
        self.count += 1
        self.max = max(self.max, seconds)

    def figures(self) -> dict[str, float | int]:
        """count and max over all; p50 and p99 over the last RECENT; milliseconds."""
        if not self.count:
            return {"count": 0}
        p50, p99 = np.percentile(self._recent[: min(self.count, self.RECENT)] * 1e3, [50, 99])
        return {"count": self.count, "p50": round(float(p50), 3), "p99": round(float(p99), 3),
                "max": round(self.max * 1e3, 3)}


def _without(config: RecoveryConfig, no_rerequest: bool, no_replay: bool) -> RecoveryConfig:
    return replace(
        config,
        rerequest=config.rerequest and not no_rerequest,
        replay=config.replay and not no_replay,
    )
