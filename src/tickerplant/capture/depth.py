"""Order-book snapshots at a fixed interval of exchange time, as one long Parquet table.

``tickerplant replay --depth N --every 1s --symbols AAPL,MSFT`` writes ``PREFIX.depth.parquet``:
at every multiple of the interval (exchange time, nanoseconds since midnight) from the first
message to the last, the top ``N`` levels of each side of each chosen symbol's book as it stood
after every message stamped before that moment. One row per (time, symbol, side, level):

    time     int64, the snapshot's moment, nanoseconds since midnight
    symbol   string (dictionary-encoded); locate uint16
    side     string 'B' (bids) or 'S' (offers)
    level    uint8, 1 = the best price
    price    int64, 4 implied decimals
    size     int64, shares resting at that price
    orders   int64, orders resting at that price

A side with fewer levels has fewer rows; long, so that DuckDB's PIVOT and pandas' ``pivot`` make
it wide: ``PIVOT 'x.depth.parquet' ON side || level USING first(price) GROUP BY time, symbol``.
Snapshots are taken between messages: :meth:`DepthSnapshots.split` cuts each chunk where the
exchange clock passes the next moment, so the book is exact at each.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from tickerplant.capture.parquet import Sink
from tickerplant.jit import kernel
from tickerplant.wire.blocks import U8, as_array, offsets_of

I64 = npt.NDArray[np.int64]
_FLUSH_ROWS = 1 << 18

DEPTH_SCHEMA = pa.schema([
    ("time", pa.int64()), ("symbol", pa.dictionary(pa.int32(), pa.string())),
    ("locate", pa.uint16()), ("side", pa.string()), ("level", pa.uint8()),
    ("price", pa.int64()), ("size", pa.int64()), ("orders", pa.int64()),
])  # fmt: skip


class _Depth(Protocol):
    @property
    def bids(self) -> npt.NDArray[np.void]: ...  # LEVEL records (price, size, orders), best first
    @property
    def asks(self) -> npt.NDArray[np.void]: ...


class Books(Protocol):
    """What snapshots read: the book engine's ``depth`` (capture/ does not import book/)."""

    def depth(self, locate: int, levels: int = 10) -> _Depth: ...


@kernel
def _cuts(
    buf: U8, offsets: I64, start: int, next_at: int, every: int, at: I64, moments: I64
) -> tuple[int, int, int]:  # pragma: no cover - compiled
    """From message ``start`` on, the moments the clock passes and the message before which each
    falls. Returns (moments found, the message to resume from when ``at`` is full, next moment);
    ``next_at`` < 0: the first message sets the clock (the first moment follows it)."""
    k = 0
    for i in range(start, offsets.shape[0]):
        p = offsets[i] + 2 + 5
        ts = 0
        for j in range(6):
            ts = (ts << 8) | int(buf[p + j])
        if next_at < 0:
            next_at = (ts // every + 1) * every
        while ts >= next_at:
            if k == at.shape[0]:
                return k, i, next_at
            at[k] = i
            moments[k] = next_at
            k += 1
            next_at += every
    return k, offsets.shape[0], next_at


class DepthSnapshots:
    """Snapshots of ``levels`` levels per side every ``every`` ns of the books in ``locates``
    (locate -> symbol, kept up to date by the caller as the directory names them), written to
    ``path`` (under ``path.partial`` until :meth:`close`)."""

    def __init__(self, path: str | os.PathLike[str], levels: int, every: int) -> None:
        if levels < 1 or every < 1:
            raise ValueError("levels and every must be positive")
        self.levels = levels
        self.every = every
        self.snapshots = 0
        self.locates: dict[int, str] = {}
        self._parts: list[tuple[int, str, int, str, npt.NDArray[np.void]]] = []
        self._pending = 0  # rows in _parts
        self._next = -1
        self._sink = Sink(path, DEPTH_SCHEMA)
        self._at = np.empty(4096, np.int64)
        self._moments = np.empty(4096, np.int64)

    @property
    def path(self) -> str:
        return self._sink.path

    @property
    def rows(self) -> int:
        return self._sink.rows + self._pending

    def split(
        self, blocks: bytes, times: I64 | None
    ) -> Iterator[tuple[bytes, I64 | None, list[int]]]:
        """``blocks`` (and its messages' capture ``times``) in pieces, each with the moments
        to snapshot once it has been applied."""
        offsets, _ = offsets_of(blocks)
        buf = as_array(blocks)
        done = 0  # messages handed out
        start = 0
        while True:
            found, resume, self._next = _cuts(buf, offsets, start, self._next, self.every,
                                              self._at, self._moments)  # fmt: skip
            pairs = zip(self._at[:found].tolist(), self._moments[:found].tolist(), strict=True)
            for cut, group in itertools.groupby(pairs, key=lambda pair: pair[0]):
                # several moments pass before one message: one piece, then all of them
                yield (*self._piece(blocks, offsets, times, done, cut), [m for _, m in group])
                done = cut
            if resume == offsets.shape[0]:
                break
            start = resume
        yield (*self._piece(blocks, offsets, times, done, offsets.shape[0]), [])

    def _piece(
        self, blocks: bytes, offsets: I64, times: I64 | None, first: int, end: int
    ) -> tuple[bytes, I64 | None]:
        lo = int(offsets[first]) if first < offsets.shape[0] else len(blocks)
        hi = int(offsets[end]) if end < offsets.shape[0] else len(blocks)
        return blocks[lo:hi], (times[first:end] if times is not None else None)

    def snapshot(self, engine: Books, moment: int) -> None:
        """The chosen books as they stand, at ``moment``."""
        self.snapshots += 1
        for locate, name in self.locates.items():
            depth = engine.depth(locate, self.levels)
            for side, levels in (("B", depth.bids), ("S", depth.asks)):
                if levels.shape[0]:
                    self._parts.append((moment, name, locate, side, levels))
                    self._pending += levels.shape[0]
        if self._pending >= _FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        """The snapshots taken since the last flush, as one table: one pyarrow call per column
        for thousands of snapshots, not per snapshot."""
        if not self._parts:
            return
        parts, self._parts, self._pending = self._parts, [], 0
        sizes = np.array([p[4].shape[0] for p in parts])
        names = sorted({p[1] for p in parts})
        index = {name: i for i, name in enumerate(names)}
        levels = np.concatenate([p[4] for p in parts])
        ranks = np.concatenate([np.arange(1, n + 1) for n in sizes.tolist()]).astype(np.uint8)
        table = pa.Table.from_arrays([
            pa.array(np.repeat([p[0] for p in parts], sizes).astype(np.int64)),
            pa.DictionaryArray.from_arrays(
                pa.array(np.repeat([index[p[1]] for p in parts], sizes).astype(np.int32)),
                pa.array(names, type=pa.string())),
            pa.array(np.repeat([p[2] for p in parts], sizes).astype(np.uint16)),
            pa.array(np.repeat([p[3] for p in parts], sizes)),
            pa.array(ranks),
            *(pa.array(levels[f].astype(np.int64)) for f in ("price", "size", "orders")),
        ], schema=DEPTH_SCHEMA)  # fmt: skip
        self._sink.add(table)

    def close(self, keep: bool = True) -> None:
        self._flush()
        self._sink.close(keep)
