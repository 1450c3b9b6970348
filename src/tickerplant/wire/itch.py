"""NASDAQ TotalView-ITCH 5.0 messages: bytes <-> typed records, and the byte offsets of every field.

The layout table is the record classes below: one ``NamedTuple`` per message type whose fields are
written in wire order, each annotated with its wire kind (``U16``, ``Timestamp``, ``Alpha8``,
``Price4``...). :data:`MESSAGE_TYPES` maps the type letter to its class. Everything else is derived
from that one table at import: :data:`LAYOUTS` (name, kind, size, offset per field), the total
length of each type (checked against the spec's figure), :func:`offset` for compiled kernels that
read raw bytes, :data:`MESSAGE_LENGTHS` for framing checks, and one ``struct.Struct`` per type used
by :func:`decode` and :func:`encode`. The annotations make the table mypy-checked as well: a
decoded ``AddOrder`` has ``price: int`` and ``stock: str``.

Conventions: every message starts with its type byte, then stock locate, tracking number and a
6-byte timestamp (ns since midnight, an ``int`` here). Alpha fields are left-justified and padded
with spaces on the wire and carried without the padding; Price(4)/Price(8) stay integers with 4/8
implied decimals so that no price is ever rounded. Text is latin-1, so any byte decodes and
re-encodes to itself.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Annotated, Any, Final, NamedTuple, get_type_hints

import numpy as np
import numpy.typing as npt

from tickerplant.errors import InputError


class ItchError(InputError):
    """Bytes that are not an ITCH 5.0 message, or a record that cannot be encoded as one."""


@dataclass(frozen=True, slots=True)
class Kind:
    """How a field sits on the wire: ``name`` is one of the spec's kinds, ``size`` its bytes."""

    name: str  # u16 | u32 | u64 | timestamp | price4 | price8 | char | alpha
    size: int


U16 = Annotated[int, Kind("u16", 2)]
U32 = Annotated[int, Kind("u32", 4)]
U64 = Annotated[int, Kind("u64", 8)]
Timestamp = Annotated[int, Kind("timestamp", 6)]
Price4 = Annotated[int, Kind("price4", 4)]
Price8 = Annotated[int, Kind("price8", 8)]
Char = Annotated[str, Kind("char", 1)]
Alpha2 = Annotated[str, Kind("alpha", 2)]
Alpha4 = Annotated[str, Kind("alpha", 4)]
Alpha8 = Annotated[str, Kind("alpha", 8)]


# --- the layout table: one class per message type, fields in wire order after the type byte ---


