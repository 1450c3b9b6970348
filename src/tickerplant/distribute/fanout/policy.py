"""The slow-consumer policy: one function, :func:`decide`, told what happened to a subscriber
and returning what to do. The fan-out carries the action out (:meth:`FanOut.act`); io carries
out what concerns the socket (the high-water mark, when to reset) and decides none of it.

What it is told:

- :class:`Backlog`: it lacks ``size`` bytes of the stream: what io holds for it beyond the socket
  just after a push, or, once its full socket took it off the push path, that and what the
  journal gained since. Past ``max_backlog`` (``conflate_unsent`` for a conflate user of an
  events stream: it would rather have rounds than wait: :func:`cap`) it is a slow consumer.
- :class:`Stalled`: its socket has taken nothing from ``since`` to ``now`` while we had bytes for
  it. At ``write_deadline`` it is cut whatever its policy: a dead reader must not keep its place.
- :class:`Deferred`: it was live and the publish went past its budget before its turn. A
  conflate user is conflated until it has caught up; anyone else catches up.
- :class:`OverBudget`: io holds more than ``max_queued`` for all the server's clients together,
  and this client holds the most: it is cut, whatever its policy (the memory has to go; one
  under conflate or skip keeps its queue until it reads), and so on, largest first, until the
  rest fit. A cut client's bytes go with its connection, at the latest ``linger`` later.
- :class:`Unreadable`: what it is owed could not be read back from the journal's file (it did not
  match its checksum): it is told why and closed, never served what the disk changed.
- :class:`Closing`: its session closed. A client at the end of the session (or logging out) may
  have a lot left to read: it is reset ``write_deadline`` after its FIN if it has not closed; any
  other (told why in a Debug packet, or gone) after ``linger``.

On an events stream ``conflate`` and ``skip`` keep a slow consumer (nothing more is pushed to
it; what it is sent next is paced by its socket, as catching up is); a slow consumer of another
stream is cut (its messages can be neither merged nor skipped).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from tickerplant.distribute.fanout.limits import FanOutLimits, Policy
from tickerplant.distribute.fanout.state import Phase
from tickerplant.session.soupbin import CloseCause


@dataclass(frozen=True, slots=True)
class Backlog:
    size: int


@dataclass(frozen=True, slots=True)
class Stalled:
    since: float
    now: float


@dataclass(frozen=True, slots=True)
class Deferred:
    pass


@dataclass(frozen=True, slots=True)
class OverBudget:
    queued: int  # for all the server's clients
    held: int  # for this one, the most of any


@dataclass(frozen=True, slots=True)
class Unreadable:
    reason: str


@dataclass(frozen=True, slots=True)
class Closing:
    cause: CloseCause


Report = Backlog | Stalled | Deferred | OverBudget | Unreadable | Closing


class Verdict(enum.Enum):
    KEEP = "keep"  # nothing changes
    CUT = "cut"  # a slow consumer: told why (Debug) and closed
    FAIL = "fail"  # what it is owed cannot be served: told why (Debug) and closed
    CONFLATE = "conflate"  # a slow consumer: rounds until one finds nothing new
    SKIP = "skip"  # a slow consumer: its next turn jumps to the live end
    ROUNDS = "rounds"  # deferred: rounds until caught up
    CATCH_UP = "catch up"  # deferred: it pulls the rest in turns
    RESET = "reset"  # closed: io resets it ``reset_after`` seconds after its FIN, if still open


@dataclass(frozen=True, slots=True)
class Action:
    verdict: Verdict
    reason: str = ""
    reset_after: float = 0.0


KEEP = Action(Verdict.KEEP)


def decide(report: Report, phase: Phase, policy: Policy, events: bool,
           limits: FanOutLimits) -> Action:  # fmt: skip
    """What becomes of a subscriber in ``phase`` whose user has ``policy``, on an events stream
    or not (``events``), given ``report``."""
    if isinstance(report, Closing):
        graceful = report.cause in (CloseCause.END_OF_SESSION, CloseCause.LOGOUT)
        wait = limits.write_deadline if graceful else limits.linger
        return Action(Verdict.RESET, reset_after=wait)
    if isinstance(report, Unreadable):
        return Action(Verdict.FAIL, report.reason)
    if isinstance(report, OverBudget):
        return Action(Verdict.CUT, f"slow consumer: the server holds {report.queued} bytes for "
                      f"its clients, over its {limits.max_queued} budget, and {report.held} "
                      "of them for this one, the most")  # fmt: skip
    if isinstance(report, Deferred):
        conflated = events and policy is Policy.CONFLATE
        return Action(Verdict.ROUNDS if conflated else Verdict.CATCH_UP)
    if isinstance(report, Stalled):
        if report.now < report.since + limits.write_deadline:  # the sum its timer was set to
            return KEEP
        waited = report.now - report.since
        return Action(Verdict.CUT, f"slow consumer: nothing taken for {waited:.1f} s")
    most = cap(policy, events, limits)
    if report.size <= most:
        return KEEP
    reason = f"slow consumer: {report.size} bytes unsent, over the {most} cap"
    if not events or policy is Policy.DISCONNECT:
        return Action(Verdict.CUT, reason)
    # Already kept under its policy: nothing new. A conflate user pushed past the budget
    # (conflated until caught up) that turns out slow too stays conflated until a quiet round.
    if phase in (Phase.CONFLATED, Phase.SKIPPING):
        return KEEP
    return Action(Verdict.CONFLATE if policy is Policy.CONFLATE else Verdict.SKIP, reason)


def cap(policy: Policy, events: bool, limits: FanOutLimits) -> int:
    """The bytes a subscriber may lack before it is a slow consumer."""
    if events and policy is Policy.CONFLATE:
        return min(limits.max_backlog, limits.conflate_unsent)
    return limits.max_backlog
