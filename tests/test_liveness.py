"""Line health on a fake clock: up on messages, quiet on heartbeats only, down on silence."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tickerplant.errors import ConfigError
from tickerplant.receive.events import LineState, LineStateChanged, Source
from tickerplant.receive.liveness import Liveness

UP, QUIET, DOWN = LineState.UP, LineState.QUIET, LineState.DOWN


def changes(live: Liveness, step: Callable[[float], None], now: float) -> list[LineStateChanged]:
    """What one step of ``live`` (it heard something, or its timer fired) changed."""
    step(now)
    return list(iter(live.next_event, None))


def test_down_up_quiet_down_at_the_documented_boundaries() -> None:
    live = Liveness(Source.LINE_A, heartbeat_interval=1.0, down_after=3)
    assert live.state is DOWN and live.get_timer() is None  # nothing heard yet: no timer
    assert changes(live, live.handle_timer, 0.0) == []
    # at once
    assert changes(live, live.heard_data, 10.0) == [LineStateChanged(Source.LINE_A, DOWN, UP)]
    assert live.get_timer() == 11.5  # 1.5 intervals after the last message
    assert changes(live, live.handle_timer, 11.49) == []
    assert changes(live, live.heard_heartbeat, 11.0) == []
    assert changes(live, live.handle_timer, 11.5) == [LineStateChanged(Source.LINE_A, UP, QUIET)]
    assert live.get_timer() == 14.0  # 3 intervals after the heartbeat
    assert changes(live, live.handle_timer, 13.99) == []
    assert changes(live, live.handle_timer, 14.0) == [LineStateChanged(Source.LINE_A, QUIET, DOWN)]
    assert live.get_timer() is None
    back = changes(live, live.heard_heartbeat, 20.0)
    assert back == [LineStateChanged(Source.LINE_A, DOWN, QUIET)]
    assert changes(live, live.heard_data, 21.0) == [LineStateChanged(Source.LINE_A, QUIET, UP)]


def test_silence_after_messages_goes_down_when_down_comes_before_quiet() -> None:
    live = Liveness(Source.LINE_B, heartbeat_interval=1.0, down_after=1)
    assert changes(live, live.heard_data, 0.0) == [LineStateChanged(Source.LINE_B, DOWN, UP)]
    assert live.get_timer() == 1.0  # down (1 interval) before quiet (1.5)
    assert changes(live, live.handle_timer, 1.0) == [LineStateChanged(Source.LINE_B, UP, DOWN)]


def test_a_timer_at_its_deadline_always_finds_the_change() -> None:
    live = Liveness(Source.LINE_A, heartbeat_interval=0.1, down_after=3)
    live.heard_data(0.3)
    moments = []
    while (at := live.get_timer()) is not None and len(moments) < 5:
        assert changes(live, live.handle_timer, at)  # no timer that fires to find nothing
        moments.append(at)
    assert moments == [0.3 + 1.5 * 0.1, 0.3 + 3 * 0.1] and live.state is DOWN


@pytest.mark.parametrize(("interval", "down_after", "field"),
                         [(0.0, 3, "heartbeat_interval"), (-1.0, 3, "heartbeat_interval"),
                          (1.0, 0, "down_after")])
def test_a_bad_setting_is_refused(interval: float, down_after: int, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as err:
        Liveness(Source.LINE_B, interval, down_after)
    assert err.value.field == field
