"""Fan-out of one session's journal to many SoupBinTCP subscribers, sans-I/O, in rooms:
admission, subscriptions, delivery, the policy, a subscriber's state; composed by
:class:`FanOut` (:mod:`.core`)."""

from tickerplant.session.fanout.core import FanOut, FanOutCounters
from tickerplant.session.fanout.limits import FanOutLimits, Policy
from tickerplant.session.fanout.state import Phase
from tickerplant.session.fanout.subscriber import (
    BuildImages,
    CheckPassword,
    Dropped,
    Lagging,
    Subscribed,
    Subscriber,
    SubscriberEvent,
)
from tickerplant.session.fanout.subscriptions import Catalog

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
