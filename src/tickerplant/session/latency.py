"""Repair latencies of one kind, in bounded memory over a trading day."""

from __future__ import annotations

import numpy as np


class Latencies:
    """Every latency counted, the last ``RECENT`` kept for the percentiles, so that memory and the
    work of a figures snapshot (on the event loop) stay bounded however long the session runs."""

    RECENT = 1 << 16

    def __init__(self) -> None:
        self._recent = np.zeros(self.RECENT, dtype=np.float64)
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self._recent[self.count % self.RECENT] = seconds
        self.count += 1
        self.max = max(self.max, seconds)

    def figures(self) -> dict[str, float | int]:
        """count and max over all; p50 and p99 over the last RECENT; in seconds."""
        if not self.count:
            return {"count": 0}
        p50, p99 = np.percentile(self._recent[: min(self.count, self.RECENT)], [50, 99])
        return {"count": self.count, "p50": float(p50), "p99": float(p99), "max": self.max}
