"""Repair latencies of one kind, in bounded memory over a trading day."""

from __future__ import annotations

from bisect import bisect_left

import numpy as np

# Histogram bounds (seconds, each counting what is at most it): 10 us to 10 s, 1-2.5-5 a decade.
# A repair by the other line lands in microseconds, a re-request in milliseconds, a replay or a
# loss in seconds.
BUCKETS = (*(round(m * 10.0**e, 9) for e in range(-5, 1) for m in (1, 2.5, 5)), 10.0)


class Latencies:
    """Every latency counted into histogram buckets, the last ``RECENT`` kept for the
    percentiles, so that memory and the work of a figures snapshot (on the event loop) stay
    bounded however long the session runs."""

    # A figures snapshot runs on the loop (twice a second) and takes p50 and p99 of each
    # histogram: 1.1 ms over 65,536 values, 0.12 ms over 4,096; with the plant's eight it held
    # the loop ~9 ms every half second (asyncio's slow-callback log, bench/wire_latency.py).
    RECENT = 1 << 12

    def __init__(self) -> None:
        self._recent = np.zeros(self.RECENT, dtype=np.float64)
        # A list, not an array: add() runs for every client on every publish, and numpy's
        # searchsorted and scalar increments cost microseconds where bisect costs 0.1.
        self._buckets = [0] * (len(BUCKETS) + 1)  # the last: above them all
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self._recent[self.count % self.RECENT] = seconds
        self._buckets[bisect_left(BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds
        self.max = max(self.max, seconds)

    def figures(self) -> dict[str, object]:
        """count, sum, max and the histogram (``buckets``: [bound, how many at most it], the
        last bound "+Inf") over all; p50 and p99 over the last RECENT; in seconds."""
        cumulative = np.cumsum(self._buckets).tolist()
        buckets = [[bound, n] for bound, n in zip([*BUCKETS, "+Inf"], cumulative, strict=True)]
        out: dict[str, object] = {"count": self.count, "sum": self.sum, "buckets": buckets}
        if self.count:
            p50, p99 = np.percentile(self._recent[: min(self.count, self.RECENT)], [50, 99])
            out |= {"p50": float(p50), "p99": float(p99), "max": self.max}
        return out
