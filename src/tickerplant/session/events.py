"""What the session layer tells the rest of the plant: sources of data and the events it raises."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum


class Source(IntEnum):
    """Where a run of messages came from; arbitration keeps the first copy from any of them."""

    LINE_A = 0
    LINE_B = 1
    REREQUEST = 2
    REPLAY = 3

    @property
    def label(self) -> str:
        return ("line A", "line B", "re-request", "replay")[self]


class LineState(Enum):
    DOWN = "down"  # nothing heard for several heartbeat intervals (or never)
    QUIET = "quiet"  # only heartbeats lately
    UP = "up"  # carrying messages


@dataclass(frozen=True, slots=True)
class Batch:
    """``count`` in-order messages starting at ``first``, as one block stream."""

    first: int
    count: int
    blocks: bytes

    @property
    def end(self) -> int:
        return self.first + self.count


@dataclass(frozen=True, slots=True)
class GapRepaired:
    start: int
    end: int  # exclusive
    revealed_by: Source
    repaired_by: Source
    latency: float  # seconds from the gap being seen to its last message arriving


@dataclass(frozen=True, slots=True)
class GapLost:
    """Messages [start, end) will never be delivered; delivered in stream order, between batches."""

    start: int
    end: int  # exclusive
    revealed_by: Source
    age: float


@dataclass(frozen=True, slots=True)
class LineStateChanged:
    line: Source
    old: LineState
    new: LineState


@dataclass(frozen=True, slots=True)
class SessionStarted:
    session: bytes
    previous: bytes | None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    session: bytes
    next_sequence: int


Event = GapRepaired | GapLost | LineStateChanged | SessionStarted | SessionEnded
