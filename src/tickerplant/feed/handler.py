"""The feed handler: the asyncio adapter around :class:`~tickerplant.receive.feed.FeedSession`.

Like aioquic's ``asyncio/protocol.py``, it only moves bytes and time: a readable socket is
drained into the session with ``now``; then what the session produced goes out (batches and
events to the consumers, re-requests to their socket, replays started or cancelled) and its one
timer is re-armed. Every decision is the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.io.datagrams import DatagramDrain, Socket, open_connected
from tickerplant.io.loop import LoopLag, Timer, clock
from tickerplant.io.multicast import RCVBUF, open_receiver
from tickerplant.io.ready import Priorities
from tickerplant.io.replay_client import ReplayClient
from tickerplant.ops.logs import DEFECT_REPORT, fields
from tickerplant.receive.events import (
    Batch,
    Delivery,
    Event,
    GapLost,
    LineStateChanged,
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
from tickerplant.wire import moldudp64 as mold
from tickerplant.wire import soupbintcp as soup
from tickerplant.wire.blocks import offsets_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FeedConfig(FeedSessionConfig):
    """The feed handler's settings: the session machine's (:class:`FeedSessionConfig`, given by
    name), and the lines, sockets and files around it."""

    line_a: Endpoint
    line_b: Endpoint | None
    interface: str = "127.0.0.1"
    rerequest: Endpoint | None = None
    replay: Endpoint | None = None
    replay_username: str = ""
    replay_password: str = ""
    replay_timeout: float = 60.0
    rcvbuf: int = RCVBUF
    capture: Path | None = None  # an ITCH file of the delivered stream
    # Of several feeds on one loop (a plant's channels), when several sockets are ready, the
    # higher priorities' are read first.
    priority: int = 0

    def __post_init__(self) -> None:
        FeedSessionConfig.__post_init__(self)  # (zero-argument super() fails in a slots dataclass)
        if self.rcvbuf < 65536:
            raise ConfigError("rcvbuf", f"{self.rcvbuf} bytes", "ask for at least 65536")
        if self.line_b is not None and self.line_b == self.line_a:
            raise ConfigError("line_b", "is line_a", "give line B its own group:port, or none")

    @property
    def lines(self) -> list[tuple[Source, Endpoint]]:
        lines = [(Source.LINE_A, self.line_a)]
        if self.line_b is not None:
            lines.append((Source.LINE_B, self.line_b))
        return lines


# Takes a snapshot of a session (its 10 bytes) where it stands, and returns the number its
# stream goes on from; whatever it raises, the session is joined by replay instead.
Snapshot = Callable[[bytes], Awaitable[int]]


class FeedHandler:
    def __init__(
        self,
        config: FeedConfig,
        on_batch: Callable[[Batch], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        priorities: Priorities | None = None,
        lag: LoopLag | None = None,
        snapshot: Snapshot | None = None,
    ) -> None:
        self.config = config
        # Several feeds' sockets on one loop, read by their priorities when several are ready
        # (None: as the loop finds them ready).
        self.priorities = priorities
        self.session = FeedSession(config, [source for source, _ in config.lines],
                                   rerequest=config.rerequest is not None,
                                   replay=config.replay is not None,
                                   snapshot=snapshot is not None)  # fmt: skip
        self._take_snapshot = snapshot
        self._snapshot: asyncio.Task[None] | None = None
        self.on_batch = on_batch
        self.on_event = on_event
        self.session_ended = asyncio.Event()
        self.consumer_errors = 0
        self._drains: dict[Source, DatagramDrain] = {}
        self._rcvbuf: dict[Source, int] = {}
        self._capture: BinaryIO | None = None
        self._replay: asyncio.Task[None] | None = None
        self._timer = Timer(self._on_timer)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._report_at = 0.0  # when unusable datagrams are next reported
        self._reported: dict[Source, int] = {}  # unusable datagrams reported so far, by source
        # The loop it shares with whatever the process runs beside it: probed by its own, or
        # by the one its owner gives every feed on that loop (and starts and closes itself).
        self._owns_lag = lag is None
        self._lag = lag if lag is not None else LoopLag()
        self._polled = False  # its sockets read by poll(), not when the loop sees them ready

    async def start(self) -> None:
        _warm_kernels()
        self._loop = asyncio.get_running_loop()
        if self._owns_lag:
            self._lag.start()
        cfg = self.config
        for source, group in cfg.lines:
            try:
                sock, self._rcvbuf[source] = open_receiver(group, cfg.interface, cfg.rcvbuf)
            except OSError as exc:
                raise ConfigError(
                    f"line_{source.label}", f"cannot join {group} on {cfg.interface} ({exc})",
                    "give a multicast group and the address of a local interface",
                ) from exc
            self._watch(sock, source)
        if cfg.rerequest is not None:
            self._watch(open_connected(cfg.rerequest), Source.REREQUEST)
        if cfg.capture is not None:
            self._capture = cfg.capture.open("wb")

    async def close(self) -> None:
        assert self._loop is not None
        if self._owns_lag:
            self._lag.close()
        self._report_defects(clock())  # the last of them, up to the end
        suspect = self.session.sequencer.suspect
        if suspect is not None:  # stopped before it could be decided: said, not dropped unsaid
            log.warning("stopped with a packet set aside undecided: %s, sequence %d, %d messages",
                        suspect.source.label, suspect.sequence, suspect.count,
                        extra=fields(event="suspect_undecided", source=suspect.source.label,
                                     sequence=suspect.sequence, count=suspect.count))  # fmt: skip
        for drain in self._drains.values():
            self._loop.remove_reader(drain.sock.fileno())
            drain.sock.close()
        self._drains.clear()
        self._timer.cancel()
        replay, snapshot = self._replay, self._snapshot
        self._cancel_replay()
        self._cancel_snapshot()
        for task in (replay, snapshot):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._capture is not None:
            self._capture.close()

    def figures(self) -> dict[str, Any]:
        """The session's figures and the sockets' (names in ``tickerplant.ops.figures``)."""
        figures = self.session.figures()
        drains = [(s, self._drains.get(s)) for s in Source]
        figures["rcvbuf_bytes"] = {s.label: self._rcvbuf.get(s, 0) for s in Source}
        figures["wakeups"] = {s.label: d.wakeups if d else 0 for s, d in drains}
        figures["socket_errors"] = {s.label: d.errors if d else 0 for s, d in drains}
        figures["consumer_errors"] = self.consumer_errors
        figures["loop_lag_seconds"] = self._lag.lag.figures()
        # The process's cyclic collector: a full collection (generation 2) holds the loop for
        # as long as it takes to look at every object not frozen (`tickerplant run`'s start).
        figures["gc_collections"] = {str(g): s["collections"] for g, s in enumerate(gc.get_stats())}
        return figures

    # ---- bytes and time in --------------------------------------------------------------------

    def _watch(self, sock: Socket, source: Source) -> None:
        assert self._loop is not None
        drain = DatagramDrain(sock, mold.Datagrams())
        self._drains[source] = drain
        if self.priorities is None:
            self._loop.add_reader(sock.fileno(), self._on_readable, source, drain)
        else:
            self.priorities.add_reader(sock.fileno(), self.config.priority,
                                       partial(self._on_ready, source, drain))  # fmt: skip

    def _on_ready(self, source: Source, drain: DatagramDrain) -> None:
        if self._drains.get(source) is drain:  # (not closed since it was noted ready)
            self._on_readable(source, drain)

    def _on_readable(self, source: Source, drain: DatagramDrain) -> int:
        n = drain.drain()
        if n:
            now = clock()
            self.session.receive_datagrams(source, drain.buffer, n, now)
            self._service()
            if now >= self._report_at:
                self._report_defects(now)
        return n

    def poll(self) -> int:
        """Read every socket once, ready or not, as a loop of non-blocking reads in turn does
        (``bench/channels.py`` sets one beside waiting for readiness); returns the datagrams
        read. The first call stops the loop watching them: the caller polls from then on."""
        assert self._loop is not None
        if not self._polled:
            self._polled = True
            for drain in self._drains.values():
                self._loop.remove_reader(drain.sock.fileno())
        return sum(self._on_readable(source, drain) for source, drain in self._drains.items())

    def _report_defects(self, now: float) -> None:
        """One line per source that dropped datagrams since the last report, with the counts:
        a flood of bad packets is told in a few lines, every one of them counted."""
        self._report_at = now + DEFECT_REPORT
        for source, fig in self.session.counters.sources.items():
            kinds = {d.name.lower(): n for d, n in fig.defects.items()}
            kinds["other_session"] = fig.foreign_packets
            total = sum(kinds.values())
            new = total - self._reported.get(source, 0)
            if new:
                self._reported[source] = total
                detail = ", ".join(f"{k} {v:,}" for k, v in kinds.items() if v)
                log.warning("%s: %d datagrams dropped as unusable since the last report "
                            "(so far: %s)", source.label, new, detail,
                            extra=fields(event="datagrams_dropped", source=source.label,
                                         dropped=new, **kinds))  # fmt: skip

    def _on_replay(self, session: bytes, first: int, count: int, blocks: bytes) -> None:
        self.session.receive_replay(session, first, count, blocks, clock())
        self._service()

    def _on_timer(self) -> None:
        self.session.handle_timer(clock())
        self._service()

    # ---- what the session produced, out -------------------------------------------------------

    def _service(self) -> None:
        session = self.session
        while (item := session.next_event()) is not None:
            if isinstance(item, Batch):
                if self._capture is not None:
                    self._capture.write(item.blocks)
                if self.on_batch is not None:
                    self._hand_over(self.on_batch, item)
            elif isinstance(item, ReplayStart):
                self._replay = asyncio.ensure_future(self._run_replay(item))
            elif isinstance(item, ReplayCancel):
                self._cancel_replay()
            elif isinstance(item, SnapshotStart):
                self._cancel_snapshot()  # (of a session since left)
                self._snapshot = asyncio.ensure_future(self._run_snapshot(item.session))
            else:
                if isinstance(item, SessionEnded):
                    self.session_ended.set()
                elif isinstance(item, SessionStarted):
                    # Joined another way meanwhile (heard from its first number, or a new
                    # session): a snapshot still under way is of no use.
                    self._cancel_snapshot()
                    if item.previous is not None:
                        self.session_ended.clear()
                _tell(item, (session.sequencer.session or b"").decode("ascii", "replace").strip())
                if self.on_event is not None:
                    self._hand_over(self.on_event, item)
        datagrams = session.datagrams_to_send()
        if datagrams:  # only when a re-request server is configured, so its socket is open
            sock = self._drains[Source.REREQUEST].sock
            for datagram in datagrams:
                try:
                    sock.send(datagram)
                except OSError:
                    session.rerequest_unsent()
        self._timer.arm(session.get_timer())

    def _hand_over(self, consumer: Callable[[Any], None], item: Delivery | Event) -> None:
        """A consumer's bug must not cost the other items of this wake-up, nor go unnoticed."""
        try:
            consumer(item)
        except Exception:
            self.consumer_errors += 1
            log.exception("consumer failed on %s; the stream goes on", type(item).__name__)

    async def _run_replay(self, request: ReplayStart) -> None:
        cfg = self.config
        assert cfg.replay is not None
        client = ReplayClient(
            cfg.replay.host,
            cfg.replay.port,
            request.session,
            partial(self._on_replay, request.session),
            cfg.replay_username,
            cfg.replay_password,
        )
        try:
            last = await client.fetch(request.first, request.end - 1, cfg.replay_timeout)
            ok, reason = last >= request.end - 1, client.stop_reason
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # Refused, rejected, cut, or a peer speaking nonsense: the replay failed, and the
            # session hands the gaps it covered back to recovery.
            ok, reason = False, f"{type(err).__name__}: {err}"
        self._replay = None
        if not ok:
            log.warning("replay of %d..%d failed: %s", request.first, request.end - 1, reason,
                        extra=fields(event="replay_failed", first=request.first,
                                     last=request.end - 1, reason=reason))  # fmt: skip
        self.session.replay_ended(ok, reason, clock())
        self._service()

    def _cancel_replay(self) -> None:
        if self._replay is not None:
            self._replay.cancel()
            self._replay = None

    async def _run_snapshot(self, session: bytes) -> None:
        assert self._take_snapshot is not None
        try:
            first = await self._take_snapshot(session)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # refused, cut, or a peer speaking nonsense: joined by replay
            self._snapshot = None
            self.session.snapshot_failed(session, f"{type(err).__name__}: {err}", clock())
        else:
            self._snapshot = None
            name = session.decode("ascii", "replace").strip()
            log.info("joined %s from a snapshot: its stream from %d", name, first,
                     extra=fields(event="snapshot_taken", session=name, first=first))
            self.session.snapshot_taken(session, first, clock())
        self._service()

    def _cancel_snapshot(self) -> None:
        if self._snapshot is not None:
            self._snapshot.cancel()
            self._snapshot = None


