"""The MoldUDP64 lines in a packet capture, arbitrated into the stream once, in order.

:class:`CaptureFeed` picks the lines among the streams a capture holds
(:func:`~tickerplant.capture.streams.streams` lists them: given, or every stream of the one
session found), and feeds them through the live feed handler's own machine,
:class:`~tickerplant.receive.feed.FeedSession`, with the capture's clock as ``now`` and nothing to
repair from but the other line: the stream comes out as the plant would have delivered it, and a
range missing from every captured line comes out as a lost range with its exact bounds.

The session machine is fed as the live handler's event loop feeds it, each line's packets of a
window (up to WINDOW packets of the capture) drained in turn, except that consecutive packets of
one line are joined into one MoldUDP64 packet first: arbitration decides by sequence number, so
one packet of a run says what its packets say, and a capture's millions of packets cost Python a
few thousand calls. Each message's capture time is that of its first copy on any line, kept in a
ring indexed by sequence number as the packets are read.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from tickerplant.capture import pcap
from tickerplant.capture.itch_file import CHUNK_BYTES, ItchFile
from tickerplant.capture.pcap import CaptureError
from tickerplant.capture.streams import (
    DATA,
    NOT_MOLD,
    OTHER,
    CaptureSummary,
    Reading,
    Stream,
    streams,
)
from tickerplant.endpoint import Endpoint
from tickerplant.jit import kernel
from tickerplant.receive.events import (
    Batch,
    GapLost,
    SessionEnded,
    SessionStarted,
    Source,
    SuspectDecided,
)
from tickerplant.receive.feed import LOST_RANGES_KEPT, FeedSession, FeedSessionConfig
from tickerplant.receive.recovery import RecoveryConfig
from tickerplant.wire import moldudp64 as mold
from tickerplant.wire.blocks import U8

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]

_RING = 1 << 22  # messages whose first capture time is kept (4M: seconds of a busy feed)
_ROW_BYTES = 1 << 16  # a joined packet: at most this long
_ROWS = 256
GIVE_UP_AFTER = 1.0  # capture seconds a gap waits for the other line's copy


# --- kernels -------------------------------------------------------------------------------------


@kernel
def _first_seen(
    seq: I64, count: I64, time: I64, picked: I64, tags: I64, times: I64, floor: int
) -> None:  # pragma: no cover - compiled
    """Note the capture time of each message's first copy among the ``picked`` data packets.

    A slot is taken over only from a message below ``floor`` (delivered already): a stray far
    ahead must not evict the times of the stream it strayed into."""
    mask = tags.shape[0] - 1
    for i in picked:
        t = time[i]
        for m in range(seq[i], seq[i] + count[i]):
            slot = m & mask
            if tags[slot] < m and tags[slot] < floor:
                tags[slot] = m
                times[slot] = t


@kernel
def _times_of(first: int, n: int, tags: I64, times: I64, out: I64) -> int:  # pragma: no cover
    """The first capture times of messages [first, first + n) into ``out``; the number of the
    first whose time the ring no longer holds, or 0."""
    mask = tags.shape[0] - 1
    for k in range(n):
        slot = (first + k) & mask
        if tags[slot] != first + k:
            return first + k
        out[k] = times[slot]
    return 0


@kernel
def _join(
    buf: U8, offset: I64, length: npt.NDArray[np.int32], what: npt.NDArray[np.int8],
    seq: I64, count: I64, picked: I64, start: int, rows: U8, lengths: I64,
) -> tuple[int, int]:  # fmt: skip  # pragma: no cover - compiled
    """Copy the ``picked`` packets from ``start`` into ``rows``, joining each run of data packets
    that follow one another into one packet. Returns (rows filled, packets consumed)."""
    width = rows.shape[1]
    filled = 0
    i = start
    while i < picked.shape[0] and filled < rows.shape[0]:
        k = picked[i]
        p = offset[k]
        size = length[k]
        row = rows[filled]
        if what[k] != DATA:  # as it came: heartbeats, end of session, what the machine rejects
            keep = min(size, width)
            row[:keep] = buf[p : p + keep]
            lengths[filled] = size
            filled += 1
            i += 1
            continue
        row[:size] = buf[p : p + size]
        end = seq[k] + count[k]
        total = count[k]
        used = size
        i += 1
        while i < picked.shape[0]:
            j = picked[i]
            more = length[j] - 20
            if what[j] != DATA or seq[j] != end or total + count[j] > 0xFFFE:
                break
            if used + more >= width:  # a row that fills its width reads as cut by the kernel
                break
            q = offset[j]
            row[used : used + more] = buf[q + 20 : q + 20 + more]
            used += more
            end += count[j]
            total += count[j]
            i += 1
        row[18] = total >> 8
        row[19] = total & 0xFF
        lengths[filled] = used
        filled += 1
    return filled, i


# --- arbitration ---------------------------------------------------------------------------------


def _choose(summary: CaptureSummary, lines: list[Endpoint], session: str | None,
            path: str) -> tuple[list[Stream], str]:  # fmt: skip
    """The streams to arbitrate and their session, or a CaptureError saying what to choose."""
    found = summary.streams
    listing = "; ".join(f"{s.line} session {s.session.strip() or '(blank)'}" for s in found)
    if not found:
        kinds = ", ".join(f"{k} {v:,}" for k, v in summary.counters.by_kind.items()) or "none"
        raise CaptureError(f"{path}: no MoldUDP64 in this capture ({summary.counters.packets:,} "
                           f"packets: {kinds}; {summary.not_moldudp64:,} UDP datagrams that are "
                           "not MoldUDP64)")  # fmt: skip
    if lines:
        if len(lines) > 2:
            raise CaptureError(f"--line: {len(lines)} lines given; a feed has lines A and B")
        for line in lines:
            if not any(s.line == line for s in found):
                raise CaptureError(f"--line {line}: no MoldUDP64 to {line} in {path}; it holds: "
                                   f"{listing}")  # fmt: skip
        found = [s for line in lines for s in found if s.line == line]
    if session is not None:
        found = [s for s in found if s.session.strip() == session.strip()]
        if not found:
            raise CaptureError(f"--session {session}: not on those lines of {path}; they carry: "
                               f"{listing}")  # fmt: skip
    sessions = sorted({s.session for s in found})
    if len(sessions) > 1:
        raise CaptureError(f"{path} holds {len(sessions)} sessions ("
                           + ", ".join(s.strip() for s in sessions)
                           + f"): pick one with --session; streams: {listing}")  # fmt: skip
    if len(found) > 2:
        multicast = [s for s in found if ipaddress.IPv4Address(s.line.host).is_multicast]
        if len(multicast) in (1, 2):
            found = multicast
        else:
            raise CaptureError(f"{path}: {len(found)} streams of session {sessions[0].strip()}; "
                               f"pick lines A and B with --line GROUP:PORT: {listing}")  # fmt: skip
    return found, sessions[0]



class CaptureFeed:
    """A capture's lines as the arbitrated stream: :meth:`chunks` yields block streams of whole
    messages with each message's capture time; ``lost`` lists the ranges no line carried."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        lines: list[Endpoint] | None = None,
        session: str | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        give_up_after: float = GIVE_UP_AFTER,
    ) -> None:
        self.path = os.fspath(path)
        self.capture = pcap.Capture(self.path)
        try:
            self.summary = streams(self.capture)
            self.lines, self.session = _choose(self.summary, lines or [], session, self.path)
        except CaptureError:
            self.capture.close()
            raise
        self.chunk_bytes = chunk_bytes
        self.give_up_after = give_up_after
        self.lost: list[tuple[int, int]] = []
        # Packets far beyond the stream that no second packet confirmed: each decided, kept
        # with its numbers (the first LOST_RANGES_KEPT; the figures count them all).
        self.suspects: list[SuspectDecided] = []
        self.messages = 0
        self.ended = False
        first = [s.first_sequence for s in self.lines if s.first_sequence]
        self.first_sequence = min(first) if first else 1
        self.feed = FeedSession(FeedSessionConfig(
            first_sequence=self.first_sequence,
            recovery=RecoveryConfig(line_wait=0.0, rerequest=False, replay=False,
                                    give_up_after=give_up_after),
            max_held_bytes=1 << 30,
        ), (Source.LINE_A, Source.LINE_B)[: len(self.lines)])  # fmt: skip

    def close(self) -> None:
        self.capture.close()

    def figures(self) -> dict[str, Any]:
        """The capture's listing and what arbitration made of it, JSON-ready."""
        f = self.feed.figures()
        c = self.summary.counters
        return {
            "streams": [s.to_dict() for s in self.summary.streams],
            "lines": {src.label: str(s.line) for src, s in zip(Source, self.lines, strict=False)},
            "session": self.session.strip(),
            "first_sequence": self.first_sequence,
            "delivered_messages": f["delivered_messages"],
            "lost_messages": f["lost_messages"],
            "lost_ranges": [[a, b] for a, b in self.lost],  # [start, end), as the plant says
            "suspect_packets": f["suspect_packets"],
            "suspects": [
                {"line": d.source.label, "sequence": d.sequence, "count": d.count,
                 "accepted": d.accepted}
                for d in self.suspects
            ],
            "duplicate_messages": f["duplicate_messages"],
            "gaps_seen": {k: v for k, v in f["gaps_seen"].items() if k in ("a", "b")},
            "gaps_repaired": {k: f["gaps_repaired"][k]["line"] for k in ("a", "b")},
            "ended": self.ended,
            "packets": c.packets,
            "packets_by_kind": dict(c.by_kind),
            "link_types": dict(c.link_types),
            "skipped_blocks": dict(c.skipped_blocks),
            "rerequests": dict(self.summary.requests),
            "not_moldudp64": self.summary.not_moldudp64,
        }

    def chunks(self) -> Iterator[tuple[bytes, I64]]:
        """(block stream, capture time of each message in it), about ``chunk_bytes`` each."""
        reading = Reading(self.capture)
        wanted = [(int(ipaddress.IPv4Address(s.line.host)), s.line.port) for s in self.lines]
        rows = [mold.Datagrams(_ROWS, _ROW_BYTES) for _ in wanted]
        tags = np.zeros(_RING, np.int64)
        times = np.zeros(_RING, np.int64)
        out: list[bytes] = []
        out_times: list[I64] = []
        size = 0
        index = -1
        now = 0.0
        for packets, what, seq, count, session in reading.windows():
            if index < 0:  # the session's number in this reading (the same order as the listing)
                names = [reading.name(k) for k in range(reading.known)]
                index = names.index(self.session) if self.session in names else -1
            n = len(packets)
            if n == 0:
                continue
            now = float(packets.time[-1]) / 1e9
            picks = []
            for dst, port in wanted:
                on_line = (packets.dst == dst) & (packets.port == port) & (what != OTHER)
                ours = on_line & ((session == index) | (what == NOT_MOLD))
                picks.append(np.flatnonzero(ours))
            data = np.sort(np.concatenate(picks))
            data = data[what[data] == DATA]
            _first_seen(seq, count, packets.time, data, tags, times,
                        self.feed.sequencer.expected)
            for source, picked, buffer in zip(Source, picks, rows, strict=False):
                start = 0
                while start < picked.shape[0]:
                    filled, start = _join(self.capture.buf, packets.offset, packets.length, what,
                                          seq, count, picked, start, buffer.rows,
                                          buffer.lengths)  # fmt: skip
                    self.feed.receive_datagrams(source, buffer, filled, now)
            timer = self.feed.get_timer()
            if timer is not None and timer <= now:
                self.feed.handle_timer(now)
            for blocks, stamps in self._deliveries(tags, times):
                out.append(blocks)
                out_times.append(stamps)
                size += len(blocks)
            if size >= self.chunk_bytes:
                yield b"".join(out), np.concatenate(out_times)
                out, out_times, size = [], [], 0
        # The capture is over: what is still missing will never come, and a packet set aside
        # as suspect will never be confirmed; it is decided (and told) here.
        self.feed.input_ended(now)
        sequencer = self.feed.sequencer
        while sequencer.gaps:
            open_gaps = len(sequencer.gaps)
            now += self.give_up_after + 1.0
            self.feed.handle_timer(now)
            if len(sequencer.gaps) >= open_gaps:  # never silently: what is held must come out
                raise CaptureError(f"{self.path}: {open_gaps} gaps still open after the capture "
                                   "ended, the messages past them undelivered")  # fmt: skip
        for blocks, stamps in self._deliveries(tags, times):
            out.append(blocks)
            out_times.append(stamps)
        if out:
            yield b"".join(out), np.concatenate(out_times)

    def _deliveries(self, tags: I64, times: I64) -> Iterator[tuple[bytes, I64]]:
        while (item := self.feed.next_event()) is not None:
            if isinstance(item, Batch):
                stamps = np.empty(item.count, np.int64)
                missing = _times_of(item.first, item.count, tags, times, stamps)
                if missing:
                    raise CaptureError(
                        f"{self.path}: message {missing} was delivered after more than {_RING:,} "
                        "messages behind the other line's copy: the lines are too far apart in "
                        "this capture to arbitrate")  # fmt: skip
                self.messages += item.count
                yield item.blocks, stamps
            elif isinstance(item, GapLost):
                self.lost.append((item.start, item.end))
            elif isinstance(item, SessionEnded):
                self.ended = True
            elif isinstance(item, SessionStarted) and item.previous is not None:
                raise CaptureError(f"{self.path}: the session changed within the chosen lines")
            elif isinstance(item, SuspectDecided) and len(self.suspects) < LOST_RANGES_KEPT:
                self.suspects.append(item)
            # Repairs are counted in the figures already; line states and replays (none
            # configured) have nothing to say about a capture.


def is_capture_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (not standard input) starts with a pcap or pcapng magic number."""
    if os.fspath(path) == "-":
        return False
    with open(path, "rb") as f:
        return pcap.is_capture(f.read(4))


def read_messages(path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Block streams of a day's messages from an ITCH file (plain or gzip) or a capture of its
    MoldUDP64 lines (arbitrated), told apart by their first bytes."""
    if not is_capture_file(path):
        yield from ItchFile(path, chunk_bytes).chunks()
        return
    feed = CaptureFeed(path, chunk_bytes=chunk_bytes)
    try:
        for blocks, _ in feed.chunks():
            yield blocks
    finally:
        feed.close()
    # The caller numbers what it is given anew (the simulator's own session): what the capture
    # lacked is said here, or it would vanish between the file and the wire.
    f = feed.figures()
    if f["lost_messages"] or f["suspects"]:
        log.warning("%s: %d messages missing from every captured line %s; far packets decided: "
                    "%s", feed.path, f["lost_messages"], f["lost_ranges"][:10],
                    f["suspects"][:10])  # fmt: skip