class SystemEvent(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    event_code: Char


class StockDirectory(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    stock: Alpha8
    market_category: Char
    financial_status_indicator: Char
    round_lot_size: U32
    round_lots_only: Char
    issue_classification: Char
    issue_subtype: Alpha2
    authenticity: Char
    short_sale_threshold_indicator: Char
    ipo_flag: Char
    luld_reference_price_tier: Char
    etp_flag: Char
    etp_leverage_factor: U32
    inverse_indicator: Char


class StockTradingAction(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    stock: Alpha8
    trading_state: Char
    reserved: Char
    reason: Alpha4


class RegShoRestriction(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    stock: Alpha8
    reg_sho_action: Char


class MarketParticipantPosition(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    mpid: Alpha4
    stock: Alpha8
    primary_market_maker: Char
    market_maker_mode: Char
    market_participant_state: Char


class MwcbDeclineLevel(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    level_1: Price8
    level_2: Price8
    level_3: Price8


class MwcbStatus(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    breached_level: Char


class IpoQuotingPeriodUpdate(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    stock: Alpha8
    ipo_quotation_release_time: U32  # seconds since midnight
    ipo_quotation_release_qualifier: Char
    ipo_price: Price4


class LuldAuctionCollar(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    stock: Alpha8
    auction_collar_reference_price: Price4
    upper_auction_collar_price: Price4
    lower_auction_collar_price: Price4
    auction_collar_extension: U32


class OperationalHalt(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    stock: Alpha8
    market_code: Char
    operational_halt_action: Char


class DlcrPriceDiscovery(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    stock: Alpha8
    open_eligibility_status: Char
    minimum_allowable_price: Price4
    maximum_allowable_price: Price4
    near_execution_price: Price4
    near_execution_time: U64
    lower_price_range_collar: Price4
    upper_price_range_collar: Price4


class AddOrder(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    order_reference: U64
    side: Char
    shares: U32
    stock: Alpha8
    price: Price4


class AddOrderMpid(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    order_reference: U64
    side: Char
    shares: U32
    stock: Alpha8
    price: Price4
    attribution: Alpha4


class OrderExecuted(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    order_reference: U64
    executed_shares: U32
    match_number: U64


class OrderExecutedWithPrice(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    order_reference: U64
    executed_shares: U32
    match_number: U64
    printable: Char
    execution_price: Price4


class OrderCancel(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    order_reference: U64
    cancelled_shares: U32


class OrderDelete(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    order_reference: U64


class OrderReplace(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    original_order_reference: U64
    new_order_reference: U64
    shares: U32
    price: Price4


class Trade(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    order_reference: U64
    side: Char
    shares: U32
    stock: Alpha8
    price: Price4
    match_number: U64


class CrossTrade(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    shares: U64
    stock: Alpha8
    cross_price: Price4
    match_number: U64
    cross_type: Char


class BrokenTrade(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    match_number: U64


class Noii(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    paired_shares: U64
    imbalance_shares: U64
    imbalance_direction: Char
    stock: Alpha8
    far_price: Price4
    near_price: Price4
    current_reference_price: Price4
    cross_type: Char
    price_variation_indicator: Char


class Rpii(NamedTuple):
    stock_locate: U16
    tracking_number: U16
    timestamp: Timestamp
    stock: Alpha8
    interest_flag: Char


Record = (
    SystemEvent
    | StockDirectory
    | StockTradingAction
    | RegShoRestriction
    | MarketParticipantPosition
    | MwcbDeclineLevel
    | MwcbStatus
    | IpoQuotingPeriodUpdate
    | LuldAuctionCollar
    | OperationalHalt
    | DlcrPriceDiscovery
    | AddOrder
    | AddOrderMpid
    | OrderExecuted
    | OrderExecutedWithPrice
    | OrderCancel
    | OrderDelete
    | OrderReplace
    | Trade
    | CrossTrade
    | BrokenTrade
    | Noii
    | Rpii
)

MESSAGE_TYPES: Final[dict[str, type[Record]]] = {
    "S": SystemEvent,
    "R": StockDirectory,
    "H": StockTradingAction,
    "Y": RegShoRestriction,
    "L": MarketParticipantPosition,
    "V": MwcbDeclineLevel,
    "W": MwcbStatus,
    "K": IpoQuotingPeriodUpdate,
    "J": LuldAuctionCollar,
    "h": OperationalHalt,
    "O": DlcrPriceDiscovery,
    "A": AddOrder,
    "F": AddOrderMpid,
    "E": OrderExecuted,
    "C": OrderExecutedWithPrice,
    "X": OrderCancel,
    "D": OrderDelete,
    "U": OrderReplace,
    "P": Trade,
    "Q": CrossTrade,
    "B": BrokenTrade,
    "I": Noii,
    "N": Rpii,
}

# Total lengths as printed in the ITCH 5.0 specification; the derived layouts must agree.
_SPEC_LENGTHS: Final = {
    "S": 12, "R": 39, "H": 25, "Y": 20, "L": 26, "V": 35, "W": 12, "K": 28, "J": 35, "h": 21,
    "O": 48, "A": 36, "F": 40, "E": 31, "C": 36, "X": 23, "D": 19, "U": 35, "P": 44, "Q": 40,
    "B": 19, "I": 50, "N": 20,
}  # fmt: skip


# --- everything below is derived from the table ---


class Field(NamedTuple):
    name: str
    kind: str
    size: int
    offset: int  # from the first byte of the message (its type byte)


_FORMATS: Final = {
    "u16": "H", "u32": "I", "u64": "Q", "price4": "I", "price8": "Q", "char": "c",
    "timestamp": "HI",  # struct has no 6-byte integer: high 16 bits, low 32 bits
}  # fmt: skip

# What decode must do beyond struct's own conversion, per field.
_PLAIN, _TIMESTAMP, _ALPHA, _CHAR = 0, 1, 2, 3
_STEPS: Final = {"timestamp": _TIMESTAMP, "alpha": _ALPHA, "char": _CHAR}


@dataclass(frozen=True, slots=True)
class _Codec:
    letter: str
    record: type[Record]
    fields: tuple[Field, ...]
    packer: struct.Struct
    steps: tuple[int, ...]


def _layout(letter: str, record: type[Record]) -> tuple[Field, ...]:
    hints = get_type_hints(record, include_extras=True)
    fields = []
    at = 1
    for name in record._fields:
        kind = hints[name].__metadata__[0]
        if not isinstance(kind, Kind):
            raise TypeError(f"{record.__name__}.{name} has no wire kind")
        fields.append(Field(name, kind.name, kind.size, at))
        at += kind.size
    if at != _SPEC_LENGTHS[letter]:
        raise AssertionError(
            f"type {letter!r}: table gives {at} bytes, spec {_SPEC_LENGTHS[letter]}"
        )
    return tuple(fields)


def _codec(letter: str, record: type[Record]) -> _Codec:
    fields = _layout(letter, record)
    fmt = ">c" + "".join(f"{f.size}s" if f.kind == "alpha" else _FORMATS[f.kind] for f in fields)
    steps = tuple(_STEPS.get(f.kind, _PLAIN) for f in fields)
    return _Codec(letter, record, fields, struct.Struct(fmt), steps)


_CODECS: Final = {letter: _codec(letter, rec) for letter, rec in MESSAGE_TYPES.items()}
_BY_BYTE: Final = {ord(letter): c for letter, c in _CODECS.items()}
_BY_RECORD: Final = {c.record: c for c in _CODECS.values()}
_OFFSETS: Final = {letter: {f.name: f.offset for f in c.fields} for letter, c in _CODECS.items()}

LAYOUTS: Final[dict[str, tuple[Field, ...]]] = {k: c.fields for k, c in _CODECS.items()}
LENGTHS: Final[dict[str, int]] = {k: c.packer.size for k, c in _CODECS.items()}


def _length_table() -> npt.NDArray[np.int16]:
    table = np.zeros(256, dtype=np.int16)
    for letter, size in LENGTHS.items():
        table[ord(letter)] = size
    return table


MESSAGE_LENGTHS: Final = _length_table()
"""Message length per type byte (0 = not an ITCH 5.0 type), for compiled framing checks."""


def offset(message_type: str, field: str) -> int:
    """Byte offset of ``field`` in a message of ``message_type`` (type byte at offset 0)."""
    fields = _OFFSETS.get(message_type)
    if fields is None:
        raise ItchError(f"unknown message type {message_type!r}")
    at = fields.get(field)
    if at is None:
        raise ItchError(f"type {message_type!r} has no field {field!r}; it has {sorted(fields)}")
    return at


def message_type(record: Record) -> str:
    """The type letter of ``record``."""
    codec = _BY_RECORD.get(type(record))
    if codec is None:
        raise ItchError(f"{type(record).__name__} is not an ITCH 5.0 record")
    return codec.letter


def describe_type(type_byte: int) -> str:
    """A type byte as errors print it: ``0x7a ('z')``, or ``0x00`` when not printable."""
    code = f"0x{type_byte:02x}"
    return f"{code} ({chr(type_byte)!r})" if 0x21 <= type_byte < 0x7F else code


def decode(msg: bytes | bytearray | memoryview) -> Record:
    """Decode one message (no length prefix)."""
    if len(msg) == 0:
        raise ItchError("empty message: no type byte")
    codec = _BY_BYTE.get(msg[0])
    if codec is None:
        raise ItchError(f"unknown message type {describe_type(msg[0])} ({len(msg)} bytes)")
    if len(msg) != codec.packer.size:
        raise ItchError(f"type {codec.letter!r} is {codec.packer.size} bytes, got {len(msg)}")
    raw = codec.packer.unpack(msg)
    values: list[Any] = []
    i = 1
    for step in codec.steps:
        if step == _TIMESTAMP:
            values.append((raw[i] << 32) | raw[i + 1])
            i += 2
            continue
        v = raw[i]
        if step == _ALPHA:
            v = v.decode("latin-1").rstrip(" ")
        elif step == _CHAR:
            v = v.decode("latin-1")
        values.append(v)
        i += 1
    return codec.record._make(values)


def encode(record: Record) -> bytes:
    """Encode ``record`` as its message bytes (no length prefix)."""
    codec = _BY_RECORD.get(type(record))
    if codec is None:
        raise ItchError(f"{type(record).__name__} is not an ITCH 5.0 record")
    args: list[Any] = [codec.letter.encode("latin-1")]
    for f, v in zip(codec.fields, record, strict=True):
        args.extend(_wire_value(codec.letter, f, v))
    return codec.packer.pack(*args)


def _wire_value(letter: str, f: Field, v: object) -> tuple[object, ...]:
    where = f"type {letter!r} field {f.name}"
    if f.kind in ("alpha", "char"):
        if not isinstance(v, str):
            raise ItchError(f"{where}: expected str, got {type(v).__name__}")
        try:
            raw = v.encode("latin-1")
        except UnicodeEncodeError as exc:
            raise ItchError(f"{where}: {v!r} is not latin-1 text") from exc
        if f.kind == "char" and len(raw) != 1:
            raise ItchError(f"{where}: a char is one byte, got {v!r}")
        if len(raw) > f.size:
            raise ItchError(f"{where}: {v!r} is longer than {f.size} bytes")
        return (raw.ljust(f.size, b" "),)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ItchError(f"{where}: expected int, got {type(v).__name__}")
    if not 0 <= v < 1 << (8 * f.size):
        raise ItchError(f"{where}: {v} does not fit {f.size} unsigned bytes")
    if f.kind == "timestamp":
        return (v >> 32, v & 0xFFFFFFFF)
    return (v,)
