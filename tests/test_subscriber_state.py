"""A fan-out subscriber's state table and the slow-consumer policy, as pure functions: no
socket, no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tickerplant.distribute.fanout import FanOut, FanOutLimits, Phase, Policy
from tickerplant.distribute.fanout.policy import (
    Backlog,
    Closing,
    Deferred,
    Stalled,
    Verdict,
    decide,
)
from tickerplant.distribute.fanout.state import TRANSITIONS, Step, delivering, move
from tickerplant.distribute.journal import Journal
from tickerplant.errors import LocalProtocolError
from tickerplant.session.soupbin import CloseCause

FANOUT = Path(__file__).resolve().parent.parent / "src" / "tickerplant" / "distribute" / "fanout"
LIMITS = FanOutLimits(max_backlog=1000, conflate_unsent=100, write_deadline=10.0, linger=2.0)


def test_a_step_the_table_does_not_allow_raises() -> None:
    with pytest.raises(LocalProtocolError, match="closed cannot take the step: login accepted"):
        move(Phase.CLOSED, Step.ACCEPT)
    fanout: FanOut[None] = FanOut(Journal(b"STATE00001"))
    subscriber = fanout.connect(None, 0.0, "127.0.0.1")
    with pytest.raises(LocalProtocolError, match="awaiting login cannot take the step"):
        subscriber.move(Step.SKIP)  # a slow consumer before it has logged in
    assert subscriber.phase is Phase.AWAITING_LOGIN  # a refused step changes nothing
    assert not fanout.delivering  # a publish looks at none that has not logged in
    subscriber.move(Step.ACCEPT)
    subscriber.move(Step.CAUGHT_UP)
    assert list(fanout.delivering) == [subscriber]
    with pytest.raises(LocalProtocolError):
        subscriber.move(Step.CAUGHT_UP)  # live already
    subscriber.move(Step.CLOSE)
    assert not fanout.delivering
    with pytest.raises(LocalProtocolError):
        subscriber.move(Step.CLOSE)  # closed once


def test_every_state_is_reached_from_the_login_and_every_open_one_can_close() -> None:
    reached, todo = {Phase.AWAITING_LOGIN}, [Phase.AWAITING_LOGIN]
    while todo:
        for to in TRANSITIONS[todo.pop()].values():
            if to not in reached:
                reached.add(to)
                todo.append(to)
    assert reached == set(Phase)
    for phase in set(Phase) - {Phase.CLOSED}:
        assert move(phase, Step.CLOSE) is Phase.CLOSED
    assert [p for p in Phase if delivering(p)] == [Phase.LIVE, Phase.CATCHING_UP,
                                                   Phase.CONFLATED_CATCHUP, Phase.CONFLATED,
                                                   Phase.SKIPPING]  # fmt: skip


def test_only_the_table_writes_a_subscribers_state() -> None:
    """Every assignment to ``.phase`` in the fan-out is the one in ``Subscriber.move``."""
    writes = []
    for path in FANOUT.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for inner in ast.walk(node):
                    targets = inner.targets if isinstance(inner, ast.Assign) else (
                        [inner.target] if isinstance(inner, ast.AnnAssign | ast.AugAssign) else [])
                    for target in targets:
                        if isinstance(target, ast.Attribute) and target.attr == "phase":
                            writes.append((path.name, node.name))
    assert len(list(FANOUT.glob("*.py"))) > 5  # the rooms were read
    assert sorted(set(writes)) == [("subscriber.py", "__init__"), ("subscriber.py", "move")]


@pytest.mark.parametrize(
    ("report", "phase", "policy", "events", "verdict"),
    [
        (Backlog(1000), Phase.LIVE, Policy.DISCONNECT, False, Verdict.KEEP),  # at the cap
        (Backlog(1001), Phase.LIVE, Policy.DISCONNECT, False, Verdict.CUT),
        # itch messages can be neither merged nor skipped: cut whatever the user's policy
        (Backlog(1001), Phase.LIVE, Policy.CONFLATE, False, Verdict.CUT),
        # a conflate user's cap is what its kernel may hold unsent: it would rather have rounds
        (Backlog(101), Phase.LIVE, Policy.CONFLATE, True, Verdict.CONFLATE),
        (Backlog(101), Phase.LIVE, Policy.SKIP, True, Verdict.KEEP),
        (Backlog(1001), Phase.CATCHING_UP, Policy.SKIP, True, Verdict.SKIP),
        (Backlog(101), Phase.CONFLATED_CATCHUP, Policy.CONFLATE, True, Verdict.CONFLATE),
        (Backlog(5000), Phase.CONFLATED, Policy.CONFLATE, True, Verdict.KEEP),  # already
        (Backlog(5000), Phase.SKIPPING, Policy.SKIP, True, Verdict.KEEP),
        (Stalled(0.7, 10.6), Phase.LIVE, Policy.DISCONNECT, False, Verdict.KEEP),
        # a dead reader does not keep its place, whatever its policy; judged at the very time
        # its timer was set to, 6.01 + 10.0, though (6.01 + 10.0) - 6.01 < 10.0 in floating point
        (Stalled(6.01, 6.01 + 10.0), Phase.CONFLATED, Policy.CONFLATE, True, Verdict.CUT),
        (Deferred(), Phase.LIVE, Policy.CONFLATE, True, Verdict.ROUNDS),
        (Deferred(), Phase.LIVE, Policy.CONFLATE, False, Verdict.CATCH_UP),
        (Deferred(), Phase.LIVE, Policy.SKIP, True, Verdict.CATCH_UP),
    ],
)
def test_the_policy_decides_from_what_it_is_told(
    report: Backlog | Stalled | Deferred, phase: Phase, policy: Policy, events: bool,
    verdict: Verdict,
) -> None:  # fmt: skip
    action = decide(report, phase, policy, events, LIMITS)
    assert action.verdict is verdict
    if verdict is Verdict.CUT or verdict is Verdict.CONFLATE:
        assert action.reason.startswith("slow consumer: ")


def test_a_closed_connection_is_reset_after_the_time_its_close_deserves() -> None:
    def reset_after(cause: CloseCause) -> float:
        action = decide(Closing(cause), Phase.CLOSED, Policy.DISCONNECT, False, LIMITS)
        assert action.verdict is Verdict.RESET
        return action.reset_after

    # at the end of the session (or logging out) it may have a lot left to read
    assert reset_after(CloseCause.END_OF_SESSION) == reset_after(CloseCause.LOGOUT) == 10.0
    for cause in (CloseCause.LOCAL, CloseCause.PROTOCOL_ERROR, CloseCause.LOGIN_REJECTED):
        assert reset_after(cause) == 2.0  # a Debug packet to read at most
