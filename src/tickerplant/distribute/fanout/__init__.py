"""Fan-out of one session's journal to many SoupBinTCP subscribers, sans-I/O, in rooms:
admission, subscriptions, delivery, the policy, a subscriber's state; composed by
:class:`FanOut` (:mod:`.core`)."""

from tickerplant.distribute.fanout.core import FanOut, FanOutCounters
from tickerplant.distribute.fanout.limits import FanOutLimits, Policy
from tickerplant.distribute.fanout.state import Phase
from tickerplant.distribute.fanout.subscriber import (
    BuildImages,
    CheckPassword,
    Dropped,
    Lagging,
    Subscribed,
    Subscriber,
    SubscriberEvent,
)
from tickerplant.distribute.fanout.subscriptions import Catalog

__all__ = [
    "BuildImages",
    "Catalog",
    "CheckPassword",
    "Dropped",
    "FanOut",
    "FanOutCounters",
    "FanOutLimits",
    "Lagging",
    "Phase",
    "Policy",
    "Subscribed",
    "Subscriber",
    "SubscriberEvent",
]
