"""A session's journal: every message published, addressable by sequence number.

The re-request and replay servers answer from it. The journal keeps the block streams it is
handed (bytes, or views of the source's chunks) rather than copying them: at millions of
messages a second, a copy into a growing buffer costs the publisher a page fault every 4 KiB.
Each piece keeps the offset of each of its messages, so a range is a slice or two.

What it holds in memory is bounded by its owner. One that also writes the journal to a file
lets go of the oldest pieces the file already holds (:meth:`Journal.spill`) and reads a range in
them back through the ``backing`` function it gave (bytes at an offset of the block stream, the
file's offset too); of those it keeps only the offset of every :attr:`Journal.mark_every`-th
message, and reads from the one before. One without a file keeps a ring (:meth:`Journal.drop`):
the oldest pieces are gone, and asking for them raises :class:`JournalGone`. The journal itself
never touches a file.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable

import numpy as np

from tickerplant.errors import InputError
from tickerplant.wire.blocks import as_array, index_blocks, offsets_of

Buffer = bytes | memoryview
Backing = Callable[[int, int], bytes]  # (offset, size) -> the block stream's bytes there


class JournalGone(InputError):
    """Messages a journal without a file no longer holds (its ring has moved past them)."""


class Journal:
    mark_every = 64  # of the messages it let go of, the offset of every this many is kept
    # Those offsets are kept in arrays of this many (512 KiB, 4M messages each): one array
    # doubled as it filled would copy it whole, a stall of the loop that grows with the day.
    marks_per_array = 1 << 16

    def __init__(self, session: bytes, first: int = 1) -> None:
        """``first``: the number of its first message; one past 1 (a receiver that joined the
        session under way) holds none before it, as a ring that let them go, and keeps no file.
        """
        self.session = session
        self.backing: Backing | None = None
        self._first = first
        self._count = first - 1  # messages numbered so far
        self._bytes = 0
        # The pieces in memory, from _head on: each block stream, the number (0-based) and byte
        # offset of its first message, and where each of its messages starts within it.
        self._pieces: list[Buffer | None] = []
        self._firsts: list[int] = []
        self._starts: list[int] = []
        self._offsets: list[np.ndarray | None] = []
        self._head = 0
        self._out = first - 1  # messages before this one are no longer in memory...
        self._out_bytes = 0
        self._gone = first - 1  # ...and before this one, not held at all (a ring's)
        self._marks: list[np.ndarray] = []  # byte offset of message j x mark_every, for j x
        self._found = np.zeros(1024, dtype=np.int64)  # mark_every < _out; an append's offsets

    @property
    def next_sequence(self) -> int:
        """The sequence number the next appended message will get (sequences start at 1)."""
        return self._count + 1

    def __len__(self) -> int:
        return self._count

    @property
    def first_held(self) -> int:
        """The sequence number of the oldest message it still holds (in memory or the file)."""
        return self._gone + 1

    @property
    def size(self) -> int:
        """Bytes of the whole block stream journaled."""
        return self._bytes

    @property
    def memory(self) -> int:
        """Bytes of it held in memory."""
        return self._bytes - self._out_bytes

    @property
    def index_bytes(self) -> int:
        """Bytes of memory its index takes: each resident message's offset, and the marks."""
        resident = sum(o.nbytes for o in self._offsets[self._head :] if o is not None)
        return resident + sum(m.nbytes for m in self._marks)

    def spill(self, keep: int, durable: int) -> None:
        """Let go of the oldest pieces that lie wholly in the first ``durable`` bytes (what the
        backing holds) and before the newest ``keep`` bytes; needs :attr:`backing`."""
        if self.backing is None or self._first != 1:
            raise RuntimeError("a journal spills only with a backing to read it back from "
                               "(and numbered from 1)")
        self._release(min(durable, self._bytes - keep), marked=True)

    def drop(self, keep: int) -> None:
        """Let go of the oldest pieces before the newest ``keep`` bytes, for good: a ring."""
        if self.backing is not None:
            raise RuntimeError("a journal with a backing spills what it lets go of")
        self._release(self._bytes - keep, marked=False)
        self._gone = self._out

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
            found = self._found[:count]
            self._offsets.append(found.astype(np.int32) if consumed < 1 << 31 else found.copy())
            self._pieces.append(blocks[:consumed] if consumed != arr.shape[0] else blocks)
            self._firsts.append(self._count)
            self._starts.append(self._bytes)
            self._bytes += int(consumed)
            self._count += count
        return int(count), int(consumed)

    def _release(self, limit: int, marked: bool) -> None:
        """Let go of the pieces in memory that end by byte ``limit``, marking them first if
        they are to be read back."""
        head, pieces = self._head, len(self._pieces)
        while head < pieces and self._end(head) <= limit:
            if marked:
                self._mark(head)
            self._pieces[head] = self._offsets[head] = None
            head += 1
        if head == self._head:
            return
        self._head = head
        self._out, self._out_bytes = ((self._firsts[head], self._starts[head]) if head < pieces
                                      else (self._count, self._bytes))  # fmt: skip
        if head > 1024 and 2 * head > pieces:  # the lists' dead front, cut off now and then
            for items in (self._pieces, self._firsts, self._starts, self._offsets):
                del items[:head]
            self._head = 0

    def _end(self, piece: int) -> int:
        return self._starts[piece + 1] if piece + 1 < len(self._starts) else self._bytes

    def _mark(self, piece: int) -> None:
        """Keep the offsets of ``piece``'s messages numbered a multiple of mark_every."""
        offsets = self._offsets[piece]
        assert offsets is not None
        first, start, every = self._firsts[piece], self._starts[piece], self.mark_every
        mark = -(-first // every)  # the first in this piece
        at = mark * every - first
        while at < offsets.shape[0]:
            array, slot = divmod(mark, self.marks_per_array)
            if array == len(self._marks):
                self._marks.append(np.empty(self.marks_per_array, dtype=np.int64))
            take = min(self.marks_per_array - slot, -(-(offsets.shape[0] - at) // every))
            self._marks[array][slot : slot + take] = offsets[at : at + take * every : every]
            self._marks[array][slot : slot + take] += start
            mark += take
            at += take * every

    def blocks(self, sequence: int, count: int) -> tuple[int, bytes]:
        """Up to ``count`` messages from ``sequence`` as (messages, block stream). Raises
        :class:`JournalGone` for messages a ring no longer holds."""
        if sequence < 1 or sequence > self._count or count <= 0:
            return 0, b""
        first = sequence - 1
        if first < self._gone:
            raise JournalGone(f"messages {sequence}-{self._gone} are no longer held (the "
                              f"journal keeps its newest messages, from {self._gone + 1})")
        last = min(first + count, self._count)
        out: list[Buffer] = []
        at = first
        if at < self._out:  # let go of: read back
            out.append(self._read_back(at, min(last, self._out)))
            at = min(last, self._out)
        piece = bisect_right(self._firsts, at, self._head) - 1
        while at < last:
            end_msg = self._firsts[piece + 1] if piece + 1 < len(self._firsts) else self._count
            stop = min(last, end_msg)
            data, offsets = self._pieces[piece], self._offsets[piece]
            assert data is not None and offsets is not None
            begin = int(offsets[at - self._firsts[piece]])
            end = (int(offsets[stop - self._firsts[piece]]) if stop < end_msg
                   else self._end(piece) - self._starts[piece])  # fmt: skip
            out.append(data[begin:end])
            at = stop
            piece += 1
        return last - first, b"".join(out)

    def _read_back(self, first: int, last: int) -> bytes:
        """Messages [first, last) (0-based) of those let go of, through the backing: from the
        mark before ``first`` to the one after ``last``, cut to them."""
        assert self.backing is not None
        every = self.mark_every
        mark = first // every
        after = -(-last // every)
        begin = self._mark_at(mark)
        end = self._mark_at(after) if after * every < self._out else self._out_bytes
        data = self.backing(begin, end - begin)
        offsets, _ = offsets_of(data)
        skip, n = first - mark * every, last - first
        stop = int(offsets[skip + n]) if skip + n < offsets.shape[0] else len(data)
        return data[int(offsets[skip]) : stop]

    def covering(self, start: int, end: int) -> tuple[int, int, int, int]:
        """The messages let go of whose bytes cover bytes [start, end) of the block stream, as
        (first, last) sequence numbers and the bytes [begin, stop) they span: from the mark at
        or before ``start`` to the one at or after ``end`` (what to fetch again to mend them)."""
        if not 0 <= start < end <= self._out_bytes:
            raise ValueError(f"bytes {start}-{end} are not among the {self._out_bytes} let go of")
        every, marks = self.mark_every, -(-self._out // self.mark_every)
        low, high = 0, marks - 1  # the last mark at or before start (mark 0 is byte 0)
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self._mark_at(mid) <= start else (low, mid - 1)
        after = low + 1  # the first mark at or after end, else the end of what was let go of
        while after < marks and self._mark_at(after) < end:
            after += 1
        last, stop = ((after * every, self._mark_at(after)) if after < marks
                      else (self._out, self._out_bytes))  # fmt: skip
        return low * every + 1, last, self._mark_at(low), stop

    def _mark_at(self, mark: int) -> int:
        array, slot = divmod(mark, self.marks_per_array)
        return int(self._marks[array][slot])
