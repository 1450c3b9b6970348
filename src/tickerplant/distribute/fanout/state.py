"""A subscriber's state, and every move it may make, in one table (h11's ``_state.py``).

The state says what the fan-out owes a connection: nothing yet (its login is awaited or its
password checked), each publish as it happens (live), the journal at its socket's pace (catching
up), rounds of conflated records, one jump to the live end, or nothing ever again (closed).
Images asked for are not a state: they are sent before anything else in whatever state, the way
the session's outbox is.
"""

from __future__ import annotations

import enum

from tickerplant.errors import LocalProtocolError


class Phase(enum.Enum):
    AWAITING_LOGIN = "awaiting login"
    CHECKING = "checking its password"  # io runs the check off the loop
    LIVE = "live"  # at the journal's end: each publish is pushed to it
    CATCHING_UP = "catching up"  # behind (or ahead of) the end: it pulls the journal in turns
    # A conflate user pushed past the publish budget (the server's limit, not its slowness):
    # rounds until it has caught up.
    CONFLATED_CATCHUP = "conflated until caught up"
    CONFLATED = "conflated"  # a slow consumer: rounds until a round's interval brings nothing
    SKIPPING = "skipping"  # a slow consumer: its next turn jumps to the live end, told the range
    CLOSED = "closed"


class Step(enum.Enum):
    CHECK = "a password to check"
    ACCEPT = "login accepted"
    CAUGHT_UP = "reached the journal's end"
    WAIT = "at the end, behind the publish (or ahead: a future number)"
    DEFER = "live, left to catch up (its socket full, past the publish budget, or images first)"
    ROUNDS = "live, past the publish budget: a conflate user gets rounds"
    CONFLATE = "a slow consumer under conflate"
    SKIP = "a slow consumer under skip"
    CLOSE = "its session closed"


_DELIVERING = (Phase.LIVE, Phase.CATCHING_UP, Phase.CONFLATED_CATCHUP, Phase.CONFLATED,
               Phase.SKIPPING)  # fmt: skip

TRANSITIONS: dict[Phase, dict[Step, Phase]] = {
    Phase.AWAITING_LOGIN: {Step.CHECK: Phase.CHECKING, Step.ACCEPT: Phase.CATCHING_UP},
    Phase.CHECKING: {Step.ACCEPT: Phase.CATCHING_UP},
    Phase.LIVE: {
        Step.DEFER: Phase.CATCHING_UP,
        Step.ROUNDS: Phase.CONFLATED_CATCHUP,
        Step.CONFLATE: Phase.CONFLATED,
        Step.SKIP: Phase.SKIPPING,
    },
    Phase.CATCHING_UP: {
        Step.CAUGHT_UP: Phase.LIVE,
        Step.CONFLATE: Phase.CONFLATED,
        Step.SKIP: Phase.SKIPPING,
    },
    Phase.CONFLATED_CATCHUP: {
        Step.CAUGHT_UP: Phase.LIVE,
        Step.WAIT: Phase.CATCHING_UP,
        Step.CONFLATE: Phase.CONFLATED,
    },
    Phase.CONFLATED: {Step.CAUGHT_UP: Phase.LIVE, Step.WAIT: Phase.CATCHING_UP},
    Phase.SKIPPING: {Step.CAUGHT_UP: Phase.LIVE, Step.WAIT: Phase.CATCHING_UP},
    Phase.CLOSED: {},
}
for _moves in TRANSITIONS.values():  # whatever it was doing, a connection can end
    if _moves:
        _moves[Step.CLOSE] = Phase.CLOSED


def delivering(phase: Phase) -> bool:
    """Logged in and not closed: owed the journal."""
    return phase in _DELIVERING


def move(phase: Phase, step: Step) -> Phase:
    """The state ``step`` leads to from ``phase``; a step the table does not allow is our bug."""
    to = TRANSITIONS[phase].get(step)
    if to is None:
        raise LocalProtocolError(f"a subscriber {phase.value} cannot take the step: {step.value}")
    return to
