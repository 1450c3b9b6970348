"""SoupBinTCP 3.0: every packet type, a stream framer, and compiled kernels for sequenced data.

Every packet is a u16 big-endian length (type byte + payload), a type byte, then the payload. The
one table :data:`LAYOUTS` says, per type byte, the record it decodes to, its fixed ASCII fields, its
variable-length tail if any, which side sends it and its largest payload; :func:`encode` and
:class:`Framer` are driven by it alone.

Output is exactly what the spec (and tshark) wants: numeric fields right-justified and padded on
the left with spaces, alpha fields left-justified and padded on the right. Input is read liberally:
real implementations pad either way and some with NULs, so fields are stripped at both ends.

Replays move millions of Sequenced Data packets, so those never become Python objects on the hot
path: :func:`encode_sequenced` turns a block stream into a run of ``S`` packets and
:meth:`Framer.next_sequenced` turns a run of ``S`` packets back into a block stream, each one
compiled pass over the bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import astuple, dataclass
from enum import Enum, IntEnum
from typing import NoReturn

import numpy as np

from tickerplant.errors import MalformedPacket
from tickerplant.jit import kernel
from tickerplant.wire.blocks import U8, as_array

MAX_LENGTH = 0xFFFF  # the u16 length field's own limit; it counts the type byte
# What a client sends is small (login, heartbeats, a short order or note): anything near the u16
# limit from a client is junk or an attack, so a server's framer stops it early by default.
CLIENT_MAX_LENGTH = 4096
SEQUENCED = ord("S")
PAD = b" \x00"


class Side(Enum):
    SERVER = "server"
    CLIENT = "client"
    EITHER = "either"


class Kind(Enum):
    ALPHA = "alpha"  # left-justified, space-padded on the right
    NUMERIC = "numeric"  # ASCII digits, right-justified, space-padded on the left


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    size: int
    kind: Kind


# --- the packet records, one per type -------------------------------------------------------
# Alpha fields hold bytes without padding; numeric fields hold ints; a tail holds raw bytes.


@dataclass(frozen=True, slots=True)
class LoginAccepted:
    session: bytes
    sequence: int  # the number of the next Sequenced Data packet the server will send


@dataclass(frozen=True, slots=True)
class LoginRejected:
    reason: bytes  # NOT_AUTHORIZED or SESSION_NOT_AVAILABLE


@dataclass(frozen=True, slots=True)
class SequencedData:
    message: bytes


@dataclass(frozen=True, slots=True)
class ServerHeartbeat:
    pass


@dataclass(frozen=True, slots=True)
class EndOfSession:
    pass


@dataclass(frozen=True, slots=True)
class LoginRequest:
    username: bytes
    password: bytes
    session: bytes  # blank: the current session
    sequence: int  # 0: start with the next message generated


@dataclass(frozen=True, slots=True)
class UnsequencedData:
    message: bytes


@dataclass(frozen=True, slots=True)
class ClientHeartbeat:
    pass


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    pass


@dataclass(frozen=True, slots=True)
class Debug:
    text: bytes


Packet = (
    LoginAccepted
    | LoginRejected
    | SequencedData
    | ServerHeartbeat
    | EndOfSession
    | LoginRequest
    | UnsequencedData
    | ClientHeartbeat
    | LogoutRequest
    | Debug
)

NOT_AUTHORIZED = b"A"
SESSION_NOT_AVAILABLE = b"S"


@dataclass(frozen=True, slots=True)
class Layout:
    code: bytes
    name: str
    record: type[Packet]
    fields: tuple[Field, ...]
    tail: bool  # a variable-length last field (message or text) follows the fixed ones
    sender: Side
    max_payload: int

    @property
    def fixed_size(self) -> int:
        return sum(f.size for f in self.fields)


def _layout(
    code: str, name: str, record: type[Packet], sender: Side, *fields: Field, tail: bool = False
) -> Layout:
    max_payload = MAX_LENGTH - 1 if tail else sum(f.size for f in fields)
    return Layout(code.encode(), name, record, fields, tail, sender, max_payload)


_SESSION = Field("session", 10, Kind.ALPHA)
_SEQUENCE = Field("sequence", 20, Kind.NUMERIC)

LAYOUTS: dict[int, Layout] = {
    ord(layout.code): layout
    for layout in (
        _layout("A", "Login Accepted", LoginAccepted, Side.SERVER, _SESSION, _SEQUENCE),
        _layout("J", "Login Rejected", LoginRejected, Side.SERVER, Field("reason", 1, Kind.ALPHA)),
        _layout("S", "Sequenced Data", SequencedData, Side.SERVER, tail=True),
        _layout("H", "Server Heartbeat", ServerHeartbeat, Side.SERVER),
        _layout("Z", "End of Session", EndOfSession, Side.SERVER),
        _layout(
            "L",
            "Login Request",
            LoginRequest,
            Side.CLIENT,
            Field("username", 6, Kind.ALPHA),
            Field("password", 10, Kind.ALPHA),
            _SESSION,
            _SEQUENCE,
        ),
        _layout("U", "Unsequenced Data", UnsequencedData, Side.CLIENT, tail=True),
        _layout("R", "Client Heartbeat", ClientHeartbeat, Side.CLIENT),
        _layout("O", "Logout Request", LogoutRequest, Side.CLIENT),
        _layout("+", "Debug", Debug, Side.EITHER, tail=True),
    )
}
_BY_RECORD: dict[type[Packet], Layout] = {layout.record: layout for layout in LAYOUTS.values()}


def login_session(data: bytes | bytearray) -> bytes | None:
    """The session the Login Request at the head of a client's stream names (padding stripped:
    blank asks for the current one), past any Debug packets before it; None while ``data``
    holds less than that. A stream that begins otherwise names none (``b""``): the session
    machine it is given tells the client what is wrong with it."""
    login = LAYOUTS[ord("L")]
    pos = 0
    while len(data) >= pos + 3:
        length = int.from_bytes(data[pos : pos + 2], "big")
        code = data[pos + 2]
        if length == 0:
            return b""
        if code == ord("+"):
            pos += 2 + length
            continue
        if code != ord("L") or length != 1 + login.fixed_size:
            return b""
        if len(data) < pos + 2 + length:
            return None
        at = pos + 3 + sum(f.size for f in login.fields[:2])
        return bytes(data[at : at + _SESSION.size]).strip(PAD)
    return None


class Defect(IntEnum):
    """What is wrong with a packet on the stream."""

    ZERO_LENGTH = 1  # a length of 0 leaves no room for the type byte
    OVERSIZE = 2  # longer than the framer allows
    UNKNOWN_TYPE = 3
    WRONG_SENDER = 4  # a known type that this side's peer never sends
    BAD_SIZE = 5  # a fixed-layout packet whose payload is not exactly its layout's size
    BAD_NUMBER = 6  # a numeric field that is not digits after stripping padding


def encode(packet: Packet) -> bytes:
    """The packet's bytes on the wire; raises ValueError naming a field that does not fit."""
    layout = _BY_RECORD[type(packet)]
    values = astuple(packet)
    out = bytearray()
    for f, value in zip(layout.fields, values, strict=False):
        out += _encode_field(layout, f, value)
    if layout.tail:
        tail = values[-1]
        if len(tail) > layout.max_payload - layout.fixed_size:
            raise ValueError(f"{layout.name}: {len(tail)} bytes do not fit a u16 packet length")
        out += tail
    return (len(out) + 1).to_bytes(2, "big") + layout.code + bytes(out)


