"""The subscriber library: what a strategy or a tool runs to read a plant's streams."""

from tickerplant.client.subscribe import Lost, Reconnected, Record, SubscribeError, subscribe

__all__ = ["Lost", "Reconnected", "Record", "SubscribeError", "subscribe"]
