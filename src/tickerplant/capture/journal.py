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
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tickerplant.capture.checksums import (
    BLOCK,
    ENTRY,
    Backing,
    Checksums,
    CorruptBlock,
    JournalError,
    Reader,
    pread,
)
from tickerplant.distribute.journal import Journal
from tickerplant.wire.moldudp64 import session_bytes

log = logging.getLogger(__name__)

REOPEN_READ = 64 * BLOCK  # bytes of a file read back at a time when it is reopened


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
        # Told of a spilled block that did not match its checksum when read back, with its
        # journal: the owner may fetch the block's messages again and mend the file with them.
        self.on_damage: Callable[[Journal, CorruptBlock], None] | None = None
        self.reopened: Journal | None = None
        if directory is not None and reopen:
            found = _reopen(directory, suffix)
            if found is not None:
                self.reopened, self._sums, reader = found
                self._readers[reader.name] = reader
                assert isinstance(self.reopened.backing, Backing)
                self.reopened.backing.damaged = self._watch(self.reopened)

    def _watch(self, journal: Journal) -> Callable[[CorruptBlock], None]:
        held = weakref.ref(journal)  # (its backing is the journal's: no cycle through it)

        def damaged(err: CorruptBlock) -> None:
            found = held()
            if found is not None and self.on_damage is not None:
                self.on_damage(found, err)

        return damaged

    @staticmethod
    def mend(journal: Journal, at: int, data: bytes, start: int, end: int) -> bool:
        """Write the damaged blocks [start, end) of ``journal``'s file from ``data``, its bytes
        from ``at`` fetched again, if their checksums vouch for them; returns whether they did."""
        backing = journal.backing
        return isinstance(backing, Backing) and backing.mend(at, data, start, end)

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
            journal.backing = Backing(sums, reader, self._watch(journal))
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
        self.journal.backing = Backing(self._sums, self._reader)
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
        data = pread(self._reader.fd, start, end - start)
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


def _crc(path: Path) -> Path:
    return path.with_name(path.name + ".crc")


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
    journal.backing = Backing(sums, reader)
    size = os.fstat(reader.fd).st_size
    verified, tail = 0, b""
    while verified < size:
        data = pread(reader.fd, verified, min(REOPEN_READ, size - verified))
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