def _encode_field(layout: Layout, f: Field, value: bytes | int) -> bytes:
    if f.kind is Kind.NUMERIC:
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{layout.name}: {f.name} must be an int >= 0, not {value!r}")
        text = str(value).encode()
        if len(text) > f.size:
            raise ValueError(f"{layout.name}: {f.name} {value} has more than {f.size} digits")
        return text.rjust(f.size, b" ")
    if not isinstance(value, bytes):
        raise ValueError(f"{layout.name}: {f.name} must be bytes, not {value!r}")
    if len(value) > f.size:
        raise ValueError(f"{layout.name}: {f.name} {value!r} is longer than {f.size} bytes")
    return value.ljust(f.size, b" ")


def decode(code: int, payload: bytes) -> Packet:
    """The record for a packet of type ``code``; raises :class:`MalformedPacket`."""
    layout = LAYOUTS.get(code)
    if layout is None:
        raise MalformedPacket(Defect.UNKNOWN_TYPE, f"type byte {code:#04x} ({chr(code)!r})")
    fixed = layout.fixed_size
    if len(payload) < fixed or (not layout.tail and len(payload) != fixed):
        raise MalformedPacket(
            Defect.BAD_SIZE, f"{layout.name} payload of {len(payload)} bytes, layout is {fixed}"
        )
    values: list[bytes | int] = []
    pos = 0
    for f in layout.fields:
        raw = payload[pos : pos + f.size].strip(PAD)
        pos += f.size
        if f.kind is Kind.ALPHA:
            values.append(raw)
        elif raw.isdigit():
            values.append(int(raw))
        elif not raw:  # an all-blank number is read as 0, as the spec's "0 = next message"
            values.append(0)
        else:
            raise MalformedPacket(Defect.BAD_NUMBER, f"{layout.name} {f.name} {raw!r}")
    if layout.tail:
        values.append(payload[fixed:])
    return layout.record(*values)  # type: ignore[arg-type]