def _warm_kernels() -> None:
    """Load (or compile) the kernels before the first packet, not while a gap is open."""
    rows = np.zeros((1, 64), dtype=np.uint8)
    one = np.zeros(1, dtype=np.int64)
    mold.scan_packets(rows, one, 1, one.copy(), one.copy(), np.zeros(1, dtype=np.int8))
    offsets_of(b"\x00\x01x")
    # The replay client's: compiling them in the middle of a late join stalls the catch-up.
    framer = soup.Framer(soup.Side.SERVER)
    framer.feed(soup.encode_sequenced(b"\x00\x01x"))
    framer.next_sequenced()


def _tell(item: object, session: str) -> None:
    """The log line of a delivery or event an operator cares about (repairs are only counted);
    ``session``: the one followed (several channels' lines are told apart by it), if heard."""
    of = f" of {session}" if session else ""
    if isinstance(item, LineStateChanged):
        line, old, new = item.line.label, item.old.value, item.new.value
        level = logging.WARNING if new == "down" else logging.INFO
        log.log(level, "line %s%s: %s -> %s", line, of, old, new,
                extra=fields(event="line_state", line=line, old=old, state=new,
                             session=session))  # fmt: skip
    elif isinstance(item, GapLost):
        log.warning("gap lost%s: messages %d..%d (%d), seen on %s, after %.3f s", of,
                    item.start, item.end - 1, item.end - item.start, item.revealed_by.label,
                    item.age, extra=fields(event="gap_lost", start=item.start, end=item.end,
                                           source=item.revealed_by.label,
                                           session=session))  # fmt: skip
    elif isinstance(item, SuspectDecided):
        what = "heartbeat" if item.count < 0 else f"packet of {item.count} messages"
        verdict = ("accepted: the stream jumped there" if item.accepted
                   else "rejected as a stray: the lines went on near the stream")  # fmt: skip
        log.warning("%s at sequence %d on %s, far beyond the stream and unconfirmed for %.1f s:"
                    " %s", what, item.sequence, item.source.label, item.age, verdict,
                    extra=fields(event="suspect_decided", source=item.source.label,
                                 sequence=item.sequence, count=item.count,
                                 accepted=item.accepted))  # fmt: skip
    elif isinstance(item, SessionStarted):
        name = item.session.decode("ascii", "replace").strip()
        log.info("session %s started", name, extra=fields(event="session_started", session=name))
    elif isinstance(item, SessionEnded):
        name = item.session.decode("ascii", "replace").strip()
        log.info("session %s ended before message %d", name, item.next_sequence,
                 extra=fields(event="session_ended", session=name,
                              next_sequence=item.next_sequence))  # fmt: skip
