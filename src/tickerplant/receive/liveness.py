"""Line health: each line is up (messages), quiet (heartbeats only) or down (silence).

Pure, with the session machines' one clock interface and one way out: the feed session reports
what it heard and when (a line that comes back is up or quiet at once), calls
:meth:`Liveness.handle_timer` at :meth:`Liveness.get_timer`, the moment the line would turn
quiet or down if nothing came, and takes each change from :meth:`Liveness.next_event`.
"""

from __future__ import annotations

from collections import deque

from tickerplant.errors import ConfigError
from tickerplant.receive.events import LineState, LineStateChanged, Source


class Liveness:
    def __init__(self, line: Source, heartbeat_interval: float, down_after: int) -> None:
        if heartbeat_interval <= 0:
            raise ConfigError("heartbeat_interval", f"{heartbeat_interval!r}", "give seconds > 0")
        if down_after < 1:
            raise ConfigError("down_after", f"{down_after!r}", "give 1 or more heartbeat intervals")
        self.line = line
        # Messages stop being "recent" after one and a half heartbeat intervals: by then a publisher
        # with nothing to say has sent a heartbeat, so the line is quiet rather than up.
        self._quiet_after = 1.5 * heartbeat_interval
        self._down_after = down_after * heartbeat_interval
        self._last_data = float("-inf")
        self._last_heard = float("-inf")
        self.state = LineState.DOWN
        self._events: deque[LineStateChanged] = deque()

    def heard_data(self, now: float) -> None:
        self._last_data = now
        self._last_heard = now
        self._move(now)

    def heard_heartbeat(self, now: float) -> None:
        self._last_heard = now
        self._move(now)

    def get_timer(self) -> float | None:
        """When the state changes if nothing more is heard (None: down, it waits for traffic)."""
        down_at = self._last_heard + self._down_after
        if self.state is LineState.UP:
            return min(self._last_data + self._quiet_after, down_at)
        if self.state is LineState.QUIET:
            return down_at
        return None

    def handle_timer(self, now: float) -> None:
        self._move(now)

    def next_event(self) -> LineStateChanged | None:
        """The oldest change not yet taken (None: the line is where it was)."""
        return self._events.popleft() if self._events else None

    def _state_at(self, now: float) -> LineState:
        # Deadlines are reached, not passed: a timer set for one must find the change there.
        if now - self._last_heard >= self._down_after:
            return LineState.DOWN
        if now - self._last_data < self._quiet_after:
            return LineState.UP
        return LineState.QUIET

    def _move(self, now: float) -> None:
        new = self._state_at(now)
        if new is not self.state:
            self._events.append(LineStateChanged(self.line, self.state, new))
            self.state = new
