"""The loop lag probe on a real event loop: a callback that holds the loop shows as lag."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import uvloop

from tickerplant.io.loop import TICK, LoopLag, Timer, Timers, clock, delay


def test_a_callback_that_holds_the_loop_shows_as_lag() -> None:
    async def main() -> dict[str, object]:
        probe = LoopLag(every=0.005)
        probe.start()
        try:
            time.sleep(0.05)  # holds the loop: what the probe is there to see
            deadline = time.monotonic() + 10
            while probe.lag.count < 3:
                assert time.monotonic() < deadline, "not within 10 s: three probes"
                await asyncio.sleep(0.001)
        finally:
            probe.close()
        return probe.lag.figures()

    figures = asyncio.run(main())
    assert isinstance(figures["max"], float) and figures["max"] >= 0.045
    assert isinstance(figures["p50"], float) and figures["p50"] < 0.045  # the others ran on time


def test_a_wait_is_whole_ticks_rounded_up() -> None:
    assert delay(10.0, 10.0) == 0.0 and delay(10.0, 10.5) == 0.0  # due, or past due
    assert delay(10.0, 10.0 - 0.0003) == TICK  # under a tick: one tick, not a spin
    assert delay(10.0, 10.0 - TICK) == TICK
    assert delay(10.0, 10.0 - 0.0015) == 2 * TICK


def test_a_timer_due_within_a_tick_fires_a_few_times_not_thousands() -> None:
    """uvloop runs a timer armed for less than its millisecond tick at its next turn: re-armed
    until due, a 0.3 ms wait took thousands of turns before the wait was rounded up."""

    async def main() -> tuple[int, float]:
        due = clock() + 0.0003
        fired = [0]
        done = asyncio.get_running_loop().create_future()

        def fire() -> None:
            fired[0] += 1
            if clock() >= due:
                done.set_result(clock())
            else:  # as a machine fired early does: nothing is due, it says when
                timer.arm(due)

        timer = Timer(fire)
        timer.arm(due)
        at = await asyncio.wait_for(done, 10)
        return fired[0], at - due

    fired, late = uvloop.run(main())
    assert fired <= 3, f"fired {fired} times for one 0.3 ms wait: the loop spun"
    assert 0 <= late < 0.5, f"fired {late:.3f} s late"


def test_an_earlier_deadline_replaces_a_later_one_and_a_later_one_waits() -> None:
    async def main() -> float:
        done = asyncio.get_running_loop().create_future()
        timer = Timer(lambda: done.set_result(clock()))
        start = clock()
        timer.arm(start + 5)
        timer.arm(start + 0.002)  # earlier: replaces it
        timer.arm(start + 3)  # later: the one armed stands
        fired: float = await asyncio.wait_for(done, 10)
        assert timer.at == float("inf")  # fired: not armed again until the machine says so
        return fired - start

    assert uvloop.run(main()) < 1  # not the 3 or 5 s


async def _turns_fired(count: int, start: Callable[[Callable[[], int]], None]) -> list[int]:
    """``start(fired)``, then the loop until ``fired`` has been called ``count`` times: the loop
    turn of each call (counted by a callback that schedules itself: once a turn)."""
    loop = asyncio.get_running_loop()
    turn = [0]
    fired_in: list[int] = []

    def count_turns() -> None:
        turn[0] += 1
        if len(fired_in) < count:
            loop.call_soon(count_turns)

    def fired() -> int:
        fired_in.append(turn[0])
        return len(fired_in)

    loop.call_soon(count_turns)
    start(fired)
    deadline = clock() + 10
    while len(fired_in) < count:
        assert clock() < deadline, f"not within 10 s: fired {len(fired_in)} of {count}"
        await asyncio.sleep(0.001)
    return fired_in


def test_a_thousand_timers_due_at_once_fire_a_burst_a_turn() -> None:
    """A thousand connections' login timeouts within the same millisecond: each loop turn fires
    at most a burst of them, and the loop looks at its sockets in between."""

    def start(fired: Callable[[], int]) -> None:
        due = clock() + 0.02
        for _ in range(1000):
            Timer(fired).arm(due)

    fired_in = uvloop.run(_turns_fired(1000, start))
    per_turn = {t: fired_in.count(t) for t in set(fired_in)}
    assert Timers.burst == 64 and max(per_turn.values()) <= 64, per_turn
    assert len(per_turn) >= 1000 // 64


def test_a_timer_armed_again_as_due_while_it_fires_waits_for_the_next_turn() -> None:
    """Catch-up turns re-arm their timer as due at once, to go on after the loop has looked at
    its sockets: fired again in the same turn, they held it for dozens of grants."""

    def start(fired: Callable[[], int]) -> None:
        def fire() -> None:
            if fired() < 20:
                timer.arm(0.0)  # due at once

        timer = Timer(fire)
        timer.arm(0.0)

    fired_in = uvloop.run(_turns_fired(20, start))
    assert len(set(fired_in)) == 20, fired_in  # once a turn


def test_a_timer_that_raises_leaves_the_others_due_with_it_armed() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        errors: list[object] = []
        loop.set_exception_handler(lambda _, context: errors.append(context["exception"]))
        fired: list[int] = []

        def fire(n: int) -> None:
            fired.append(n)
            if n == 0:
                raise RuntimeError("a machine's bug")

        due = clock() + 0.005
        for n in range(3):
            Timer(lambda n=n: fire(n)).arm(due)
        deadline = clock() + 10
        while len(fired) < 3:
            assert clock() < deadline, f"not within 10 s: fired {fired}"
            await asyncio.sleep(0.001)
        assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
        return fired

    assert sorted(uvloop.run(main())) == [0, 1, 2]
