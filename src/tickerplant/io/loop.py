"""How late the event loop runs what is due: the plant's one loop serves the lines, the books
and every client, so a callback that holds it (a snapshot built, a spilled range read back, a
collection) delays everything queued behind it.

A callback armed every ``every`` seconds notes how much later than due it ran, on
``time.monotonic`` (uvloop's ``loop.time()`` ticks in whole milliseconds; its timers fire on
that tick, which is part of what is measured: timer-paced work waits for it too).
"""

from __future__ import annotations

import asyncio
import math
import time

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


class LoopLag:
    def __init__(self, every: float = EVERY) -> None:
        self.every = every
        self.lag = Latencies()
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._arm(time.monotonic())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, now: float) -> None:
        self._due = now + self.every
        self._handle = asyncio.get_running_loop().call_later(self.every, self._fire)

    def _fire(self) -> None:
        now = time.monotonic()
        self.lag.add(max(0.0, now - self._due))
        self._arm(now)
