"""The book engine's output records and anomaly kinds: tickerplant's normalized event format.

Every record is a packed little-endian numpy structured type with fixed byte offsets, so a batch
of events is one contiguous buffer that can be sent, written or memory-mapped as it is. Prices
are integers with 4 implied decimals (ITCH Price(4): 1234500 is $123.45); timestamps are
nanoseconds since midnight, as ITCH carries them; ``locate`` is the day's stock locate code.

BBO change (``BBO_EVENT``, 38 bytes), one per message that changed a symbol's best bid or offer:

    offset  size  field
    0       2     locate      u16
    2       8     timestamp   u64, ns since midnight
    10      4     bid_price   u32, 4 implied decimals; 0 with bid_size 0 when no bid
    14      8     bid_size    u64, shares at the best bid (all orders at that price)
    22      4     ask_price   u32, 4 implied decimals; 0 with ask_size 0 when no offer
    26      8     ask_size    u64
    34      4     message     u32, the raising message's index in the block stream processed
                              (0 for its first message): it orders the three kinds of event
                              into one stream and names the source message of each

Trade (``TRADE_EVENT``, 37 bytes), one per E, C, P, Q or B message:

    0       2     locate      u16
    2       8     timestamp   u64
    10      4     price       u32, 4 implied decimals (0 for a broken trade)
    14      8     size        u64, shares (0 for a broken trade)
    22      8     match       u64, the exchange's match number
    30      1     side        b'B' / b'S': side of the resting order executed (E, C) or of the
                              non-displayed order (P); 0 when unknown (Q, B)
    31      1     kind        the ITCH type letter: E, C (executions of book orders), P (hidden
                              order), Q (cross), B (broken trade: cancels ``match``)
    32      1     printable   1 when the trade counts toward volume (C carries the flag; B is 0)
    33      4     message     u32, as in BBO change

Status change (``STATUS_EVENT``, 20 bytes), one per S, H or Y message:

    0       2     locate      u16 (0 for System Event, which is market-wide)
    2       8     timestamp   u64
    10      1     kind        b'S' system event, b'H' trading action, b'Y' Reg SHO restriction
    11      1     code        event code (S), trading state (H) or Reg SHO action (Y)
    12      4     reason      H's reason code, ASCII, space-padded; zeros for S and Y
    16      4     message     u32, as in BBO change

Depth level (``LEVEL``, 16 bytes) in snapshots: price u32, size u64, orders u32.
"""

from __future__ import annotations

from typing import Final

from tickerplant.wire.events import packed

BBO_EVENT: Final = packed(
    [
        ("locate", "<u2"),
        ("timestamp", "<u8"),
        ("bid_price", "<u4"),
        ("bid_size", "<u8"),
        ("ask_price", "<u4"),
        ("ask_size", "<u8"),
        ("message", "<u4"),
    ]
)
TRADE_EVENT: Final = packed(
    [
        ("locate", "<u2"),
        ("timestamp", "<u8"),
        ("price", "<u4"),
        ("size", "<u8"),
        ("match", "<u8"),
        ("side", "u1"),
        ("kind", "u1"),
        ("printable", "u1"),
        ("message", "<u4"),
    ]
)
STATUS_EVENT: Final = packed(
    [
        ("locate", "<u2"),
        ("timestamp", "<u8"),
        ("kind", "u1"),
        ("code", "u1"),
        ("reason", ("u1", (4,))),
        ("message", "<u4"),
    ]
)
LEVEL: Final = packed([("price", "<u4"), ("size", "<u8"), ("orders", "<u4")])
# A live order, as a snapshot lists it: reference u64, locate u16, side b'B'/b'S', shares u32,
# price u32 (4 implied decimals).
RESTING: Final = packed(
    [("reference", "<u8"), ("locate", "<u2"), ("side", "u1"), ("shares", "<u4"), ("price", "<u4")]
)

# Inconsistent input, counted per kind: the message is skipped (or applied as far as it can be
# without corrupting the book, as stated) and the engine carries on.
ANOMALIES: Final = (
    "unknown_locate",  # locate never defined by a Stock Directory (or beyond max_symbols)
    "unknown_reference",  # E, C, X, D, U for an order reference not live on that locate
    "duplicate_reference",  # A, F, U adding a reference that is already live: the add is skipped
    "over_execution",  # E, C for more shares than remain: the order is executed out and removed
    "over_cancel",  # X for more shares than remain: the order is removed
    "bad_side",  # A, F with a side other than B or S
    "bad_value",  # zero shares, shares or price >= 2**31, reference >= 2**47: the add is skipped
    "locate_redefined",  # a Stock Directory giving a defined locate another symbol
    "bad_length",  # a block whose length is not its type's
    "unknown_type",  # a type byte that is not ITCH 5.0
    "truncated",  # a block stream ending inside a block: the rest is dropped
)
(
    UNKNOWN_LOCATE,
    UNKNOWN_REFERENCE,
    DUPLICATE_REFERENCE,
    OVER_EXECUTION,
    OVER_CANCEL,
    BAD_SIDE,
    BAD_VALUE,
    LOCATE_REDEFINED,
    BAD_LENGTH,
    UNKNOWN_TYPE,
    TRUNCATED,
) = range(len(ANOMALIES))
