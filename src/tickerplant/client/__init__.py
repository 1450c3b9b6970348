"""The subscriber library: what a strategy or a tool runs to read a plant's streams."""

from tickerplant.client.subscribe import (
    Conflated,
    Events,
    Lost,
    Reconnected,
    Record,
    Skipped,
    SubscribeError,
    Watchlist,
    subscribe,
)

__all__ = ["Conflated", "Events", "Lost", "Reconnected", "Record", "Skipped", "SubscribeError",
           "Watchlist", "subscribe"]
