"""A stream's journal on disk: the blocks as served, appended by a writer thread, read back
where the journal spilled them, and reopened when the plant starts again."""

from __future__ import annotations

import logging
import os
import queue
import threading
from pathlib import Path
from typing import BinaryIO

from tickerplant.distribute.journal import Journal
from tickerplant.wire.moldudp64 import session_bytes

log = logging.getLogger(__name__)


class JournalFile:
    """A stream's journal on disk: ``directory/SESSION.SUFFIX``, the blocks as served, appended
    a batch at a time by a writer thread (a slow disk must not hold the loop); the newest is read
    back when the plant starts (:attr:`reopened`). With no directory, nothing is written. What
    the file holds, the journal may let go of but its newest ``memory_bytes`` (it reads the rest
    back through the file). A write that fails is logged and counted (:attr:`errors`); the
    journal then keeps everything in memory from there, and a plant restarted later would not
    find the file whole."""

    def __init__(self, directory: Path | None, suffix: str, memory_bytes: int) -> None:
        self.directory = directory
        self.suffix = suffix
        self.memory_bytes = memory_bytes
        self.reopened = _reopen(directory, suffix) if directory is not None else None
        self.errors = 0
        self.written = 0  # bytes the file holds (the writer thread's count)
        self._queue: queue.SimpleQueue[bytes | None] | None = None
        self._writer: threading.Thread | None = None
        self._finishing: list[threading.Thread] = []  # earlier sessions' writers, ending
        self._readers: list[int] = []  # descriptors to read spilled ranges back with

    def open(self, journal: Journal) -> None:
        if self.directory is None:
            return
        self._stop(wait=False)  # the last session's writer finishes its file on its own
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{journal.session.decode('ascii').strip()}.{self.suffix}"
        # A new session's file starts empty; a reopened one goes on where it ended.
        file = path.open("ab" if journal is self.reopened else "wb", buffering=0)
        self.written = journal.size if journal is self.reopened else 0
        reader = os.open(path, os.O_RDONLY)
        self._readers.append(reader)
        journal.backing = lambda offset, size: _pread(reader, offset, size)
        self._queue = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write_all, args=(file, self._queue),
                                        name=f"journal {path.name}", daemon=True)  # fmt: skip
        self._writer.start()

    def write(self, appended: list[bytes], journal: Journal | None) -> None:
        if self._queue is None:
            return
        if appended:
            self._queue.put(b"".join(appended))
        if journal is not None and journal.backing is not None and not self.errors:
            journal.spill(self.memory_bytes, self.written)

    def close(self) -> None:
        """Write what is queued, then close (at the plant's shutdown): every session's file,
        the earlier ones too, is whole when this returns."""
        self._stop(wait=True)
        for writer in self._finishing:
            writer.join()
        self._finishing = []
        for reader in self._readers:
            os.close(reader)
        self._readers = []

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

    def _write_all(self, file: BinaryIO, pending: queue.SimpleQueue[bytes | None]) -> None:
        with file:
            while (data := pending.get()) is not None:
                try:
                    view = memoryview(data)
                    while view:  # a raw file may take less than it is given
                        n = file.write(view) or 0
                        view = view[n:]
                        self.written += n
                except OSError as err:
                    self.errors += 1
                    if self.errors == 1:
                        log.error("journal %s: %s; served from memory only", file.name, err)


def _pread(fd: int, offset: int, size: int) -> bytes:
    parts = []
    while size > 0:
        part = os.pread(fd, size, offset)
        if not part:
            raise RuntimeError(f"journal file ends before {offset + size}: it was cut under us")
        parts.append(part)
        offset += len(part)
        size -= len(part)
    return b"".join(parts)


def _reopen(directory: Path, suffix: str) -> Journal | None:
    """The newest session journal a previous run left in ``directory``, read back."""
    files = sorted(directory.glob(f"*.{suffix}"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    path = files[-1]
    journal = Journal(session_bytes(path.stem))
    data = path.read_bytes()
    taken = journal.restore(data)
    if taken != len(data):
        # A message cut by a crash: never served, so gone from the file too, and served again
        # from the feed as the next number.
        log.warning("%s ends in %d bytes of a cut message: dropped", path, len(data) - taken)
        with path.open("r+b") as f:
            f.truncate(taken)
    return journal
