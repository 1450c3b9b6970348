"""A stream's journal on disk: the blocks as served, appended by a writer thread, read back
where the journal spilled them, and reopened when the plant starts again.

Beside each file, ``FILE.crc`` holds a CRC-32 of every BLOCK bytes of it (the last block's as
far as it goes), written after the bytes it covers. Nothing of the file is served that they do
not vouch for: a reopened file is kept up to its first block that does not match (a byte
flipped on disk, or a tail a crash tore: written, its checksum not, or the other way round), the
rest dropped and fetched again from the exchange; a range read back after the journal spilled
it is checked block by block, and one that does not match raises :class:`JournalError` instead
of being served.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tickerplant.distribute.journal import Journal
from tickerplant.errors import InputError
from tickerplant.wire.moldudp64 import session_bytes

log = logging.getLogger(__name__)

BLOCK = 64 << 10  # bytes of a journal file one checksum covers
REOPEN_READ = 64 * BLOCK  # bytes of a file read back at a time when it is reopened
ENTRY = struct.Struct("<II")  # a checksum: bytes of its block covered, their CRC-32


class JournalError(InputError):
    """A journal file's bytes do not match their checksum: the disk changed them."""


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
        return _span(self.entries)

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
            self.entries.append((part, zlib.crc32(_pread(fd, whole * BLOCK, part))))

    def read(self, fd: int, offset: int, size: int) -> bytes:
        """``size`` bytes of the file at ``offset``, each block they touch checked whole."""
        start = offset - offset % BLOCK
        first, last = start // BLOCK, (offset + size - 1) // BLOCK
        entries = self.entries[first : last + 1]  # a copy: the writer may replace the last
        span = _span(entries)
        if len(entries) < last + 1 - first or span < offset + size - start:
            raise JournalError(f"journal bytes {offset}-{offset + size} are beyond what its "
                               "checksums cover")  # fmt: skip
        data = _pread(fd, start, span)
        for i, (length, crc) in enumerate(entries):
            if zlib.crc32(data[i * BLOCK : i * BLOCK + length]) != crc:
                at = (first + i) * BLOCK
                raise JournalError(f"journal bytes {at}-{at + length} do not match their "
                                   "checksum: not served")  # fmt: skip
        return data[offset - start : offset - start + size]


