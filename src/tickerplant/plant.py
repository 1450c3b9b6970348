"""``tickerplant run``: a whole plant in one process.

The feed handler (lines, re-request, replay) hands its repaired stream to the live books and to
the ``itch`` stream, a SoupBinTCP server of its journal: a client logs in at any sequence number,
is replayed from there at full speed and then stays live, and a range the plant lost keeps its
numbers as marks (:mod:`tickerplant.session.stream`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tickerplant.endpoint import ITCH, LINE_A, LINE_B, REPLAY, REREQUEST, Endpoint
from tickerplant.feed.books import LiveBooks
from tickerplant.feed.handler import FeedHandler
from tickerplant.io.soupbin import SoupServer
from tickerplant.ops import passwords
from tickerplant.ops.config import ConfigError
from tickerplant.session.events import Batch, Event, GapLost, SessionEnded, SessionStarted
from tickerplant.session.fanout import FanOutLimits
from tickerplant.session.feed import FeedConfig
from tickerplant.session.stream import ItchStream


def _feed() -> FeedConfig:
    return FeedConfig(LINE_A, LINE_B, rerequest=REREQUEST, replay=REPLAY)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """One SoupBinTCP stream the plant serves."""

    listen: Endpoint = ITCH
    limits: FanOutLimits = field(default_factory=FanOutLimits)


@dataclass(frozen=True, slots=True)
class PlantConfig:
    feed: FeedConfig = field(default_factory=_feed)
    itch: StreamConfig = field(default_factory=StreamConfig)
    # User name -> scrypt hash of the password (`tickerplant passwd USER` makes one). With none,
    # any login is accepted, from this host's addresses only.
    users: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, stored in self.users.items():
            if not (0 < len(name) <= 6 and name.isascii() and name.isprintable()):
                raise ConfigError(f"users.{name}", "is not a SoupBinTCP user name",
                                  "use 1 to 6 ASCII characters")
            passwords.check(stored, f"users.{name}")


class Plant:
    def __init__(self, config: PlantConfig) -> None:
        self.config = config
        self.books = LiveBooks()
        self.stream = ItchStream(config.feed.first_sequence)
        self.feed = FeedHandler(config.feed, self._on_batch, self._on_event)
        listen = config.itch.listen
        users = {name.encode("ascii"): stored for name, stored in config.users.items()}
        self.itch = SoupServer(
            ItchStream.waiting(), listen.host, listen.port, limits=config.itch.limits,
            users=users or None, verify=passwords.verify, local_only=not users,
        )  # fmt: skip

    async def start(self) -> None:
        """Listen first, then join the lines: a client may log in before the first packet."""
        self.books.warm()
        await self.itch.start()
        await self.feed.start()

    async def close(self) -> None:
        await self.feed.close()
        await self.itch.close()

    def figures(self) -> dict[str, Any]:
        counters = self.itch.counters
        return self.feed.figures() | self.books.figures() | {
            "stream_messages": {"itch": self.stream.counters.messages},
            "stream_lost_messages": {"itch": self.stream.counters.lost},
            "clients": {"itch": self.itch.clients},
            "logins": {"itch": counters.logins},
            "rejected_logins": {"itch": counters.rejected},
            "sent_messages": {"itch": counters.messages_sent},
            "sent_bytes": {"itch": counters.bytes_sent},
            "slow_consumers": {"itch": counters.slow_consumers},
            "refused_connections": {"itch": counters.refused},
        }

    def _on_batch(self, batch: Batch) -> None:
        self.books.on_batch(batch)
        self.stream.deliver(batch)
        self.itch.publish()

    def _on_event(self, event: Event) -> None:
        self.books.on_event(event)
        if isinstance(event, SessionStarted | GapLost | SessionEnded):
            if self.stream.deliver(event):
                assert self.stream.journal is not None
                self.itch.start_session(self.stream.journal)
            elif isinstance(event, SessionEnded):
                self.itch.end_session()
            else:
                self.itch.publish()
