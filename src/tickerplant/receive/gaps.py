"""What the sequencer lacks and what it doubts: each gap as first seen (:class:`GapRecord`), each
piece of it still outstanding (:class:`Gap`, on which recovery keeps its notes), and a packet far
beyond the stream, set aside until a second agrees with it (:class:`Suspect`)."""

from __future__ import annotations

from dataclasses import dataclass

from tickerplant.receive.events import Source


@dataclass(slots=True)
class GapRecord:
    """One gap as first seen; outlives the splitting of its range into pieces."""

    start: int
    end: int
    opened_at: float
    revealed_by: Source
    pieces: int = 1
    lost: bool = False


@dataclass(slots=True)
class Gap:
    """A missing range [start, end) still outstanding; recovery keeps its own notes on it."""

    start: int
    end: int
    record: GapRecord
    attempts: int = 0
    next_try: float = 0.0
    requested_end: int = -1  # end of the range the last re-request asked for
    # When a replay covering it failed: from then it is re-requested, and its give_up_after
    # counts from then (the replay may have held it open past that while it tried), and from
    # each re-request answered whole (a fallback for a large gap takes many).
    replay_failed_at: float | None = None

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class Suspect:
    """A packet (``count`` >= 0) or heartbeat (``count`` -1) far beyond the horizon, set aside."""

    source: Source
    sequence: int
    count: int
    blocks: bytes
    at: float
    end_of_session: bool = False
    contradicted: bool = False  # a line was heard near the stream since: it did not jump