class JournalFile:
    """A stream's journal on disk: ``directory/SESSION.SUFFIX``, the blocks as served, appended
    a batch at a time by a writer thread (a slow disk must not hold the loop); the newest is read
    back when the plant starts (:attr:`reopened`), and only the newest ``keep_sessions`` files
    are kept (None: all). What the file holds, the journal may let go of but its newest
    ``memory_bytes`` (it reads the rest back through the file); with no directory nothing is
    written, and the journal is a ring of its newest ``memory_bytes``. A write that fails is
    logged and counted (:attr:`errors`); the journal then keeps everything in memory from
    there, and a plant restarted later would not find the file whole."""

    def __init__(self, directory: Path | None, suffix: str, memory_bytes: int,
                 keep_sessions: int | None = None, reopen: bool = True,
                 fsync_interval: float | None = None) -> None:  # fmt: skip
        self.directory = directory
        self.suffix = suffix
        self.memory_bytes = memory_bytes
        self.keep_sessions = keep_sessions
        # None: the kernel writes the page cache back when it will (a power cut may lose the
        # last ~30 s); 0: fsync after every batch; N: at most N seconds after a batch.
        self.fsync_interval = fsync_interval
        self._followed = 0  # messages of the journal queued by follow()
        self.errors = 0
        self.syncs = 0  # fsyncs done (of the file and its checksums together)
        # Bytes the current session's file holds, as its writer thread counts them: each
        # writer its own count (one finishing an earlier session's file must not add to it).
        self._written = [0]
        self._queue: queue.SimpleQueue[bytes | None] | None = None
        self._writer: threading.Thread | None = None
        self._finishing: list[threading.Thread] = []  # earlier sessions' writers, ending
        # Each session file's descriptor to read spilled ranges back with, by file name: kept
        # while its clients may read it, closed when the file is retired (a deleted file's
        # disk is freed only then).
        self._readers: dict[str, Reader] = {}
        self._sums = Checksums()
        self.reopened: Journal | None = None
        if directory is not None and reopen:
            found = _reopen(directory, suffix)
            if found is not None:
                self.reopened, self._sums, reader = found
                self._readers[reader.name] = reader

    def open(self, journal: Journal) -> None:
        if self.directory is None:
            return
        self._stop(wait=False)  # the last session's writer finishes its file on its own
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{journal.session.decode('ascii').strip()}.{self.suffix}"
        # A new session's file starts empty; a reopened one goes on where it ended.
        reopened = journal is self.reopened
        file = path.open("ab" if reopened else "wb", buffering=0)
        crc = os.open(_crc(path), os.O_WRONLY | os.O_CREAT | (0 if reopened else os.O_TRUNC))
        if not reopened:  # a session begun again: its end is not the run before's
            _end(path).unlink(missing_ok=True)
        self._written = [journal.size if reopened else 0]
        self._followed = len(journal)
        if reopened:
            sums = self._sums  # (its backing reads what it reopened, and what is added)
        else:
            sums = Checksums()
            reader = Reader(path)
            self._readers[path.name] = reader
            journal.backing = _backing(sums, reader)
        if not reopened and self.keep_sessions is not None:
            self._retire(path, self.keep_sessions)
        if self.fsync_interval is not None and not reopened:  # the new files' names, durable
            _sync_directory(self.directory)
        self._queue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_all,
                                        args=(file, crc, sums, self._queue, self._written),
                                        name=f"journal {path.name}", daemon=True)  # fmt: skip
        self._writer.start()

    def _retire(self, newest: Path, keep: int) -> None:
        """Delete all but the newest ``keep`` files (``newest``, just made, is one): the disk a
        journal takes is bounded. A client still reading one keeps its descriptor."""
        files = sorted((p for p in newest.parent.glob(f"*.{self.suffix}") if p != newest),
                       key=lambda p: p.stat().st_mtime)  # fmt: skip
        for old in files[: max(0, len(files) + 1 - keep)]:
            log.info("journal %s: older than the newest %d sessions, deleted", old, keep)
            old.unlink(missing_ok=True)
            _crc(old).unlink(missing_ok=True)
            reader = self._readers.pop(old.name, None)
            if reader is not None:
                reader.close()

    def write(self, appended: list[bytes], journal: Journal | None) -> None:
        if self.directory is None:  # no file: a ring of the newest memory_bytes
            if journal is not None:
                journal.drop(self.memory_bytes)
            return
        if self._queue is None:
            return
        if appended:
            self._queue.put(b"".join(appended))
        if journal is not None and journal.backing is not None and not self.errors:
            journal.spill(self.memory_bytes, self.written)

    def follow(self, journal: Journal) -> None:
        """:meth:`write` what ``journal`` (the one last opened) holds past what this queued,
        for an owner that appends to it directly."""
        new = len(journal) - self._followed
        if new:
            self.write([journal.blocks(self._followed + 1, new)[1]], journal)
            self._followed += new

    def close(self) -> None:
        """Write what is queued, then close (at the plant's shutdown): every session's file,
        the earlier ones too, is whole when this returns."""
        self._stop(wait=True)
        for writer in self._finishing:
            writer.join()
        self._finishing = []
        for reader in self._readers.values():
            reader.close()
        self._readers = {}

    def _stop(self, wait: bool) -> None:
        if self._queue is not None and self._writer is not None:
            self._queue.put(None)
            if wait:
                self._writer.join()
            else:
                self._finishing = [w for w in self._finishing if w.is_alive()]
                self._finishing.append(self._writer)
        self._queue = self._writer = None
        # The last session's reader stays open until close(): clients may be finishing it.

    @property
    def written(self) -> int:
        """Bytes the current session's file holds."""
        return self._written[0]

    def _write_all(self, file: BinaryIO, crc: int, sums: Checksums,
                   pending: queue.SimpleQueue[bytes | None],
                   written: list[int]) -> None:  # fmt: skip
        """The bytes, then their checksums, then counted as written: what the journal may
        spill (and read back) is always vouched for. With an fsync_interval, both are synced
        to the disk at most that long after a batch (and at the end)."""
        interval = self.fsync_interval
        due: float | None = None  # when what was written unsynced must be synced
        with file:
            try:
                while True:
                    wait = None if due is None else max(0.0, due - time.monotonic())
                    try:
                        data = pending.get(timeout=wait)
                    except queue.Empty:
                        data = b""
                    if data is None:
                        break
                    try:
                        view = memoryview(data)
                        while view:  # a raw file may take less than it is given
                            n = file.write(view) or 0
                            first = sums.add(view[:n])
                            os.pwrite(crc, sums.encode(first), first * ENTRY.size)
                            view = view[n:]
                            written[0] += n
                        if interval is not None and data and due is None:
                            due = time.monotonic() + interval
                        if due is not None and time.monotonic() >= due:
                            self._sync(file, crc)
                            due = None
                    except OSError as err:
                        self._failed(file, err)
                        due = None  # (a sync that failed is not tried again at once: a spin)
                if due is not None:
                    self._sync(file, crc)
            except OSError as err:
                self._failed(file, err)
            finally:
                os.close(crc)

    def _sync(self, file: BinaryIO, crc: int) -> None:
        os.fsync(file.fileno())
        os.fsync(crc)
        self.syncs += 1

    def _failed(self, file: BinaryIO, err: OSError) -> None:
        self.errors += 1
        if self.errors == 1:
            log.error("journal %s: %s; served from memory only", file.name, err)


