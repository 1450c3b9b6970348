"""A journal file's checksums: a CRC-32 of every BLOCK bytes, kept beside it as ``FILE.crc``,
and the reads back through them that serve nothing the disk changed.

Each entry is ``(length, crc)``: the bytes of its block covered so far (the last block's as far
as it goes) and their CRC-32, replaced whole after the bytes it covers were written. A block that
does not match raises :class:`CorruptBlock`; what fetches it again writes the block back with
:meth:`Checksums.mend`, which takes only what its entry vouches for.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

from tickerplant.errors import InputError

BLOCK = 64 << 10  # bytes of a journal file one checksum covers
ENTRY = struct.Struct("<II")  # a checksum: bytes of its block covered, their CRC-32


class JournalError(InputError):
    """A journal file's bytes do not match their checksum: the disk changed them."""


class CorruptBlock(JournalError):
    """Bytes [start, end) of a journal file, one checksum's block, do not match it."""

    def __init__(self, name: str, start: int, end: int) -> None:
        super().__init__(f"journal {name} bytes {start}-{end} do not match their checksum: "
                         "not served")  # fmt: skip
        self.start, self.end = start, end


class Checksums:
    """The CRC-32 of each BLOCK of a file, the last block's as far as it goes, as
    ``(length, crc)`` entries. Appended to by one thread while another reads: an entry is
    replaced whole, after the bytes it covers were written."""

    def __init__(self, entries: list[tuple[int, int]] | None = None) -> None:
        self.entries = entries if entries is not None else []

    @classmethod
    def of(cls, data: bytes | memoryview) -> Checksums:
        sums = cls()
        sums.add(data)
        return sums

    @classmethod
    def decode(cls, raw: bytes) -> Checksums:
        """A ``.crc`` file's entries (a torn last entry left out: what it covered is not
        vouched for)."""
        whole = len(raw) - len(raw) % ENTRY.size
        return cls([ENTRY.unpack_from(raw, at) for at in range(0, whole, ENTRY.size)])

    @property
    def covered(self) -> int:
        """Bytes of the file the entries vouch for."""
        return covered_by(self.entries)

    def add(self, data: bytes | memoryview) -> int:
        """``data`` was appended to the file; returns the index of the first entry it changed."""
        entries = self.entries
        first = len(entries) - 1 if entries and entries[-1][0] < BLOCK else len(entries)
        view = memoryview(data)
        while view:
            if not entries or entries[-1][0] == BLOCK:
                entries.append((0, 0))
            length, crc = entries[-1]
            n = min(BLOCK - length, len(view))
            entries[-1] = (length + n, zlib.crc32(view[:n], crc))
            view = view[n:]
        return first

    def encode(self, first: int = 0) -> bytes:
        """The entries from ``first`` on, as the ``.crc`` file holds them from ``first`` x 8."""
        return b"".join(ENTRY.pack(*entry) for entry in self.entries[first:])

    def verified(self, data: bytes | memoryview, at: int = 0) -> int:
        """Bytes of ``data`` (the file's bytes from ``at``, a multiple of BLOCK) vouched for
        from its start: up to the first block whose entry does not match, or that has none."""
        done, entries = 0, self.entries
        # By index from ``at``'s entry: neither a copy of the entries after it nor a walk over
        # those before it (a day's file holds hundreds of thousands, and this runs each read).
        for i in range(at // BLOCK, len(entries)):
            length, crc = entries[i]
            block = data[done : done + length]
            if len(block) < length:
                break  # past what ``data`` holds: the next read's to check
            if zlib.crc32(block) != crc:
                break
            done += length
            if length < BLOCK:
                break  # the last block, as far as it had gone
        return done

    def cut(self, size: int, fd: int) -> None:
        """The file (open as ``fd``) was cut to ``size`` bytes: the entries end there."""
        whole, part = divmod(size, BLOCK)
        self.entries = self.entries[:whole]
        if part:
            self.entries.append((part, zlib.crc32(pread(fd, whole * BLOCK, part))))

    def read(self, fd: int, offset: int, size: int, name: str = "") -> bytes:
        """``size`` bytes of the file at ``offset``, each block they touch checked whole."""
        start = offset - offset % BLOCK
        first, last = start // BLOCK, (offset + size - 1) // BLOCK
        entries = self.entries[first : last + 1]  # a copy: the writer may replace the last
        span = covered_by(entries)
        if len(entries) < last + 1 - first or span < offset + size - start:
            raise JournalError(f"journal bytes {offset}-{offset + size} are beyond what its "
                               "checksums cover")  # fmt: skip
        data = pread(fd, start, span)
        for i, (length, crc) in enumerate(entries):
            if zlib.crc32(data[i * BLOCK : i * BLOCK + length]) != crc:
                at = (first + i) * BLOCK
                raise CorruptBlock(name, at, at + length)
        return data[offset - start : offset - start + size]

    def mend(self, fd: int, at: int, data: bytes, start: int, end: int) -> bool:
        """Write the blocks in bytes [start, end) (block bounds) from ``data``, the file's bytes
        from ``at`` fetched again, if their checksums vouch for every one; returns whether they
        did (nothing is written otherwise, and no block outside the range ever is)."""
        blocks = []
        for i in range(start // BLOCK, -(-end // BLOCK)):
            length, crc = self.entries[i]
            block = data[i * BLOCK - at : i * BLOCK - at + length]
            if i * BLOCK < at or len(block) < length or zlib.crc32(block) != crc:
                return False
            blocks.append((i * BLOCK, block))
        for offset, block in blocks:
            os.pwrite(fd, block, offset)
        return bool(blocks)

def pread(fd: int, offset: int, size: int) -> bytes:
    parts = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:
            raise JournalError(f"journal file ends before {offset + size}: it was cut under us")
        parts.append(part)
        offset += len(part)
        size -= len(part)
    return b"".join(parts)


def covered_by(entries: list[tuple[int, int]]) -> int:
    """Bytes the ``entries`` cover, from the start of the first one's block."""
    return (len(entries) - 1) * BLOCK + entries[-1][0] if entries else 0


class Reader:
    """A journal file's descriptor for reading back; closed, reads raise JournalError (a
    journal whose file was retired is never read through a number since given to another)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Backing:
    """A journal's spilled bytes, read back from its file and checked; a block that does not
    match is not served, and ``damaged`` is told of it (to fetch it again and :meth:`mend`)."""

    def __init__(self, sums: Checksums, reader: Reader,
                 damaged: Callable[[CorruptBlock], None] | None = None) -> None:  # fmt: skip
        self.sums = sums
        self.reader = reader
        self.damaged = damaged

    def __call__(self, offset: int, size: int) -> bytes:
        reader = self.reader
        if reader.fd < 0:
            raise JournalError(f"journal {reader.name} was retired (keep_sessions): its file "
                               "is gone")  # fmt: skip
        try:
            return self.sums.read(reader.fd, offset, size, reader.name)
        except CorruptBlock as err:
            if self.damaged is not None:
                self.damaged(err)
            raise
        except OSError as err:  # the disk failing: the client is told, the plant goes on
            raise JournalError(f"journal {reader.name}: {err.strerror}") from None

    def mend(self, at: int, data: bytes, start: int, end: int) -> bool:
        """:meth:`Checksums.mend` on the file: the blocks in [start, end) from ``data``, the
        file's bytes from ``at`` fetched again, written if their checksums vouch for them."""
        if self.reader.fd < 0:
            return False
        fd = os.open(self.reader.path, os.O_WRONLY)  # (not O_APPEND: pwrite goes where told)
        try:
            return self.sums.mend(fd, at, data, start, end)
        finally:
            os.close(fd)
