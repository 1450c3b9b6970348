"""Line health on a fake clock: up on messages, quiet on heartbeats only, down on silence."""

from __future__ import annotations

import pytest

from tickerplant.session.events import LineState, LineStateChanged, Source
from tickerplant.session.liveness import Liveness


def test_down_up_quiet_down_at_the_documented_boundaries() -> None:
    live = Liveness(Source.LINE_A, heartbeat_interval=1.0, down_after=3)
    assert live.state is LineState.DOWN and live.poll(0.0) is None  # nothing heard yet
    live.heard_data(10.0)
    assert live.poll(10.0) == LineStateChanged(Source.LINE_A, LineState.DOWN, LineState.UP)
    assert live.poll(11.5) is None  # 1.5 intervals after the last message: still up
    live.heard_heartbeat(11.0)
    assert live.poll(11.6) == LineStateChanged(Source.LINE_A, LineState.UP, LineState.QUIET)
    assert live.poll(14.0) is None  # 3 intervals after the heartbeat: still quiet
    assert live.poll(14.01) == LineStateChanged(Source.LINE_A, LineState.QUIET, LineState.DOWN)
    live.heard_heartbeat(20.0)
    assert live.poll(20.0) == LineStateChanged(Source.LINE_A, LineState.DOWN, LineState.QUIET)
    live.heard_data(21.0)
    assert live.poll(21.0) == LineStateChanged(Source.LINE_A, LineState.QUIET, LineState.UP)


@pytest.mark.parametrize(("interval", "down_after"), [(0.0, 3), (-1.0, 3), (1.0, 0)])
def test_a_bad_setting_is_refused(interval: float, down_after: int) -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        Liveness(Source.LINE_B, interval, down_after)
