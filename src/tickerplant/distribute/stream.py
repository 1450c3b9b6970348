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

from tickerplant.distribute.journal import Journal
from tickerplant.receive.events import Batch, GapLost, SessionEnded, SessionStarted
from tickerplant.receive.sequencer import Delivery
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


class EventStream:
    """What the ``events`` stream serves: one journal per exchange session of fixed-size
    records, numbered from 1 in the order the books raised them.

    The owner numbers each run of records from :attr:`next_sequence` and appends it; the
    journal a previous run of the plant kept (``reopened``) is continued when its session starts
    again, the records the rebuilt books raise again below its end being dropped (the books are
    deterministic: the same itch stream raises the same records).
    """

    def __init__(self, reopened: Journal | None = None) -> None:
        self.reopened = reopened
        self.journal: Journal | None = None
        self.counters = EventCounters()
        self._raised = 0  # records raised in this session by this run
        self._appended: list[bytes] = []

    @property
    def next_sequence(self) -> int:
        """The number of the next record raised."""
        return self._raised + 1

    def start(self, session: bytes) -> Journal:
        """A new session's journal (the reopened one, if it is that session's)."""
        reopened, self.reopened = self.reopened, None
        self._raised = 0
        if reopened is not None and reopened.session == session:
            self.journal = reopened
            self.counters.records = len(reopened)
        else:
            self.journal = Journal(session)
        return self.journal

    def append(self, count: int, blocks: bytes) -> None:
        """``count`` records numbered from :attr:`next_sequence`, as blocks."""
        journal = self.journal
        if journal is None:
            raise RuntimeError("records before the session started: the plant's bug")
        first, self._raised = self._raised + 1, self._raised + count
        have = len(journal)
        if self._raised <= have:
            return  # journaled by the run before
        if first <= have:
            blocks = blocks[(have + 1 - first) * events.BLOCK_SIZE :]
        journal.append(blocks)
        self._appended.append(blocks)
        self.counters.records = len(journal)

    def lose(self, start: int, end: int) -> None:
        """The notice that itch numbers [start, end) were lost, in stream position."""
        count = end - start
        journaled = self.counters.records
        self.append(1, events.notice(events.LOST, self.next_sequence, start, start, count, count))
        if self.counters.records > journaled:  # not one the run before journaled already
            self.counters.lost_notices += 1

    def blocks_to_write(self) -> list[bytes]:
        """The blocks journaled since the last call, in order."""
        out, self._appended = self._appended, []
        return out
