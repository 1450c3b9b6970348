"""MoldUDP64: downstream packets (messages, heartbeat, end of session) and request packets.

Layout (big-endian): session (10, ASCII) | sequence number (u64) | message count (u16) | blocks.
Count 0 is a heartbeat and 0xFFFF end of session; both carry the next sequence number. A request
is the bare header sent unicast, its count being how many messages are wanted.

The checks live in one compiled function, :func:`scan_packets`, that the feed handler runs once per
wake-up over every datagram it drained; :func:`decode_packet` runs the same checks on one packet.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from tickerplant.errors import MalformedPacket
from tickerplant.jit import kernel
from tickerplant.wire.blocks import I64, U8, as_array, iter_messages, join_messages

DRAIN_ROWS = 512  # datagrams read per socket per wake-up
DATAGRAM_WIDTH = 2048  # bytes per row: above any MoldUDP64 packet on an Ethernet path

HEADER = struct.Struct(">10sQH")
HEADER_LEN = HEADER.size
SESSION_LEN = 10
HEARTBEAT = 0
END_OF_SESSION = 0xFFFF
MAX_COUNT = 0xFFFE
# Seconds of silence after which a publisher sends a heartbeat: venues use one second, and a
# receiver judges a line's health in multiples of it.
HEARTBEAT_INTERVAL = 1.0
# How long a session that ended goes on saying so, one End of Session a heartbeat interval: a
# receiver that missed the first hears another.
END_OF_SESSION_SECONDS = 3.0
# Kept under a 1,500-byte Ethernet MTU with room for IP/UDP headers and VLAN tags, as venues do.
MAX_PACKET = 1400


class Defect(IntEnum):
    """What is wrong with a datagram; the value is what :func:`scan_packets` writes."""

    NONE = 0
    SHORT_HEADER = 1  # fewer than 20 bytes
    TRUNCATED_BLOCK = 2  # a block's length runs past the end of the datagram
    COUNT_MISMATCH = 3  # the blocks present do not match the message count
    TRUNCATED_DATAGRAM = 4  # the datagram filled the receive buffer: the kernel cut it
    BAD_SEQUENCE = 5  # sequence number 0, or 2**63 and above: no session gets there


@dataclass(frozen=True, slots=True)
class Packet:
    session: bytes
    sequence: int
    count: int  # messages carried; 0 heartbeat, 0xFFFF end of session
    blocks: bytes  # the message blocks as one block stream

    @property
    def is_heartbeat(self) -> bool:
        return self.count == HEARTBEAT

    @property
    def is_end_of_session(self) -> bool:
        return self.count == END_OF_SESSION

    @property
    def messages(self) -> list[bytes]:
        return list(iter_messages(self.blocks))


@dataclass(frozen=True, slots=True)
class Request:
    session: bytes
    sequence: int
    count: int


def session_bytes(session: str | bytes) -> bytes:
    """A session name as its 10 wire bytes (ASCII, space-padded on the right)."""
    raw = session.encode("ascii") if isinstance(session, str) else session
    if len(raw) > SESSION_LEN:
        raise ValueError(f"session {raw!r} is longer than {SESSION_LEN} bytes")
    return raw.ljust(SESSION_LEN, b" ")


def encode_packet(session: bytes, sequence: int, messages: list[bytes]) -> bytes:
    return encode_blocks(session, sequence, len(messages), join_messages(messages))


def encode_blocks(session: bytes, sequence: int, count: int, blocks: bytes) -> bytes:
    """A packet from an already framed block stream of ``count`` messages."""
    return HEADER.pack(session, sequence, count) + blocks


def encode_heartbeat(session: bytes, next_sequence: int) -> bytes:
    return HEADER.pack(session, next_sequence, HEARTBEAT)


def encode_end_of_session(session: bytes, next_sequence: int) -> bytes:
    return HEADER.pack(session, next_sequence, END_OF_SESSION)


def encode_request(session: bytes, sequence: int, count: int) -> bytes:
    return HEADER.pack(session, sequence, count)


@kernel
def _check(buf: U8, length: int) -> tuple[int, int, int]:  # pragma: no cover - compiled
    """(defect, sequence, count) of the datagram in ``buf[:length]``."""
    if length < 20:
        return 1, 0, 0
    if buf[10] >= 0x80:
        return 5, 0, 0
    seq = 0
    for i in range(10, 18):
        seq = (seq << 8) | int(buf[i])
    count = (int(buf[18]) << 8) | int(buf[19])
    if seq == 0:
        return 5, seq, count
    if count == 0 or count == 0xFFFF:
        return (0 if length == 20 else 3), seq, count
    pos = 20
    seen = 0
    while seen < count:
        if pos == length:
            return 3, seq, count
        if pos + 2 > length:
            return 2, seq, count
        size = (int(buf[pos]) << 8) | int(buf[pos + 1])
        pos += 2 + size
        if pos > length:
            return 2, seq, count
        seen += 1
    if pos != length:
        return 3, seq, count
    return 0, seq, count


class Datagrams:
    """A receive buffer: ``rows`` datagrams of up to ``width`` bytes, filled by io/ (one drain of a
    socket) and read by :func:`scan_packets`.

    One 2-D array, so that a drained batch is checked by one compiled call; ``views`` are the
    rows as memoryviews, sliced without a copy.
    """

    def __init__(self, rows: int = DRAIN_ROWS, width: int = DATAGRAM_WIDTH) -> None:
        self.rows = np.zeros((rows, width), dtype=np.uint8)
        self.lengths = np.zeros(rows, dtype=np.int64)
        self.views = [memoryview(self.rows[i]).cast("B") for i in range(rows)]

    @classmethod
    def holding(cls, datagrams: Sequence[bytes], width: int = DATAGRAM_WIDTH) -> Datagrams:
        """A buffer filled with ``datagrams`` (scripted tests; the live path fills rows in
        place). One longer than ``width`` is recorded with its length, as MSG_TRUNC reports."""
        buffer = cls(max(1, len(datagrams)), width)
        for i, data in enumerate(datagrams):
            kept = data[:width]
            buffer.rows[i, : len(kept)] = np.frombuffer(kept, dtype=np.uint8)
            buffer.lengths[i] = len(data)
        return buffer


@kernel
def scan_packets(
    slots: U8,
    lengths: I64,
    n: int,
    sequences: I64,
    counts: I64,
    defects: npt.NDArray[np.int8],
) -> None:  # pragma: no cover - compiled
    """Check ``n`` datagrams, one per row of ``slots``; one as long as its row was cut."""
    width = slots.shape[1]
    for i in range(n):
        if lengths[i] >= width:
            defects[i] = 4
            sequences[i] = 0
            counts[i] = 0
            continue
        d, s, c = _check(slots[i], lengths[i])
        defects[i] = d
        sequences[i] = s
        counts[i] = c


def decode_packet(data: bytes | bytearray | memoryview) -> Packet:
    """Decode one downstream packet or raise :class:`MalformedPacket` naming the defect."""
    raw = bytes(data)
    defect, sequence, count = _check(as_array(raw), len(raw))
    if defect:
        raise MalformedPacket(Defect(defect), _explain(Defect(defect), raw, count))
    return Packet(raw[:SESSION_LEN], int(sequence), int(count), raw[HEADER_LEN:])


def decode_request(data: bytes | bytearray | memoryview) -> Request:
    """Decode a request packet: exactly a header whose count asks for 1..0xFFFE messages."""
    raw = bytes(data)
    if len(raw) < HEADER_LEN:
        raise MalformedPacket(Defect.SHORT_HEADER, f"{len(raw)} bytes, a request is {HEADER_LEN}")
    if len(raw) != HEADER_LEN:
        raise MalformedPacket(
            Defect.COUNT_MISMATCH, f"{len(raw) - HEADER_LEN} bytes after a request header"
        )
    session, sequence, count = HEADER.unpack(raw)
    if count in (HEARTBEAT, END_OF_SESSION) or sequence == 0:
        raise MalformedPacket(
            Defect.COUNT_MISMATCH, f"request for {count} messages from sequence {sequence}"
        )
    return Request(session, sequence, count)


def _explain(defect: Defect, raw: bytes, count: int) -> str:
    if defect is Defect.SHORT_HEADER:
        return f"{len(raw)} bytes, the header alone is {HEADER_LEN}"
    if defect is Defect.BAD_SEQUENCE:
        return f"sequence number {int.from_bytes(raw[10:18], 'big')} is outside 1..2**63-1"
    if defect is Defect.TRUNCATED_BLOCK:
        return f"a message block of the {count} announced runs past byte {len(raw)}"
    return f"{len(raw) - HEADER_LEN} bytes of blocks do not hold exactly {count} messages"


@kernel
def pack_runs(
    stream: U8, max_blocks_bytes: int, starts: I64, counts: I64
) -> tuple[int, int]:  # pragma: no cover - compiled
    """Cut a block stream into packets whose blocks fit ``max_blocks_bytes``.

    Writes each packet's first byte offset and message count; returns (packets, bytes consumed).
    Stops at an incomplete trailing block or when ``starts`` is full. A message larger than the
    limit on its own still gets a packet (the caller rejects such input earlier).
    """
    n = stream.shape[0]
    pos = 0
    packets = 0
    cap = starts.shape[0]
    start = 0
    used = 0
    msgs = 0
    while pos + 2 <= n:
        size = 2 + ((int(stream[pos]) << 8) | int(stream[pos + 1]))
        if pos + size > n:
            break
        if msgs > 0 and (used + size > max_blocks_bytes or msgs == MAX_COUNT):
            if packets == cap:
                return packets, start
            starts[packets] = start
            counts[packets] = msgs
            packets += 1
            start = pos
            used = 0
            msgs = 0
        used += size
        msgs += 1
        pos += size
    if msgs > 0:
        if packets == cap:
            return packets, start
        starts[packets] = start
        counts[packets] = msgs
        packets += 1
    return packets, pos


@kernel
def frame_packets(
    stream: U8,
    consumed: int,
    starts: I64,
    counts: I64,
    packets: int,
    session: U8,
    first: int,
    out: U8,
    bounds: I64,
) -> int:  # pragma: no cover - compiled
    """Write ``packets`` MoldUDP64 packets (as cut by ``pack_runs``) back to back into ``out``.

    ``bounds[k]:bounds[k + 1]`` is packet ``k``; sequence numbers count up from ``first``.
    Returns the number after the last message.
    """
    pos = 0
    sequence = first
    bounds[0] = 0
    for k in range(packets):
        start = starts[k]
        stop = starts[k + 1] if k + 1 < packets else consumed
        count = counts[k]
        out[pos : pos + 10] = session
        for i in range(8):
            out[pos + 10 + i] = (sequence >> (56 - 8 * i)) & 0xFF
        out[pos + 18] = (count >> 8) & 0xFF
        out[pos + 19] = count & 0xFF
        size = stop - start
        out[pos + 20 : pos + 20 + size] = stream[start:stop]
        pos += 20 + size
        bounds[k + 1] = pos
        sequence += count
    return sequence
