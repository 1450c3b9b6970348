"""A session's journal: every message published, addressable by sequence number.

The re-request and replay servers answer from it. Messages are kept as one growing block stream
plus the offset of each message, so a range is one slice, never a loop over messages.
"""

from __future__ import annotations

import numpy as np

from tickerplant.wire.blocks import as_array, index_blocks


class Journal:
    def __init__(self, session: bytes) -> None:
        self.session = session
        self._data = bytearray()
        self._offsets = np.zeros(1024, dtype=np.int64)
        self._count = 0

    @property
    def next_sequence(self) -> int:
        """The sequence number the next appended message will get (sequences start at 1)."""
        return self._count + 1

    def __len__(self) -> int:
        return self._count

    def append(self, blocks: bytes | memoryview) -> int:
        """Append a block stream of whole messages; returns how many it held."""
        arr = as_array(blocks)
        need = self._count + arr.shape[0] // 2 + 1
        if need > self._offsets.shape[0]:
            grown = np.zeros(max(need, 2 * self._offsets.shape[0]), dtype=np.int64)
            grown[: self._count] = self._offsets[: self._count]
            self._offsets = grown
        base = len(self._data)
        window = self._offsets[self._count :]
        count, consumed = index_blocks(arr, window)
        if consumed != arr.shape[0]:
            raise ValueError(f"block stream has {arr.shape[0] - consumed} stray bytes at its end")
        window[:count] += base
        self._data += blocks
        self._count += count
        return int(count)

    def blocks(self, sequence: int, count: int) -> tuple[int, bytes]:
        """Up to ``count`` messages from ``sequence`` as (messages, block stream)."""
        if sequence < 1 or sequence > self._count or count <= 0:
            return 0, b""
        first = sequence - 1
        last = min(first + count, self._count)
        start = int(self._offsets[first])
        end = int(self._offsets[last]) if last < self._count else len(self._data)
        return last - first, bytes(self._data[start:end])
