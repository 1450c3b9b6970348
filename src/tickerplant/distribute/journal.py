"""A session's journal: every message published, addressable by sequence number.

The re-request and replay servers answer from it. The journal keeps the block streams it is
handed (bytes, or views of the source's chunks) rather than copying them: at millions of
messages a second, a copy into a growing buffer costs the publisher a page fault every 4 KiB.
Only the offset of each message within its piece is stored, so a range is a slice or two.

A journal whose owner also writes it to a file can keep only its recent part in memory (a ring):
:meth:`Journal.spill` lets go of the oldest pieces the file already holds, and a range in them is
read back through the ``backing`` function the owner gave (bytes at an offset of the block stream,
which is the file's offset too). The journal itself never touches a file.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable

import numpy as np

from tickerplant.wire.blocks import as_array, index_blocks

Buffer = bytes | memoryview
Backing = Callable[[int, int], bytes]  # (offset, size) -> the block stream's bytes there


class Journal:
    # Message offsets are kept in arrays of this many (8 MiB), one more as the journal grows:
    # one array doubled as it filled copied it whole, a 24 ms stall of the loop at a million
    # messages (measured under the wire-latency bench), seconds at a day's hundreds of millions.
    offsets_per_array = 1 << 20

    def __init__(self, session: bytes) -> None:
        self.session = session
        self._pieces: list[Buffer | None] = []  # None: spilled, read through the backing
        self._starts: list[int] = []  # byte offset of each piece in the whole block stream
        self._sizes: list[int] = []
        self._bytes = 0
        self._resident = 0  # the oldest piece still in memory
        self.backing: Backing | None = None
        self._firsts: list[int] = []  # index of each piece's first message
        # of each message within its piece, in arrays of offsets_per_array
        self._offsets: list[np.ndarray] = []
        self._found = np.zeros(1024, dtype=np.int64)  # an append's, before they are stored
        self._count = 0

    @property
    def next_sequence(self) -> int:
        """The sequence number the next appended message will get (sequences start at 1)."""
        return self._count + 1

    def __len__(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        """Bytes of the whole block stream journaled."""
        return self._bytes

    @property
    def memory(self) -> int:
        """Bytes of it held in memory."""
        return self._bytes - (self._starts[self._resident] if self._resident < len(self._starts)
                              else self._bytes)  # fmt: skip

    def spill(self, keep: int, durable: int) -> None:
        """Let go of the oldest pieces that lie wholly in the first ``durable`` bytes (what the
        backing holds) and before the newest ``keep`` bytes; needs :attr:`backing`."""
        if self.backing is None:
            raise RuntimeError("a journal spills only with a backing to read it back from")
        limit = min(durable, self._bytes - keep)
        while (self._resident < len(self._pieces)
               and self._starts[self._resident] + self._sizes[self._resident] <= limit):
            self._pieces[self._resident] = None
            self._resident += 1  # fmt: skip

    def append(self, blocks: Buffer) -> int:
        """Append a block stream of whole messages; returns how many it held.

        The journal keeps ``blocks`` as it is: it must not change afterwards (bytes, or a view of
        an immutable chunk).
        """
        return self._append(blocks, whole=True)[0]

    def restore(self, blocks: Buffer) -> int:
        """Append the whole messages of ``blocks`` (a journal file read back, whose last message
        may have been cut by a crash); returns the bytes taken, the rest being that cut tail."""
        return self._append(blocks, whole=False)[1]

    def _append(self, blocks: Buffer, whole: bool) -> tuple[int, int]:
        arr = as_array(blocks)
        # A message block is at least 2 bytes; ITCH's shortest is 14, but any framing is allowed.
        need = arr.shape[0] // 2 + 1
        if need > self._found.shape[0]:
            self._found = np.zeros(max(need, 2 * self._found.shape[0]), dtype=np.int64)
        count, consumed = index_blocks(arr, self._found)
        if whole and consumed != arr.shape[0]:
            raise ValueError(f"block stream has {arr.shape[0] - consumed} stray bytes at its end")
        if count:
            self._store(self._found[:count])
            self._pieces.append(blocks[:consumed] if consumed != arr.shape[0] else blocks)
            self._starts.append(self._bytes)
            self._sizes.append(int(consumed))
            self._bytes += int(consumed)
            self._firsts.append(self._count)
            self._count += count
        return int(count), int(consumed)

    def _store(self, offsets: np.ndarray) -> None:
        """Keep the offsets of the messages from number ``_count`` (0-based) on."""
        at, done = self._count, 0
        while done < offsets.shape[0]:
            array, slot = divmod(at, self.offsets_per_array)
            if array == len(self._offsets):  # (np.empty: its pages come as they are written)
                self._offsets.append(np.empty(self.offsets_per_array, dtype=np.int64))
            n = min(self.offsets_per_array - slot, offsets.shape[0] - done)
            self._offsets[array][slot : slot + n] = offsets[done : done + n]
            done += n
            at += n

    def _offset(self, message: int) -> int:
        """Where message ``message`` (0-based) starts within its piece."""
        array, slot = divmod(message, self.offsets_per_array)
        return int(self._offsets[array][slot])

    def blocks(self, sequence: int, count: int) -> tuple[int, bytes]:
        """Up to ``count`` messages from ``sequence`` as (messages, block stream)."""
        if sequence < 1 or sequence > self._count or count <= 0:
            return 0, b""
        first = sequence - 1
        last = min(first + count, self._count)
        out: list[Buffer] = []
        at = first
        piece = bisect_right(self._firsts, at) - 1
        while at < last:
            end_msg = self._firsts[piece + 1] if piece + 1 < len(self._firsts) else self._count
            stop = min(last, end_msg)
            data = self._pieces[piece]
            begin = self._offset(at)
            end = self._offset(stop) if stop < end_msg else self._sizes[piece]
            if data is None:  # spilled: from the backing (the page cache, as a rule)
                assert self.backing is not None
                out.append(self.backing(self._starts[piece] + begin, end - begin))
            else:
                out.append(data[begin:end])
            at = stop
            piece += 1
        return last - first, b"".join(out)