def _sent_by(side: Side) -> frozenset[int]:
    """Type bytes ``side`` may send; EITHER, for tools reading both directions, takes all."""
    sides = (side, Side.EITHER) if side is not Side.EITHER else tuple(Side)
    return frozenset(code for code, lay in LAYOUTS.items() if lay.sender in sides)


class Framer:
    """Packets out of a byte stream sent by ``sender``, whatever the split of the reads.

    Call :meth:`feed` with each read, then :meth:`next_sequenced` (fast path, runs of ``S``) and/or
    :meth:`next_packet` until they return nothing. A stream that breaks the protocol raises
    :class:`MalformedPacket`, and keeps raising it: nothing after a bad length can be trusted.
    """

    def __init__(self, sender: Side, max_length: int | None = None) -> None:
        if max_length is None:
            max_length = CLIENT_MAX_LENGTH if sender is Side.CLIENT else MAX_LENGTH
        if not 1 <= max_length <= MAX_LENGTH:
            raise ValueError(f"max_length must be in 1..{MAX_LENGTH}, not {max_length}")
        self.max_length = max_length
        self.sender = sender
        self._accepts = _sent_by(sender)
        self._buf = b""
        self._pos = 0
        self._broken: MalformedPacket | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as packets."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos == len(self._buf):
            self._buf = bytes(data)
        else:
            self._buf = self._buf[self._pos :] + bytes(data)
        self._pos = 0

    def next_packet(self) -> Packet | None:
        """The next whole packet, or None until more bytes arrive."""
        if self._broken is not None:
            raise self._broken
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 2:
            return None
        length = (buf[pos] << 8) | buf[pos + 1]
        if length == 0:
            self._fail(Defect.ZERO_LENGTH, "packet length 0 has no type byte")
        if length > self.max_length:
            self._fail(Defect.OVERSIZE, f"packet length {length} over the limit {self.max_length}")
        if len(buf) - pos < 3:
            return None
        code = buf[pos + 2]
        if code not in self._accepts:
            if code in LAYOUTS:
                name = LAYOUTS[code].name
                self._fail(Defect.WRONG_SENDER, f"{name} is never sent by the {self.sender.value}")
            self._fail(Defect.UNKNOWN_TYPE, f"type byte {code:#04x} ({chr(code)!r})")
        layout = LAYOUTS[code]
        if length - 1 > layout.max_payload:  # judged on the header: no waiting for the bytes
            self._fail(
                Defect.BAD_SIZE,
                f"{layout.name} payload of {length - 1} bytes, at most {layout.max_payload}",
            )
        if len(buf) - pos < 2 + length:
            return None
        self._pos = pos + 2 + length
        try:
            return decode(code, buf[pos + 3 : pos + 2 + length])
        except MalformedPacket as exc:
            self._broken = exc
            raise

    def __iter__(self) -> Iterator[Packet]:
        while (packet := self.next_packet()) is not None:
            yield packet

    def next_sequenced(self) -> tuple[int, bytes]:
        """The run of whole ``S`` packets at the head of the buffer as (count, block stream).

        Stops before anything else (another type, a bad length, an incomplete packet), which
        :meth:`next_packet` then handles.
        """
        if SEQUENCED not in self._accepts or self._broken is not None:
            return 0, b""  # a client's S packet is next_packet's to refuse
        if len(self._buf) - self._pos < 3:
            return 0, b""
        arr = as_array(self._buf)
        out = np.empty(arr.shape[0] - self._pos, dtype=np.uint8)
        count, end, written = _blocks_from_sequenced(arr, self._pos, self.max_length, out)
        self._pos = int(end)
        return int(count), out[:written].tobytes()

    def _fail(self, defect: Defect, detail: str) -> NoReturn:
        self._broken = MalformedPacket(defect, detail)
        raise self._broken


