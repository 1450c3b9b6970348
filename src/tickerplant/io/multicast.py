"""Multicast sockets: joining a line and sending to one, with the buffer sizes the kernel granted.

Loopback works without touching ``lo``: the receiver binds the group and port and joins on
127.0.0.1; the sender names the outgoing interface and keeps multicast loopback on.

A line can keep a :class:`SentLog`: each data packet it handed the kernel, with the monotonic
clock read just before the send call (issue 19's measure (b) joins it to clients' reads).
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from tickerplant.endpoint import Endpoint, ipv4
from tickerplant.io import mmsg
from tickerplant.ops.config import check
from tickerplant.wire import moldudp64 as mold
from tickerplant.wire.blocks import I64, U8

RCVBUF = 64 << 20  # asked for a line's socket: ~0.3 s of a busy feed while the loop is away
# Linux's SO_RCVBUFFORCE / SO_SNDBUFFORCE: as root they pass net.core.[rw]mem_max, which is
# small on many hosts (4 MiB here) and would cap a feed handler's burst tolerance.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


def _grow_buffer(sock: socket.socket, force: int, plain: int, size: int) -> int:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
    # Linux reports twice the usable size it reserved (bookkeeping overhead included).
    return sock.getsockopt(socket.SOL_SOCKET, plain)


def open_receiver(group: Endpoint, interface: str, rcvbuf: int) -> tuple[socket.socket, int]:
    """A non-blocking socket joined to ``group`` on ``interface``; returns it and SO_RCVBUF."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        granted = _grow_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
        # Binding the group address (not INADDR_ANY) keeps other groups on the same port out.
        sock.bind((group.host, group.port))
        mreq = struct.pack("4s4s", socket.inet_aton(group.host), socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, granted


def open_sender(
    interface: str, ttl: int = 1, loopback: bool = True, sndbuf: int = 4 << 20
) -> tuple[socket.socket, int]:
    """A non-blocking socket that sends multicast out of ``interface``; returns it and SO_SNDBUF."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if loopback else 0)
        granted = _grow_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, granted


DEFAULT_SNDBUF = 8 << 20

# A MoldUDP64 header's sequence number (u64) and message count (u16), after the session.
_SEQUENCE_AND_COUNT = np.arange(mold.SESSION_LEN, mold.HEADER_LEN, dtype=np.int64)
SENT_LOG_DTYPE = np.dtype([("line", "S1"), ("first", "<i8"), ("count", "<i8"), ("ns", "<i8"),
                           ("channel", "<u2")])  # fmt: skip
Send = Callable[[bytes | memoryview], int]


class SentLog:
    """The data packets a line sent: each one's first sequence number, message count, and
    ``time.monotonic_ns()`` just before the send call that carried it.

    A sendmmsg call is recorded as a whole: one gather of its packets' headers and one clock
    read, no Python per packet. Headers are decoded, and heartbeats and ends of session dropped,
    only in :meth:`records`.
    """

    def __init__(self, channel: int = 1) -> None:
        self.channel = channel  # which of the exchange's channels the line is (from 1)
        self._heads: list[U8] = []  # each packet's sequence and count bytes, per send call
        self._ns = array("q")  # per send call
        self._packets = array("q")  # per send call

    def frames(self, frames: U8, starts: I64, ns: int) -> None:
        """The packets at ``starts`` in ``frames`` went out in one call at ``ns``."""
        self._heads.append(frames[starts[:, None] + _SEQUENCE_AND_COUNT])
        self._ns.append(ns)
        self._packets.append(starts.shape[0])

    def packet(self, packet: bytes | memoryview, ns: int) -> None:
        # Copied: a publisher's packets are views of a buffer it reuses for the next slice.
        head = np.frombuffer(packet, np.uint8, _SEQUENCE_AND_COUNT.shape[0], mold.SESSION_LEN)
        self._heads.append(head.reshape(1, -1).copy())
        self._ns.append(ns)
        self._packets.append(1)

    def sender(self, send: Send) -> Send:
        """``send``, recording each packet it took (one send call per packet: the fallback and
        backlog paths, already Python per packet)."""

        def logged(packet: bytes | memoryview) -> int:
            ns = time.monotonic_ns()
            sent = send(packet)
            self.packet(packet, ns)
            return sent

        return logged

    def records(self, line: str) -> npt.NDArray[np.void]:
        """The data packets in the order sent, as :data:`SENT_LOG_DTYPE` records of ``line``."""
        width = _SEQUENCE_AND_COUNT.shape[0]
        heads = np.concatenate(self._heads) if self._heads else np.empty((0, width), np.uint8)
        first = heads[:, :8].copy().view(">u8").reshape(-1)
        count = heads[:, 8:].copy().view(">u2").reshape(-1)
        ns = np.repeat(np.array(self._ns, dtype=np.int64), np.array(self._packets, dtype=np.int64))
        data = (count != mold.HEARTBEAT) & (count != mold.END_OF_SESSION)
        out = np.empty(int(data.sum()), dtype=SENT_LOG_DTYPE)
        out["line"] = line
        out["first"] = first[data]
        out["count"] = count[data]
        out["ns"] = ns[data]
        out["channel"] = self.channel
        return out


def write_sent_log(file: BinaryIO, lines: Sequence[Line]) -> None:
    """Every logged line's data packets into ``file`` (.npy), in the order sent across lines."""
    parts = [line.sent_log.records(line.name) for line in lines if line.sent_log is not None]
    records = np.concatenate(parts) if parts else np.empty(0, SENT_LOG_DTYPE)
    np.save(file, records[np.argsort(records["ns"], kind="stable")], allow_pickle=False)


_U64 = npt.NDArray[np.uint64]


def _mix(z: _U64) -> _U64:
    """splitmix64's finaliser: a well-spread 64-bit hash, vectorised (uint64 arithmetic wraps)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def drop_mask(
    seed: int, line: int, sequences: npt.NDArray[np.int64], probability: float
) -> list[bool]:
    """Which packets (by first sequence number) line ``line`` skips: same seed, same answer."""
    key = _mix(np.array([(seed * 0x9E3779B97F4A7C15 + line) & 0xFFFFFFFFFFFFFFFF], np.uint64))
    uniform = (_mix(sequences.astype(np.uint64) + key) >> np.uint64(11)) * (1.0 / (1 << 53))
    mask: list[bool] = (uniform < probability).tolist()
    return mask



@dataclass(frozen=True, slots=True)
class LineConfig:
    """Where one line goes: a multicast group and port, leaving through ``interface``."""

    group: str
    port: int
    interface: str = "127.0.0.1"
    ttl: int = 1
    loopback: bool = True
    drop: float = 0.0  # probability of skipping a data packet on this line (loss injection)

    def __post_init__(self) -> None:
        multicast = ipv4(self.group, "group").is_multicast
        check("group", multicast, self.group, "use a multicast group, 224.0.0.0-239.255.255.255")
        check("port", 0 < self.port < 65536, self.port, "use 1..65535")
        ipv4(self.interface, "interface")
        check("ttl", 0 <= self.ttl <= 255, self.ttl, "use 0..255 (1 stays on the subnet)")
        check("drop", 0 <= self.drop < 1, self.drop, "give a probability in [0, 1)")


class Line:
    """One line's non-blocking UDP socket (connected to its group) and its counters."""

    def __init__(
        self,
        name: str,
        config: LineConfig,
        sndbuf: int = DEFAULT_SNDBUF,
        sent_log: SentLog | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.sent_log = sent_log
        sock, self.sndbuf = open_sender(config.interface, config.ttl, config.loopback, sndbuf)
        try:
            # A connected socket skips the per-send address parsing and route lookup.
            sock.connect((config.group, config.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.sent = 0  # packets handed to the kernel
        self.dropped = 0  # data packets skipped on purpose (loss injection)
        self.retries = 0  # sends that found the socket buffer full; the packet waits in backlog
        self.errors = 0  # sends that failed otherwise; the packet is lost on this line
        self.backlog: deque[bytes] = deque()
        self._mmsg = mmsg.Sender(sock) if mmsg.AVAILABLE else None

    def transmit(self, packets: Sequence[bytes | memoryview]) -> None:
        """Send ``packets`` in order, keeping those the kernel cannot take yet in the backlog."""
        if self.backlog:
            self.backlog.extend(map(bytes, packets))
            self.flush()
            return
        send = self._send()
        failed = 0
        for index, packet in enumerate(packets):
            try:
                send(packet)
            except BlockingIOError:
                self._hold(packets, index, failed)
                return
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._hold(packets, index, failed)
                    return
                failed += 1
        self.sent += len(packets) - failed
        self.errors += failed

    def transmit_frames(self, frames: U8, starts: I64, ends: I64) -> None:
        """Send ``frames[starts[i]:ends[i]]`` in order: one sendmmsg per call where available."""
        if self._mmsg is None or self.backlog:
            view = memoryview(frames.data)
            self.transmit([view[a:b] for a, b in zip(starts.tolist(), ends.tolist(), strict=True)])
            return
        done = 0
        total = len(starts)
        log = self.sent_log
        while done < total:
            ns = time.monotonic_ns() if log is not None else 0
            try:
                sent = self._mmsg.send(frames, starts[done:], ends[done:])
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    self.errors += 1  # this packet is lost on this line; the rest go on
                    done += 1
                    continue
                sent = 0
            if sent == 0:
                self.retries += 1
                view = memoryview(frames.data)
                rest = zip(starts[done:].tolist(), ends[done:].tolist(), strict=True)
                self.backlog.extend(bytes(view[a:b]) for a, b in rest)
                return
            self.sent += sent
            if log is not None:
                log.frames(frames, starts[done : done + sent], ns)
            done += sent

    def _hold(self, packets: Sequence[bytes | memoryview], index: int, failed: int) -> None:
        """The kernel refused ``packets[index]`` for now: it and the rest wait in the backlog.

        They are copied: a publisher's packets are views of a buffer it reuses for the next slice.
        """
        self.retries += 1
        self.sent += index - failed
        self.errors += failed
        self.backlog.extend(map(bytes, packets[index:]))

    def flush(self) -> bool:
        """Retry the backlog; True when it is empty."""
        backlog = self.backlog
        send = self._send()
        while backlog:
            try:
                send(backlog[0])
            except BlockingIOError:
                self.retries += 1
                return False
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.retries += 1
                    return False
                self.errors += 1
            else:
                self.sent += 1
            backlog.popleft()
        return True

    def _send(self) -> Send:
        # Looked up per call, not kept: tests swap ``sock`` for a socket pair.
        return self.sock.send if self.sent_log is None else self.sent_log.sender(self.sock.send)

    def close(self) -> None:
        self.sock.close()


INTERLEAVE = 16  # packets sent on one line before the other line's turn
RETRY_DELAY = 0.001  # a line whose socket was full tries its backlog again this soon
MAX_BLOCKS = mold.MAX_PACKET - mold.HEADER_LEN  # message blocks a packet carries


class Downstream:
    """A MoldUDP64 session's sending end, on its lines: runs of whole messages packed into
    packets and framed by compiled calls into one reused buffer (nothing allocated per packet,
    no fresh memory faulted in), each packet sent on every line that keeps it: loss is injected
    as each line's ``drop`` says (:func:`drop_mask` of ``seed`` and the line's number, from
    ``channel`` times the lines: the same packets for the same seed, line and numbers). The
    lines take turns every :data:`INTERLEAVE` packets, so the copies of a packet leave within a
    few tens of microseconds of each other, as from an exchange's two feeds, instead of a
    whole run apart."""

    def __init__(self, lines: Sequence[Line], channel: int = 0, seed: int = 0,
                 packets: int = 128) -> None:  # fmt: skip
        if not lines:
            raise ValueError("a session needs at least one line")
        self.lines = list(lines)
        self.channel = channel  # from 0
        self.seed = seed
        self._starts = np.empty(packets, dtype=np.int64)
        self._counts = np.empty(packets, dtype=np.int64)
        self._frames = np.empty(packets * mold.MAX_PACKET, dtype=np.uint8)
        self._bounds = np.empty(packets + 1, dtype=np.int64)
        self._drops = any(line.config.drop > 0 for line in self.lines)
        self._session = b""
        self._session_array = np.zeros(0, dtype=np.uint8)

    def pack(self, blocks: U8) -> tuple[int, int]:
        """The packets the first whole messages of ``blocks`` fill (at most the buffer's), and
        the bytes they take."""
        packets, used = mold.pack_runs(blocks, MAX_BLOCKS, self._starts, self._counts)
        return int(packets), int(used)

    def send_packed(self, session: bytes, blocks: U8, packets: int, first: int) -> int:
        """Frame the ``packets`` packets :meth:`pack` cut of ``blocks``, numbered from
        ``first``, and send them on the lines; returns the number after the last."""
        if session is not self._session:
            self._session, self._session_array = session, np.frombuffer(session, np.uint8)
        end = mold.frame_packets(blocks, blocks.shape[0], self._starts, self._counts, packets,
                                 self._session_array, first, self._frames,
                                 self._bounds)  # fmt: skip
        keep = self._kept(first, packets) if self._drops else None
        if packets == 1 and keep is None:  # a publish of tier-2's, mostly: the least work
            packet = self._frames.data[: int(self._bounds[1])]
            for line in self.lines:
                line.transmit([packet])
            return int(end)
        starts, ends = self._bounds[:packets], self._bounds[1 : packets + 1]
        for lo in range(0, packets, INTERLEAVE):
            part = slice(lo, lo + INTERLEAVE)
            for n, line in enumerate(self.lines):
                kept = keep[n] if keep is not None else None
                if kept is None:
                    line.transmit_frames(self._frames, starts[part], ends[part])
                else:
                    line.transmit_frames(self._frames, starts[part][kept[part]],
                                         ends[part][kept[part]])  # fmt: skip
        return int(end)

    def _kept(self, first: int, packets: int) -> list[npt.NDArray[np.bool_] | None]:
        """Each line's packets kept (None: all of them), the loss injected counted."""
        counts = self._counts[:packets]
        sequences = first + np.cumsum(counts) - counts
        keep: list[npt.NDArray[np.bool_] | None] = []
        for number, line in enumerate(self.lines, start=self.channel * len(self.lines)):
            if line.config.drop <= 0:
                keep.append(None)
                continue
            dropped = np.asarray(drop_mask(self.seed, number, sequences, line.config.drop),
                                 dtype=np.bool_)  # fmt: skip
            line.dropped += int(dropped.sum())
            keep.append(~dropped)
        return keep

    def send(self, session: bytes, blocks: U8, first: int) -> int:
        """Every message of ``blocks``, numbered from ``first``; returns the packets."""
        pos = total = 0
        while pos < blocks.shape[0]:
            packets, used = self.pack(blocks[pos:] if pos else blocks)
            first = self.send_packed(session, blocks[pos : pos + used], packets, first)
            pos += used
            total += packets
        return total

    def broadcast(self, packet: bytes) -> None:
        """One packet on every line (a heartbeat, an End of Session)."""
        for line in self.lines:
            line.transmit([packet])
