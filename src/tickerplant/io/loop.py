"""The loop's clock and timers, and how late the loop runs what is due.

:data:`clock` is the one clock of every machine's ``now`` and deadline (``time.monotonic``:
uvloop's ``loop.time()`` is read once a turn and ticks in whole milliseconds, so a latency read
on it is 0 or 1 ms). :class:`Timer` is a machine's one timer on it. :class:`LoopLag` notes how
late a callback armed every ``every`` seconds runs: the plant's one loop serves the lines, the
books and every client, so a callback that holds it (a snapshot built, a spilled range read
back, a collection) delays everything queued behind it; uvloop's timers fire on its whole
milliseconds, which is part of what is measured (timer-paced work waits for it too).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from tickerplant.session.latency import Latencies

EVERY = 0.01  # seconds between probes: 100 callbacks a second, nothing beside the feed's work
# uvloop runs timers on whole milliseconds: a wait shorter than that fires at the loop's next
# turn, and a deadline re-armed until it comes spins the loop (measured: 230,000 turns a
# second, a whole core, for a wait of 10 us to 0.5 ms).
TICK = 0.001


def delay(deadline: float, now: float) -> float:
    """How long to wait for ``deadline``: nothing if it is due, else whole ticks, rounded up (a
    timer fires at most a tick late instead of spinning until it is due)."""
    wait = deadline - now
    return 0.0 if wait <= 0 else math.ceil(wait / TICK - 1e-9) * TICK


clock = time.monotonic


class Timer:
    """A machine's one timer on :data:`clock`: armed for the machine's next deadline, it calls
    ``fire`` then, to within the loop's tick, never spinning until it is due (a machine fired a
    little early finds nothing due and says when it is)."""

    def __init__(self, fire: Callable[[], None]) -> None:
        self._fire = fire
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self.at = math.inf  # when it fires (inf: not armed)

    def arm(self, deadline: float | None) -> None:
        """Fire at ``deadline`` (None: nothing is due). A timer armed earlier stands: when it
        fires, the machine says what is due next and is armed again."""
        if deadline is None or deadline >= self.at:
            return
        self.cancel()
        self.at = deadline
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(delay(deadline, clock()), self._run)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.at = math.inf

    def _run(self) -> None:
        self._handle = None
        self.at = math.inf
        self._fire()


class LoopLag:
    def __init__(self, every: float = EVERY) -> None:
        self.every = every
        self.lag = Latencies()
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._arm(clock())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, now: float) -> None:
        self._due = now + self.every
        self._handle = asyncio.get_running_loop().call_later(self.every, self._fire)

    def _fire(self) -> None:
        now = clock()
        self.lag.add(max(0.0, now - self._due))
        self._arm(now)
