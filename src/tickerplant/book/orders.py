"""The order table: every live order's price, side and shares, found by its key.

An open-addressing hash laid out as Abseil's Swiss tables, in groups of 8 slots:

- ``ctrl`` (uint64[groups]) holds one control byte per slot: EMPTY (0x80), DELETED (0xFE), or
  seven bits of the key's hash for a full slot.
- ``orders`` (int64[2 * slots]) holds 16-byte rows: the key ``reference | locate << 47`` and the
  value ``price << 32 | ask << 31 | shares``.

A lookup compares a group's 8 control bytes at once (one uint64, SWAR) and reads a row only
where the hash bits match: a hit reads one row, a miss usually none, with no data-dependent loop
in the common case. An erase writes one control byte; nothing moves. Groups are probed in turn
and a lookup stops at the first group with an EMPTY slot, so an erase may write EMPTY only where
its group already has one (no probe can have passed through it); elsewhere it writes DELETED,
and DELETED slots count against the load until the engine rebuilds the table (:func:`rehash`).

Measured on the generated 5M-message day (5.2M table operations, 32768 slots): 11 ns per
operation, against 19 ns for the linear-probing table with backward-shift deletion it replaced.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tickerplant.jit import at, kernel, trailing_zeros

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

GROUP = 8  # slots per control word
EMPTY, DELETED = 0x80, 0xFE
ALL_EMPTY = 0x8080_8080_8080_8080  # a control word with every slot free
_LSB = np.uint64(0x0101_0101_0101_0101)
_MSB = np.uint64(ALL_EMPTY)
_BYTE = np.uint64(0xFF)
_GOLDEN = np.uint64(0x9E37_79B9_7F4A_7C15)  # Fibonacci hashing: sequential references spread out


def group_shift(slots: int) -> int:
    """The shift that maps a 64-bit hash to a group of a table with ``slots`` slots."""
    return 64 - ((slots // GROUP).bit_length() - 1)


@kernel
def _hash(key: int) -> np.uint64:  # pragma: no cover - compiled
    return np.uint64(key) * _GOLDEN


@kernel
def _tag(h: np.uint64) -> np.uint64:  # pragma: no cover - compiled
    """Seven hash bits for the control byte, apart from the top bits that pick the group."""
    return (h >> np.uint64(8)) & np.uint64(0x7F)


@kernel
def _has_empty(w: np.uint64) -> bool:  # pragma: no cover - compiled
    # EMPTY is the one control byte with bit 7 set and bit 1 clear.
    return bool((w & ~(w << np.uint64(6)) & _MSB) != 0)


@kernel
def _with_byte(w: np.uint64, byte: int, value: np.uint64) -> np.uint64:  # pragma: no cover
    s = np.uint64(8 * byte)
    return (w & ~(_BYTE << s)) | (value << s)


@kernel
def group_of(key: int, gshift: int) -> int:  # pragma: no cover - compiled
    """The group where ``key``'s probe starts (what to prefetch)."""
    return int(np.int64(_hash(key) >> np.uint64(gshift)))


@kernel
def find(ctrl: U64, orders: I64, key: int, gshift: int) -> int:  # pragma: no cover - compiled
    """The slot holding ``key``, or -1."""
    mask = ctrl.shape[0] - 1
    h = _hash(key)
    g = int(np.int64(h >> np.uint64(gshift)))
    pattern = _LSB * _tag(h)
    while True:
        w = ctrl[at(g)]
        x = w ^ pattern
        # Bytes equal to the tag; a borrow can flag a byte above a real match too, which the
        # key comparison throws out.
        hits = (x - _LSB) & ~x & _MSB
        while hits != 0:
            slot = GROUP * g + (trailing_zeros(hits) >> 3)
            if orders[at(2 * slot)] == key:
                return int(slot)
            hits &= hits - np.uint64(1)
        if _has_empty(w):
            return -1
        g = (g + 1) & mask


@kernel
def insert(ctrl: U64, orders: I64, key: int, value: int, gshift: int) -> int:  # pragma: no cover
    """Store ``key`` (known to be absent) with ``value``; returns 1 when the slot it took was
    DELETED (the caller's count of those drops), else 0."""
    mask = ctrl.shape[0] - 1
    h = _hash(key)
    g = int(np.int64(h >> np.uint64(gshift)))
    while True:
        w = ctrl[at(g)]
        free = w & _MSB
        if free != 0:
            byte = trailing_zeros(free) >> 3
            slot = GROUP * g + byte
            was = (w >> np.uint64(8 * byte)) & _BYTE
            ctrl[at(g)] = _with_byte(w, byte, _tag(h))
            orders[at(2 * slot)] = key
            orders[at(2 * slot + 1)] = value
            return 1 if was == DELETED else 0
        g = (g + 1) & mask


@kernel
def erase(ctrl: U64, slot: int) -> int:  # pragma: no cover - compiled
    """Free ``slot``; returns 1 when it had to be marked DELETED, else 0."""
    g = slot >> 3
    w = ctrl[at(g)]
    if _has_empty(w):
        ctrl[at(g)] = _with_byte(w, slot & (GROUP - 1), np.uint64(EMPTY))
        return 0
    ctrl[at(g)] = _with_byte(w, slot & (GROUP - 1), np.uint64(DELETED))
    return 1


@kernel
def rehash(
    old_ctrl: U64, old: I64, ctrl: U64, orders: I64, gshift: int
) -> None:  # pragma: no cover - compiled
    """Insert every full slot of the table (``old_ctrl``, ``old``) into the empty one given."""
    for g in range(old_ctrl.shape[0]):
        w = old_ctrl[g]
        for byte in range(GROUP):
            if (w >> np.uint64(8 * byte)) & np.uint64(0x80) == 0:
                slot = GROUP * g + byte
                insert(ctrl, orders, old[2 * slot], old[2 * slot + 1], gshift)
