"""``tickerplant edge``: the plant's events streams served from another host, joined by tier-2."""

from tickerplant.edge.config import EdgeConfig
from tickerplant.edge.core import Edge

__all__ = ["Edge", "EdgeConfig"]
