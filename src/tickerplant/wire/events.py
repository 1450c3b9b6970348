"""The ``events`` stream's records: normalized, fixed-size, little-endian.

Each record is one SoupBinTCP Sequenced Data message of :data:`RECORD_SIZE` (52) bytes: an
18-byte header, then a body that depends on the kind, zero-padded to 34 bytes. One size for
every kind means a day of them is an array (``np.frombuffer(data, RECORD)``), and a server
selects a client's symbols or conflates its BBOs with one vectorised pass, never one Python
object per record.

Header::

    offset  size  field
    0       1     kind      see below
    1       1     flags     bit 0 (IMAGE): current state sent on subscribing, not an update
    2       8     sequence  u64, this record's number in the events stream (for an image: the
                            last number the state includes; for a notice: the first it covers)
    10      8     source    u64, the itch sequence number of the message that raised it (for
                            an image: the last itch message the state includes)
    18      34    body

Bodies (offsets within the record; prices u32 with 4 implied decimals, timestamps u64
nanoseconds since midnight, ``locate`` the day's stock locate code, 0 for market-wide):

- ``b`` BBO change: locate u16 @18, timestamp @20, bid_price u32 @28, bid_size u64 @32,
  ask_price u32 @40, ask_size u64 @44 (a side without orders: price and size 0).
- ``t`` trade: locate @18, timestamp @20, price u32 @28, size u64 @32, match u64 @40, side u8 @48
  (``B``/``S`` of the resting order executed, 0 unknown), trade u8 @49 (the ITCH type: E, C,
  P, Q, or B for a broken trade that cancels ``match``), printable u8 @50.
- ``s`` status: locate @18, timestamp @20, status u8 @28 (``S`` system event, ``H`` trading
  action, ``Y`` Reg SHO), code u8 @29, reason 4 bytes @30 (H's reason, ASCII).
- ``d`` depth level, images only: locate @18, timestamp @20, side u8 @28 (``B``/``S``), level
  u8 @29 (0 = best), price u32 @30, size u64 @34, orders u32 @42.
- ``y`` symbol: locate @18, timestamp @20, symbol 8 bytes @28 (ASCII, space-padded): a Stock
  Directory named the locate (in the stream, and first in each symbol's image), so that a
  client can name what it reads.
- ``T`` trades summary, sent only to a conflated slow consumer in place of two or more trades
  of one symbol (broken trades are never summarised): locate @18, timestamp @20 (the last
  trade's), count u32 @28 (trades), volume u64 @32 (shares), last u32 @40, high u32 @44, low
  u32 @48 (prices); ``sequence`` and ``source`` are the last trade's. A 52-byte record has no
  room for a VWAP as well: the full stream has every trade.
- Notices, locate 0: first u64 @28, count u64 @36, dropped u64 @44.
  - ``l`` lost: the plant lost itch numbers [first, first + count) (every client gets it, in
    stream position; books may be wrong from there);
  - ``k`` skipped: this client, a slow consumer under the ``skip`` policy, was moved to live
    past events numbers [first, first + count);
  - ``c`` conflated: of events numbers [first, first + count), ``dropped`` records were not
    sent as themselves to this slow consumer (``conflate`` policy): each symbol's latest BBO
    was, and its trades as one ``T`` summary (a lone trade as itself); statuses, symbols,
    broken trades and notices are sent as they are, in order;
  - ``i`` imaged (flags IMAGE): the end of a set of images, the last thing sent of it: the
    ``count`` symbols' images before it hold their state up to events number ``sequence``
    (and ``first`` = ``sequence`` + 1), so a client knows it has every image it asked for
    (``*`` asks for every symbol's: a snapshot) before any update comes.

A client that resumes logs in at the ``sequence`` of the last update it received plus one: the
records it is sent carry their own numbers, so a client narrowed to a few symbols (whose
Sequenced Data counts are then not the stream's numbers) always knows where it is.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

RECORD_SIZE: Final = 52
HEADER_SIZE: Final = 18
BLOCK_SIZE: Final = 2 + RECORD_SIZE  # as a block: u16 big-endian length, then the record
IMAGE: Final = 1

BBO, TRADE, STATUS, DEPTH, SYMBOL, TRADES = b"b", b"t", b"s", b"d", b"y", b"T"
LOST, SKIPPED, CONFLATED, IMAGED = b"l", b"k", b"c", b"i"
NAMES: Final = {BBO: "bbo", TRADE: "trade", STATUS: "status", DEPTH: "depth", SYMBOL: "symbol",
                TRADES: "trades", LOST: "lost", SKIPPED: "skipped",
                CONFLATED: "conflated", IMAGED: "imaged"}  # fmt: skip
BROKEN: Final = ord("B")  # a trade record's ``trade`` for a broken trade

_HEADER: Fields = [("kind", "S1"), ("flags", "u1"), ("sequence", "<u8"), ("source", "<u8"),
           ("locate", "<u2"), ("timestamp", "<u8")]  # fmt: skip


Fields = list[tuple[str, str | tuple[str, tuple[int]]]]


def packed(fields: Fields, itemsize: int | None = None) -> np.dtype[np.void]:
    """A structured dtype of ``fields`` one after another, no padding between them, and
    ``itemsize`` bytes in all (zero-filled past the fields) or just the fields'."""
    names, formats, offsets = [], [], []
    at = 0
    for name, fmt in fields:
        names.append(name)
        formats.append(fmt)
        offsets.append(at)
        at += np.dtype(fmt).itemsize
    size = at if itemsize is None else itemsize
    assert at <= size, f"{names} need {at} bytes"
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": size})


