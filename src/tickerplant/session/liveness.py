"""Line health: each line is up (messages), quiet (heartbeats only) or down (silence).

Pure: the feed handler reports what it heard and when, and polls :meth:`Liveness.poll` on its
housekeeping tick for state changes.
"""

from __future__ import annotations

from tickerplant.session.events import LineState, LineStateChanged, Source


class Liveness:
    def __init__(self, line: Source, heartbeat_interval: float = 1.0, down_after: int = 3) -> None:
        if heartbeat_interval <= 0 or down_after < 1:
            raise ValueError("heartbeat_interval must be > 0 and down_after >= 1")
        self.line = line
        # Messages stop being "recent" after one and a half heartbeat intervals: by then a publisher
        # with nothing to say has sent a heartbeat, so the line is quiet rather than up.
        self._quiet_after = 1.5 * heartbeat_interval
        self._down_after = down_after * heartbeat_interval
        self._last_data = float("-inf")
        self._last_heard = float("-inf")
        self.state = LineState.DOWN

    def heard_data(self, now: float) -> None:
        self._last_data = now
        self._last_heard = now

    def heard_heartbeat(self, now: float) -> None:
        self._last_heard = now

    def _state_at(self, now: float) -> LineState:
        if now - self._last_heard > self._down_after:
            return LineState.DOWN
        if now - self._last_data <= self._quiet_after:
            return LineState.UP
        return LineState.QUIET

    def poll(self, now: float) -> LineStateChanged | None:
        new = self._state_at(now)
        if new is self.state:
            return None
        change = LineStateChanged(self.line, self.state, new)
        self.state = new
        return change
