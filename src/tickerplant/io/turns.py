"""A fan-out's catch-up turns on the loop (:meth:`FanOut.get_timer` / :meth:`FanOut.handle_timer`):
granted a few at a time, ``tick_bytes`` of work, on a timer due at once, so that the loop looks
at its sockets (a new login, the lines) between any two grants, however many clients are behind.
"""

from __future__ import annotations

from typing import Any

from tickerplant.distribute.fanout import FanOut
from tickerplant.io.loop import Timer, clock


class Turns:
    """One fan-out's grants: io arms it after anything that may have queued a turn."""

    def __init__(self, fanout: FanOut[Any]) -> None:
        self.fanout = fanout
        self._timer = Timer(self._grant)

    def arm(self) -> None:
        self._timer.arm(self.fanout.get_timer())

    def _grant(self) -> None:
        for subscriber in self.fanout.handle_timer(clock()):
            subscriber.handle.service()  # (before the next is granted: it is charged its bytes)
        self.arm()
