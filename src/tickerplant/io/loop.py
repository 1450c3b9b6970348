"""The loop's clock and timers, how late the loop runs what is due, and the loop itself: a
command's runner (uvloop where installed) and the signals that stop it.

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
import heapq
import itertools
import logging
import math
import signal
import time
import weakref
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, ClassVar, TypeVar

from tickerplant.latency import Latencies
from tickerplant.ops import logs

T = TypeVar("T")

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
    little early finds nothing due and says when it is). Every timer of a loop waits in its one
    :class:`Timers`."""

    def __init__(self, fire: Callable[[], None]) -> None:
        self.fire = fire
        self.at = math.inf  # when it fires (inf: not armed)
        self.token = 0  # its entry in the queue: older entries of it are stale

    def arm(self, deadline: float | None) -> None:
        """Fire at ``deadline`` (None: nothing is due). A timer armed earlier stands: when it
        fires, the machine says what is due next and is armed again."""
        if deadline is None or deadline >= self.at:
            return
        self.at = deadline
        Timers.of(asyncio.get_running_loop()).add(self)

    def cancel(self) -> None:
        self.at = math.inf
        self.token = 0


class Timers:
    """A loop's machine timers in one queue, on one loop timer for the earliest, which fires
    at most :attr:`burst` of those due a turn and leaves the rest to the next, after the loop has
    looked at its sockets: a thousand connections whose login timeouts (or write deadlines) fall
    within the same few milliseconds hold the loop for a burst at a time, not for all of them
    (1,100 at once held a plant's clients 80 ms)."""

    burst = 64
    # Each loop's queue, for as long as the loop lives.
    _of: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Timers]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        self._queue: list[tuple[float, int, Timer]] = []
        self._tokens = itertools.count(1)
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the loop timer is due

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Timers:
        timers = cls._of.get(loop)
        if timers is None:
            timers = cls._of[loop] = cls()
        return timers

    def add(self, timer: Timer) -> None:
        timer.token = next(self._tokens)
        heapq.heappush(self._queue, (timer.at, timer.token, timer))
        self._arm(clock())

    def _arm(self, now: float) -> None:
        queue = self._queue
        while queue and queue[0][2].token != queue[0][1]:
            heapq.heappop(queue)  # cancelled, fired or armed again since
        if not queue:
            return
        at = queue[0][0]
        if self._handle is not None:
            if at >= self._at:
                return
            self._handle.cancel()
        self._at = at
        self._handle = asyncio.get_running_loop().call_later(delay(at, now), self._run)

    def _run(self) -> None:
        self._handle, self._at = None, math.inf
        # Due within a tick counts as due: the loop timer fired on its whole milliseconds.
        now = clock()
        queue = self._queue
        due: list[tuple[float, Timer]] = []
        while queue and len(due) < self.burst and queue[0][0] <= now + TICK:
            at, token, timer = heapq.heappop(queue)
            if timer.token == token:
                timer.at, timer.token = math.inf, 0
                due.append((at, timer))
        # Those due now, and only those: one armed again as due while they fire (catch-up
        # turns, after the loop has looked around) waits for the next turn.
        try:
            for i, (_, timer) in enumerate(due):
                try:
                    timer.fire()
                except BaseException:  # the loop's handler has it, as it had one timer's alone
                    for at, rest in due[i + 1 :]:
                        rest.arm(at)
                    raise
        finally:
            self._arm(now)


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


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop where installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: T = uvloop.run(coro)
    return result


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_on_signals(stop: asyncio.Event, command: str) -> Callable[[], None]:
    """SIGTERM or the first Ctrl-C sets ``stop``: the command winds down (its journals written,
    its children ended) and exits 0, as a service stopped by systemd or a container must. From
    then on either signal has its default action: a second Ctrl-C ends the process at once.
    Call from the loop, as the command's first step; returns what puts the handlers back.

    A plain signal handler rather than the loop's: the loop's runs only when the loop turns,
    and a first start compiling kernels (~20 s) holds the loop, so the second Ctrl-C, meant
    for exactly that wait, would be queued behind it too."""
    loop = asyncio.get_running_loop()
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    signalled: list[int] = []

    def announce(name: str) -> None:
        logging.getLogger(f"tickerplant.{command}").info(
            "stopping on %s (a second one ends at once)", name,
            extra=logs.fields(event="stopping", signal=name))  # fmt: skip
        stop.set()

    def handler(signum: int, frame: FrameType | None) -> None:
        signalled.append(signum)
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        loop.call_soon_threadsafe(announce, signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)

    def restore() -> None:
        # After a stop the defaults stay: the process is ending, and a second signal must end
        # it even in its last steps.
        if not signalled:
            for sig, old in before.items():
                signal.signal(sig, old)

    return restore
