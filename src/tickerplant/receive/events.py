"""What the session layer tells the rest of the plant: sources of data and the events it raises."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from tickerplant.wire.blocks import offsets_of


class Source(IntEnum):
    """Where a run of messages came from; arbitration keeps the first copy from any of them."""

    LINE_A = 0
    LINE_B = 1
    REREQUEST = 2
    REPLAY = 3

    @property
    def label(self) -> str:
        """The figures' name for it (a Prometheus label value): a, b, rerequest, replay."""
        return ("a", "b", "rerequest", "replay")[self]

    @property
    def is_line(self) -> bool:
        return self in (Source.LINE_A, Source.LINE_B)

    @property
    def repair(self) -> Repair:
        """What a gap filled from this source counts as repaired by."""
        return Repair.LINE if self.is_line else Repair(self.label)


class Repair(Enum):
    """How a gap was repaired: by the other line's copy, a re-request or a TCP replay."""

    LINE = "line"
    REREQUEST = "rerequest"
    REPLAY = "replay"


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

    def since(self, first: int) -> Batch:
        """The messages from number ``first`` on (``first`` within the batch)."""
        offsets, _ = offsets_of(self.blocks)
        skip = first - self.first
        return Batch(first, self.count - skip, self.blocks[int(offsets[skip]) :])


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
    """``session`` starts (``previous`` was followed before it): its stream from its first
    number, or, for a receiver that joined it under way from a snapshot, from ``joined``."""

    session: bytes
    previous: bytes | None
    joined: int | None = None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    session: bytes
    next_sequence: int


@dataclass(frozen=True, slots=True)
class SuspectDecided:
    """A packet (``count`` messages from ``sequence``; a heartbeat: ``count`` -1, ``sequence``
    its next number) that came far beyond the stream and waited ``age`` seconds for a second to
    agree: ``accepted`` as the stream's (the range before it is a gap like any other), or
    rejected as a stray and dropped."""

    source: Source
    sequence: int
    count: int
    accepted: bool
    age: float


Event = GapRepaired | GapLost | LineStateChanged | SessionStarted | SessionEnded | SuspectDecided


# What travels in the stream between batches, in position: a consumer sees a session's last
# batch before its end, and a lost range exactly where the messages would have been.
Marker = GapLost | SessionStarted | SessionEnded
Delivery = Batch | Marker
