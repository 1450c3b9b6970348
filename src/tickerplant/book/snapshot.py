"""GLIMPSE 5.0-style snapshots of the books: what a client applies instead of the whole day.

A snapshot is an ITCH block stream: the last System Event, each symbol's Stock Directory, its
last Trading Action and Reg SHO Restriction, one Add Order per resting order in order-reference
order (time priority, so each level's queue comes out in the order it formed), then GLIMPSE's
End of Snapshot ``G`` carrying the ``itch`` sequence number to continue from (20 characters,
left-justified, space-padded). A client that applies the snapshot and then the ``itch`` stream
from that number has the books of one that read the whole day.

The books do not keep those reference messages, so :class:`Directory` keeps the last of each
from the stream as it passes, with one vectorised scan per batch (they are a few thousand in a
day of hundreds of millions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tickerplant.book.engine import BookEngine, resting
from tickerplant.wire import itch
from tickerplant.wire.blocks import as_array, join_messages, offsets_of

_KEPT = np.zeros(256, dtype=np.bool_)  # by message type: the ones a Directory keeps
_KEPT[list(b"SRHY")] = True
END_OF_SNAPSHOT = ord("G")
Stocks = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.bool_]]  # which locates a picture keeps


class Directory:
    """The day's last System Event and, per locate, its last R, H and Y messages."""

    def __init__(self) -> None:
        self.system_event: bytes | None = None
        self.by_locate: dict[tuple[int, int], bytes] = {}  # (type, locate) -> message

    def apply(self, blocks: bytes) -> None:
        offsets, size = offsets_of(blocks)
        if not offsets.shape[0]:
            return
        arr = as_array(blocks)
        types = arr[np.minimum(offsets + 2, size - 1)]
        for i in np.flatnonzero(_KEPT[types]).tolist():  # (np.isin: 130 us a live batch)
            at = int(offsets[i])
            length = (int(arr[at]) << 8) | int(arr[at + 1])
            message = bytes(blocks[at + 2 : at + 2 + length])
            if message[0] == ord("S"):
                self.system_event = message
            elif length >= 3:
                self.by_locate[(message[0], int.from_bytes(message[1:3], "big"))] = message


@dataclass(frozen=True, slots=True)
class Picture:
    """What a snapshot is made of, taken from the live books between two batches: the
    reference messages, the symbols, the live order rows (copies, one vectorised gather).
    Making the snapshot of it (:meth:`encode`: a sort and an encode, milliseconds for a
    synthetic day, tenths of a second for a real one) reads nothing of the books, so it runs on
    a thread while the books go on."""

    head: bytes
    rows: npt.NDArray[np.int64]
    names: npt.NDArray[np.bytes_]
    next_sequence: int

    def encode(self) -> bytes:
        """The snapshot's block stream; see the module's docstring."""
        end = bytes([END_OF_SNAPSHOT]) + str(self.next_sequence).ljust(20).encode("ascii")
        return self.head + _add_orders(resting(self.rows), self.names) + join_messages([end])


def picture(engine: BookEngine, directory: Directory, next_sequence: int,
            stocks: Stocks | None = None, rows: npt.NDArray[np.int64] | None = None
            ) -> Picture:  # fmt: skip
    """The books as they stand, for a snapshot continuing from ``next_sequence``: of the
    locates ``stocks`` keeps (one channel's of several), or all of them. ``rows``: the engine's
    live rows, if taken already (several channels' pictures share one gather)."""
    messages: list[bytes] = []
    if directory.system_event is not None:
        messages.append(directory.system_event)
    kept = directory.by_locate
    rows = engine.live_rows() if rows is None else rows
    if stocks is not None:
        ours = stocks(np.array([locate for _, locate in kept], dtype=np.int64)).tolist()
        kept = {key: m for (key, m), mine in zip(kept.items(), ours, strict=True) if mine}
        rows = rows[stocks(rows[:, 0] >> 47)]
    for kind in (ord("R"), ord("H"), ord("Y")):  # directories first: the adds name their locates
        messages += [kept[key] for key in sorted(k for k in kept if k[0] == kind)]
    return Picture(join_messages(messages), rows, engine.names(), next_sequence)


def snapshot(engine: BookEngine, directory: Directory, next_sequence: int) -> bytes:
    """The block stream of a snapshot of ``engine``'s books; see the module's docstring."""
    return picture(engine, directory, next_sequence).encode()


# Add Order (A) as a block: u16 length, then the message (ITCH 5.0, big-endian), 38 bytes.
_ADD = np.dtype([
    ("length", ">u2"), ("type", "u1"), ("locate", ">u2"), ("tracking", ">u2"),
    ("timestamp", "V6"), ("reference", ">u8"), ("side", "u1"), ("shares", ">u4"),
    ("stock", "S8"), ("price", ">u4"),
])  # fmt: skip
assert _ADD.itemsize == 2 + itch.LENGTHS["A"]


def _add_orders(orders: npt.NDArray[np.void], names: npt.NDArray[np.bytes_]) -> bytes:
    """One Add Order per resting order, built as one array (a book can hold millions)."""
    out = np.zeros(orders.shape[0], dtype=_ADD)
    out["length"] = itch.LENGTHS["A"]
    out["type"] = ord("A")
    for field in ("locate", "reference", "side", "shares", "price"):
        out[field] = orders[field]
    out["stock"] = names[orders["locate"]]
    return out.tobytes()
