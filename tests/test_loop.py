"""The loop lag probe on a real event loop: a callback that holds the loop shows as lag."""

from __future__ import annotations

import asyncio
import time

from tickerplant.io.loop import LoopLag


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