def encode_sequenced(blocks: bytes | bytearray | memoryview) -> bytes:
    """A block stream as Sequenced Data packets: each ``u16 n, msg`` -> ``u16 n+1, 'S', msg``."""
    arr = as_array(blocks)
    out = np.empty(arr.shape[0] + arr.shape[0] // 2, dtype=np.uint8)
    written = _sequenced_from_blocks(arr, out)
    if written < 0:
        pos = -1 - written
        raise ValueError(
            f"block at offset {pos} is truncated or too long for a Sequenced Data packet"
        )
    return out[:written].tobytes()


@kernel
def _sequenced_from_blocks(stream: U8, out: U8) -> int:  # pragma: no cover - compiled
    """Bytes written to ``out``, or ``-1 - offset`` of the first block that cannot be converted."""
    n = stream.shape[0]
    cap = out.shape[0]
    pos = 0
    o = 0
    while pos < n:
        if pos + 2 > n:
            return -1 - pos
        size = (int(stream[pos]) << 8) | int(stream[pos + 1])
        # a message of 0xFFFF bytes has no room left in the u16 for the type byte
        if pos + 2 + size > n or size >= 0xFFFF or o + 3 + size > cap:
            return -1 - pos
        length = size + 1
        out[o] = length >> 8
        out[o + 1] = length & 0xFF
        out[o + 2] = SEQUENCED
        out[o + 3 : o + 3 + size] = stream[pos + 2 : pos + 2 + size]
        o += 3 + size
        pos += 2 + size
    return o


@kernel
def _blocks_from_sequenced(
    buf: U8, start: int, max_length: int, out: U8
) -> tuple[int, int, int]:  # pragma: no cover - compiled
    """Convert whole ``S`` packets from ``buf[start:]`` into blocks in ``out``.

    Returns (messages, offset in ``buf`` after the last one, bytes written). Each packet shrinks by
    its type byte, so ``out`` needs ``len(buf) - start`` bytes at most.
    """
    n = buf.shape[0]
    pos = start
    o = 0
    count = 0
    while pos + 3 <= n:
        length = (int(buf[pos]) << 8) | int(buf[pos + 1])
        if length == 0 or length > max_length or buf[pos + 2] != SEQUENCED:
            break
        if pos + 2 + length > n:
            break
        size = length - 1
        out[o] = size >> 8
        out[o + 1] = size & 0xFF
        out[o + 2 : o + 2 + size] = buf[pos + 3 : pos + 2 + length]
        o += 2 + size
        pos += 2 + length
        count += 1
    return count, pos, o
