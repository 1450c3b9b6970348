"""The plant's sequenced streams as they are served: ``itch`` (:class:`ItchStream`), the
repaired exchange stream numbered as the exchange numbered it, and ``events``
(:class:`EventStream`), the books' normalized records (:mod:`tickerplant.wire.events`).

Fed the feed session's deliveries in order, it keeps one journal per exchange session. A range
the plant lost keeps its numbers: each lost message is a *mark*, the one-byte message 0x00 (on
the wire a SoupBinTCP Sequenced Data packet ``00 02 53 00``), so a client counting Sequenced
Data stays on the exchange's numbers after it, and one that sees marks knows exactly which
numbers were lost (``tickerplant.client`` turns a run of them into a ``Lost`` notice). No ITCH
5.0 message is one byte long or of type 0x00, so a mark cannot be mistaken for data. (An empty
message would be shorter still, but Wireshark's heuristic OUCH dissector reports an empty
Sequenced Data payload as malformed.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tickerplant.distribute.journal import Journal
from tickerplant.errors import InputError
from tickerplant.receive.events import Batch, Delivery, GapLost, SessionEnded, SessionStarted
from tickerplant.wire import events
from tickerplant.wire.moldudp64 import SESSION_LEN

LOST = b"\x00\x01\x00"  # the block of one lost message: the single byte 0x00


@dataclass(slots=True)
class StreamCounters:
    messages: int = 0  # journaled, lost ones included
    lost: int = 0  # journaled as marks


class ItchStream:
    """What the ``itch`` stream serves; the owner publishes :attr:`journal` after each delivery,
    starts serving a new journal when :meth:`deliver` says the session changed, and writes what
    :meth:`blocks_to_write` returns to the session's file.

    ``reopened`` is a journal a previous run of the plant kept (read back from its file): when
    the feed starts that session again, the stream continues it, numbers and all, and what the
    feed delivers again below its end (the feed catches up from 1 to rebuild the books) is not
    journaled twice.
    """

    def __init__(self, first_sequence: int = 1, reopened: Journal | None = None) -> None:
        self.first_sequence = first_sequence
        self.reopened = reopened
        self.journal: Journal | None = None
        self.ended = False
        self.counters = StreamCounters()
        self._appended: list[bytes] = []

    @staticmethod
    def waiting() -> Journal:
        """The journal served before the first session is heard: empty, its name blank (a login
        for the current session, the blank name, waits there for the first message)."""
        return Journal(b" " * SESSION_LEN)

    def deliver(self, item: Delivery) -> bool:
        """Journal ``item``; True when it started a new session (and so a new journal)."""
        if isinstance(item, SessionStarted):
            self.ended = False
            reopened, self.reopened = self.reopened, None
            if reopened is not None and reopened.session == item.session:
                self.journal = reopened
                self.counters.messages = len(reopened)
                return True
            if item.joined is not None:  # joined under way: it holds from there
                self.journal = Journal(item.session, item.joined)
                return True
            self.journal = Journal(item.session)
            # Numbers below the first the feed delivers exist at the exchange: lost to us.
            self._lose(self.first_sequence - 1)
            return True
        journal = self.journal
        if journal is None:
            raise RuntimeError("a delivery before the session started: the feed's bug")
        if isinstance(item, SessionEnded):
            self.ended = True
            return False
        start = item.first if isinstance(item, Batch) else item.start
        end = item.end
        if start < journal.next_sequence:  # journaled by the run before: the rest, if any
            if end <= journal.next_sequence:
                return False
            item = _from(item, journal.next_sequence)
            start = journal.next_sequence
        if start != journal.next_sequence:
            # The feed session guarantees an unbroken stream; serving a shifted one would
            # silently renumber every message after it.
            raise RuntimeError(f"delivery at {start}, the stream is at {journal.next_sequence}")
        if isinstance(item, Batch):
            self.counters.messages += journal.append(item.blocks)
            self._appended.append(item.blocks)
        elif isinstance(item, GapLost):
            self._lose(item.end - item.start)
        return False

    def blocks_to_write(self) -> list[bytes]:
        """The block streams journaled since the last call, marks included, in order."""
        out, self._appended = self._appended, []
        return out

    def _lose(self, count: int) -> None:
        if count > 0 and self.journal is not None:
            marks = LOST * count
            self.journal.append(marks)
            self._appended.append(marks)
            self.counters.messages += count
            self.counters.lost += count


def _from(item: Batch | GapLost, first: int) -> Batch | GapLost:
    """The part of ``item`` from message ``first`` on."""
    if isinstance(item, GapLost):
        return GapLost(first, item.end, item.revealed_by, item.age)
    return item.since(first)


@dataclass(slots=True)
class EventCounters:
    records: int = 0  # journaled, notices of lost ranges included
    lost_notices: int = 0


@dataclass(slots=True)
class Resume:
    """Where a reopened events journal ends, in the itch numbers that raised its records: the
    rebuilt books' records below it were journaled by the run before."""

    source: int  # records raised by itch numbers below this are the journal's already
    owed: int  # and this many of those raised by ``source`` itself
    covered: int  # itch numbers below this reached the journal (as records, or a notice)


