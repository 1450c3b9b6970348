"""``tickerplant edge``'s settings: the plant's tier-2 to join, and the events stream it serves;
loaded from TOML by :func:`tickerplant.ops.config.load`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tickerplant.endpoint import EDGE_EVENTS, EVENTS, TIER2_A, TIER2_B, TIER2_REREQUEST
from tickerplant.errors import ConfigError
from tickerplant.feed.handler import FeedConfig
from tickerplant.io.web import MetricsConfig
from tickerplant.plant.config import EventsConfig, check_shares, check_users, share
from tickerplant.wire.channels import feed_lines


def _feed() -> FeedConfig:
    return FeedConfig(TIER2_A, TIER2_B, rerequest=TIER2_REREQUEST, replay=EVENTS)


def _events() -> EventsConfig:
    return EventsConfig(EDGE_EVENTS)


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    # The plant's tier-2 as the plant's exchange is to the plant: its lines (channel 1's
    # groups), its tier-2 re-request server, and its events service as the replay (a login
    # names the session).
    feed: FeedConfig = field(default_factory=_feed)
    # The plant's channels (its channels = K): channel k's tier-2 groups derived from [feed]'s.
    channels: int = 1
    # What the edge serves: each channel's events stream, numbered as the plant numbers it
    # (several channels: one port, a login naming the session), its journal kept as the
    # plant keeps its own (journal_dir/NNN, memory_bytes shared by the channels).
    events: EventsConfig = field(default_factory=_events)
    users: dict[str, str] = field(default_factory=dict)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def __post_init__(self) -> None:
        check_users(self.users)
        self.lines()  # (a bad count, or a group two channels share: told now)
        check_shares("events", self.events, self.channels)
        if self.feed.join == "snapshot" and self.events.journal_dir is not None:
            raise ConfigError("feed.join", '"snapshot" with [events] journal_dir',
                              "a journal file holds a session from its first number: join "
                              'by "replay", or leave journal_dir out')  # fmt: skip

    def lines(self) -> list[FeedConfig]:
        """Each channel's feed settings."""
        feed = self.feed
        try:
            pairs = feed_lines(feed.line_a, feed.line_b, self.channels)
        except ConfigError as err:
            raise err.within("feed") if err.field != "channels" else err from None
        return [replace(feed, line_a=a, line_b=b) for a, b in pairs]

    def events_of(self, channel: int) -> EventsConfig:
        """Channel ``channel``'s (from 0) events stream: its share of the memory, its files."""
        return share(self.events, channel + 1, self.channels)