class JournalFollower:
    """A journal file another process is writing (the exchange's, read by its recovery host),
    followed as it grows: each :meth:`poll` appends to :attr:`journal` what was written since
    and its checksums vouch for, and lets go of it at once (it is read back from the file). The
    file's ``.end`` beside it, written once the session's last byte is, says it is whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = Journal(session_bytes(path.stem))
        self._reader = Reader(path)
        self._sums = Checksums()
        self.journal.backing = _backing(self._sums, self._reader)
        self._verified = 0  # bytes of the file vouched for and read
        self._tail = b""  # of them, a message not yet whole
        self._suspect: int | None = None  # where bytes did not match at the last poll

    @property
    def ended(self) -> bool:
        """The writer has finished the file, and all of it has been read."""
        end = _end(self.path)
        try:
            size = int(end.read_text())
        except (FileNotFoundError, ValueError):
            return False
        return self._verified >= size

    def poll(self) -> int:
        """Append what was written since the last call; returns the messages appended. Raises
        :class:`JournalError` if bytes do not match their checksum twice running (the disk
        changed them)."""
        first = self._verified // BLOCK  # the entry of the block the last poll ended in
        with contextlib.suppress(FileNotFoundError):
            raw = _crc(self.path).read_bytes()[first * ENTRY.size :]
            self._sums.entries[first:] = Checksums.decode(raw).entries
        start = first * BLOCK
        covered = self._sums.covered
        if covered <= self._verified:
            return 0
        # At most REOPEN_READ a poll: a host started late on a day's file reads it back in
        # pieces, not all at once on its loop.
        end = min(covered, start + REOPEN_READ)
        data = _pread(self._reader.fd, start, end - start)
        good = self._sums.verified(data, start)
        bad = start + good
        if bad == end < covered:  # what this poll read is all vouched for: the rest next time
            self._suspect = None
        elif bad < self._verified:  # an entry read mid-rewrite: what was read stands, look again
            self._suspect = bad
            return 0
        elif bad // BLOCK < len(self._sums.entries) - 1:
            # A block before the last does not match. A read racing the writer's may see an
            # entry half-rewritten: looked at again next time; the same mismatch twice is the
            # disk's.
            if self._suspect == bad:
                raise JournalError(f"{self.path}: bytes {bad}-{covered} do not match their "
                                   "checksum")  # fmt: skip
            self._suspect = bad
        else:
            self._suspect = None
        piece = self._tail + data[self._verified - start : good]
        before = len(self.journal)
        self._tail = piece[self.journal.restore(piece) :]
        self.journal.spill(0, self.journal.size)
        self._verified = start + good
        return len(self.journal) - before

    def close(self) -> None:
        self._reader.close()


def mark_ended(path: Path, size: int) -> None:
    """Say that the journal file ``path`` is whole at ``size`` bytes (:class:`JournalFollower`):
    written aside and renamed, so that a follower never reads it half-written."""
    aside = path.with_name(path.name + ".end.partial")
    aside.write_text(str(size))
    aside.rename(_end(path))


def _end(path: Path) -> Path:
    return path.with_name(path.name + ".end")


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pread(fd: int, offset: int, size: int) -> bytes:
    parts = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:
            raise JournalError(f"journal file ends before {offset + size}: it was cut under us")
        parts.append(part)
        offset += len(part)
        size -= len(part)
    return b"".join(parts)


def _span(entries: list[tuple[int, int]]) -> int:
    """Bytes the ``entries`` cover, from the start of the first one's block."""
    return (len(entries) - 1) * BLOCK + entries[-1][0] if entries else 0