def _record(body: Fields, block: bool) -> np.dtype[np.void]:
    fields: Fields = [("length", ">u2")] if block else []
    return packed(fields + _HEADER + body, RECORD_SIZE + (2 if block else 0))


_BODIES: Final[dict[bytes, Fields]] = {
    BBO: [("bid_price", "<u4"), ("bid_size", "<u8"), ("ask_price", "<u4"), ("ask_size", "<u8")],
    TRADE: [("price", "<u4"), ("size", "<u8"), ("match", "<u8"), ("side", "u1"),
            ("trade", "u1"), ("printable", "u1")],
    STATUS: [("status", "u1"), ("code", "u1"), ("reason", ("u1", (4,)))],
    DEPTH: [("side", "u1"), ("level", "u1"), ("price", "<u4"), ("size", "<u8"),
            ("orders", "<u4")],
    SYMBOL: [("symbol", "S8")],
    TRADES: [("count", "<u4"), ("volume", "<u8"), ("last", "<u4"), ("high", "<u4"),
             ("low", "<u4")],
    LOST: [("first", "<u8"), ("count", "<u8"), ("dropped", "<u8")],
}  # fmt: skip
_BODIES[SKIPPED] = _BODIES[CONFLATED] = _BODIES[IMAGED] = _BODIES[LOST]

# Each kind's record (RECORDS) and the same as a block with its length (BLOCKS).
RECORDS: Final = {kind: _record(body, block=False) for kind, body in _BODIES.items()}
BLOCKS: Final = {kind: _record(body, block=True) for kind, body in _BODIES.items()}
# Any record: the header, and the body's common start (locate, timestamp).
RECORD: Final = _record([], block=False)
BLOCK: Final = _record([], block=True)
LOCATE_AT: Final = 2 + HEADER_SIZE  # in a block: where every kind's locate is


def blocks(kind: bytes, n: int) -> npt.NDArray[np.void]:
    """``n`` zeroed blocks of ``kind``, framed (length set, kind set): fill in the rest."""
    out = np.zeros(n, dtype=BLOCKS[kind])
    out["length"] = RECORD_SIZE
    out["kind"] = kind
    return out


def notice(kind: bytes, sequence: int, source: int, first: int, count: int,
           dropped: int) -> bytes:  # fmt: skip
    """One notice (``LOST``, ``SKIPPED``, ``CONFLATED``, ``IMAGED``) as a block."""
    out = blocks(kind, 1)
    out["sequence"], out["source"] = sequence, source
    out["first"], out["count"], out["dropped"] = first, count, dropped
    return out.tobytes()


def decode(data: bytes | bytearray | memoryview) -> npt.NDArray[np.void]:
    """Records (each without its length) as a RECORD array; the rows of one kind with their
    fields: :func:`view`. A length other than RECORD_SIZE is a ValueError."""
    if len(data) % RECORD_SIZE:
        raise ValueError(f"{len(data)} bytes is not a whole number of {RECORD_SIZE}-byte records")
    return np.frombuffer(data, dtype=RECORD)


def from_blocks(data: bytes | bytearray | memoryview) -> npt.NDArray[np.void]:
    """A block stream of records (as journaled and served) as a RECORD array, its lengths
    dropped: one reshape, no walk over the framing. A stream of other blocks is a ValueError."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.shape[0] % BLOCK_SIZE:
        raise ValueError(f"{raw.shape[0]} bytes is not a whole number of events records")
    rows = raw.reshape(-1, BLOCK_SIZE)
    if not ((rows[:, 0] == 0) & (rows[:, 1] == RECORD_SIZE)).all():
        raise ValueError("not a stream of events records: a block is not a 52-byte record")
    out: npt.NDArray[np.void] = rows[:, 2:].copy().view(RECORD).reshape(-1)
    return out


def view(records: npt.NDArray[np.void], kind: bytes) -> npt.NDArray[np.void]:
    """The records of ``kind`` among ``records`` (a RECORD array), with that kind's fields."""
    mine: npt.NDArray[np.void] = where(records, records["kind"] == kind).view(RECORDS[kind])
    return mine


def where(records: npt.NDArray[np.void], mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.void]:
    """The records (a RECORD array) where ``mask`` is true, whole. ``records[mask]`` would copy
    the header's fields only: numpy copies a structured array's fields, not the bytes between,
    and every body lies between RECORD's fields."""
    raw = records.view(np.dtype((np.void, RECORD_SIZE)))
    out: npt.NDArray[np.void] = raw[mask].view(RECORD)
    return out
