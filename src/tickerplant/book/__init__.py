"""Order books for ITCH 5.0: a compiled engine over numpy arrays, fed block streams."""

from tickerplant.book.engine import BookEngine, Depth, EventBatch, EventBuffers
from tickerplant.book.records import ANOMALIES, BBO_EVENT, LEVEL, STATUS_EVENT, TRADE_EVENT

__all__ = [
    "ANOMALIES",
    "BBO_EVENT",
    "LEVEL",
    "STATUS_EVENT",
    "TRADE_EVENT",
    "BookEngine",
    "Depth",
    "EventBatch",
    "EventBuffers",
]