class EventStream:
    """What the ``events`` stream serves: one journal per exchange session of fixed-size
    records, numbered from 1 in the order the books raised them.

    The owner numbers each run of records from :attr:`next_sequence` and appends it; the
    journal a previous run of the plant kept (``reopened``) is continued when its session starts
    again. The rebuilt books raise again what it holds: those records are known by their
    ``source``, the itch number that raised them, not by their count, since a restarted plant
    may repair a range the run before lost (one notice then, many records now). Records whose
    source the journal already covers are dropped, the rest numbered on from its end; sources
    never go back in the journal.
    """

    def __init__(self, reopened: Journal | None = None) -> None:
        self.reopened = reopened
        self.journal: Journal | None = None
        self.counters = EventCounters()
        self.resume: Resume | None = None  # while the rebuilt books are below the journal's end
        self._appended: list[bytes] = []

    @property
    def next_sequence(self) -> int:
        """The number of the next record journaled."""
        return len(self.journal) + 1 if self.journal is not None else 1

    def start(self, session: bytes) -> Journal:
        """A new session's journal (the reopened one, if it is that session's)."""
        reopened, self.reopened = self.reopened, None
        self.resume = None
        if reopened is not None and reopened.session == session:
            self.journal = reopened
            self.counters.records = len(reopened)
            self.resume = _end(reopened)
        else:
            self.journal = Journal(session)
        return self.journal

    def append(self, count: int, blocks: bytes) -> None:
        """``count`` records numbered from :attr:`next_sequence`, as blocks."""
        journal = self.journal
        if journal is None:
            raise RuntimeError("records before the session started: the plant's bug")
        if self.resume is not None:
            blocks = self._past(blocks)
            if not blocks:
                return
        journal.append(blocks)
        self._appended.append(blocks)
        self.counters.records = len(journal)

    def lose(self, start: int, end: int) -> None:
        """The notice that itch numbers [start, end) were lost, in stream position."""
        if self.resume is not None:
            start = max(start, self.resume.covered)  # what the run before told, not again
            if start >= end:
                return
        journaled = self.counters.records
        count = end - start
        self.append(1, events.notice(events.LOST, self.next_sequence, start, start, count, count))
        if self.counters.records > journaled:
            self.counters.lost_notices += 1

    def included(self, at: int) -> int:
        """The number of the last record raised by an itch number below ``at``: what books that
        have taken the itch stream up to ``at`` include (all of the journal, but while the
        rebuilt books are below its end)."""
        journal = self.journal
        if journal is None:
            return 0
        if self.resume is None:
            return len(journal)
        low, high = 0, len(journal)  # records [1, low] are below ``at``, (high, end] are not
        while low < high:
            middle = (low + high + 1) // 2
            try:
                below = _source(journal, middle) < at
            except InputError:  # its file changed under us: say only what is known
                return low
            if below:
                low = middle
            else:
                high = middle - 1
        return low

    def blocks_to_write(self) -> list[bytes]:
        """The blocks journaled since the last call, in order."""
        out, self._appended = self._appended, []
        return out

    def _past(self, blocks: bytes) -> bytes:
        """The records of ``blocks`` past :attr:`resume`, numbered on from the journal's end."""
        resume = self.resume
        assert resume is not None
        rows = np.frombuffer(blocks, dtype=events.BLOCK)
        sources = rows["source"]  # never going back within what the books raise
        below = int(np.searchsorted(sources, resume.source, "left"))
        same = int(np.searchsorted(sources, resume.source, "right")) - below
        owed = min(resume.owed, same)
        resume.owed -= owed
        skip = below + owed
        if skip == rows.shape[0]:
            return b""
        self.resume = None
        out = bytearray(blocks[skip * events.BLOCK_SIZE :])  # whole: a structured copy of
        kept = np.frombuffer(out, dtype=events.BLOCK)  # rows would keep their headers only
        kept["sequence"] = np.arange(self.next_sequence, self.next_sequence + kept.shape[0])
        return bytes(out)


def _end(journal: Journal) -> Resume | None:
    """Where ``journal``'s records end, by source (None: it has none)."""
    last = len(journal)
    if not last:
        return None
    record = events.from_blocks(journal.blocks(last, 1)[1])[0]
    if record["kind"] == events.LOST:
        lost = events.view(events.decode(record.tobytes()), events.LOST)[0]
        end = int(lost["first"] + lost["count"])
        return Resume(end, 0, end)
    source = int(record["source"])
    owed, at = 0, last
    while at > 0:  # the records ``source`` raised, counted back from the end
        first = max(1, at - 255)
        tail = events.from_blocks(journal.blocks(first, at - first + 1)[1])["source"][::-1]
        differs = np.flatnonzero(tail != source)
        owed += int(differs[0]) if differs.shape[0] else tail.shape[0]
        if differs.shape[0]:
            break
        at = first - 1
    return Resume(source, owed, source + 1)


def _source(journal: Journal, sequence: int) -> int:
    """The itch number that raised record ``sequence``."""
    return int(events.from_blocks(journal.blocks(sequence, 1)[1])["source"][0])