def _crc(path: Path) -> Path:
    return path.with_name(path.name + ".crc")


class Reader:
    """A journal file's descriptor for reading back; closed, reads raise JournalError (a
    journal whose file was retired is never read through a number since given to another)."""

    def __init__(self, path: Path) -> None:
        self.name = path.name
        self.fd = os.open(path, os.O_RDONLY)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _backing(sums: Checksums, reader: Reader) -> Callable[[int, int], bytes]:
    def read(offset: int, size: int) -> bytes:
        if reader.fd < 0:
            raise JournalError(f"journal {reader.name} was retired (keep_sessions): its file "
                               "is gone")  # fmt: skip
        try:
            return sums.read(reader.fd, offset, size)
        except OSError as err:  # the disk failing: the client is told, the plant goes on
            raise JournalError(f"journal {reader.name}: {err.strerror}") from None

    return read


def _reopen(directory: Path, suffix: str) -> tuple[Journal, Checksums, Reader] | None:
    """The newest session journal a previous run left in ``directory``, read back as far as its
    checksums vouch for it, a piece at a time and let go of at once (a day's file is not read
    into memory), with their entries (to go on with) and the descriptor it reads back through."""
    files = sorted(directory.glob(f"*.{suffix}"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    path = files[-1]
    if not _crc(path).exists():  # nothing vouches for it: kept aside, not served
        aside = path.with_name(path.name + ".unverified")
        path.rename(aside)
        log.warning("%s has no checksums (%s): moved to %s; the session is fetched again from "
                    "the exchange", path, _crc(path).name, aside.name)  # fmt: skip
        return None
    journal = Journal(session_bytes(path.stem))
    sums = Checksums.decode(_crc(path).read_bytes())
    reader = Reader(path)
    journal.backing = _backing(sums, reader)
    size = os.fstat(reader.fd).st_size
    verified, tail = 0, b""
    while verified < size:
        data = _pread(reader.fd, verified, min(REOPEN_READ, size - verified))
        good = sums.verified(data, verified)
        piece = tail + data[:good]
        tail = piece[journal.restore(piece) :]
        journal.spill(0, journal.size)
        verified += good
        if good < len(data):
            # A byte changed on disk, or a tail a crash tore: from the first block that does
            # not match, dropped, and served again from the feed from that number on.
            log.warning("%s: bytes %d-%d do not match their checksums: dropped from there",
                        path, verified, size)  # fmt: skip
            break
    if tail:
        # A message cut by a crash: never served, so gone from the file too, and served again
        # from the feed as the next number.
        log.warning("%s ends in %d bytes of a cut message: dropped", path, len(tail))
    taken = journal.size
    if taken != size or sums.covered != taken:  # (else the entries are the file's, whole)
        with path.open("r+b") as f:
            f.truncate(taken)
        sums.cut(taken, reader.fd)
        _crc(path).write_bytes(sums.encode())
    return journal, sums, reader
