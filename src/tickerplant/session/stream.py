"""The plant's ``itch`` stream: the repaired exchange stream as it is served, numbered as the
exchange numbered it.

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

from tickerplant.session.events import Batch, GapLost, SessionEnded, SessionStarted
from tickerplant.session.journal import Journal
from tickerplant.session.sequencer import Delivery
from tickerplant.wire.moldudp64 import SESSION_LEN

LOST = b"\x00\x01\x00"  # the block of one lost message: the single byte 0x00


@dataclass(slots=True)
class StreamCounters:
    messages: int = 0  # journaled, lost ones included
    lost: int = 0  # journaled as marks


class ItchStream:
    """What the ``itch`` stream serves; the owner publishes :attr:`journal` after each delivery,
    starts serving a new journal when :meth:`deliver` says the session changed, and writes what
    :meth:`take_appended` returns to the session's file.

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

    def take_appended(self) -> list[bytes]:
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
