"""``tickerplant run``'s settings: the feed, each stream the plant serves, its users; loaded
from TOML by :func:`tickerplant.ops.config.load`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, TypeVar

from tickerplant.distribute.fanout import FanOutLimits, Policy
from tickerplant.endpoint import EVENTS, GLIMPSE, ITCH, LINE_A, LINE_B, REPLAY, REREQUEST, Endpoint
from tickerplant.errors import ConfigError
from tickerplant.feed.handler import FeedConfig
from tickerplant.io.web import MetricsConfig
from tickerplant.ops import passwords
from tickerplant.ops.config import check
from tickerplant.plant.tier2 import Tier2Config
from tickerplant.wire.channels import feed_lines, session_of

MEMORY_BYTES = 256 << 20  # of each stream's journal kept in memory
KEEP_SESSIONS = 5  # a trading week of daily sessions' journal files
MIN_RING = 1 << 20  # the least a journal without a file may keep


def _feed() -> FeedConfig:
    return FeedConfig(LINE_A, LINE_B, rerequest=REREQUEST, replay=REPLAY)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """One SoupBinTCP stream the plant serves."""

    listen: Endpoint = ITCH
    limits: FanOutLimits = field(default_factory=FanOutLimits)
    # Each session's journal is also appended to a file here (SESSION.journal: the block
    # stream as served, marks included); a plant started again reopens the newest and serves
    # the same numbers. None: memory only, a ring of the newest memory_bytes, gone with the
    # process (a client resuming from older numbers is served from the oldest held, and told).
    journal_dir: Path | None = None
    # The newest this many bytes stay in memory; with a journal_dir, older ones are read back
    # from the file (the page cache, as a rule) when a client catches up through them.
    memory_bytes: int = MEMORY_BYTES
    # With a journal_dir, the files of this many sessions are kept (the newest); older ones
    # are deleted when a new session starts.
    keep_sessions: int = KEEP_SESSIONS
    # With a journal_dir: None leaves writing the file to the disk to the kernel (a power cut
    # may lose its last ~30 s, fetched again from the exchange at the restart); 0 syncs after
    # every batch; N seconds syncs at most that long after one. A crash of the plant alone
    # loses nothing written either way (the page cache survives it).
    fsync_interval: float | None = None
    # What becomes of a slow consumer of this stream: "disconnect" (told why and closed; it
    # resumes from the journal), or on the events stream "conflate" (each symbol's latest
    # state while it lags) or "skip" (moved to live, told the range skipped). Per user name
    # (with no users configured, the name a client logs in with), else ``slow_consumer``.
    slow_consumer: str = Policy.DISCONNECT.value
    slow_consumers: dict[str, str] = field(default_factory=dict)
    # The policies this stream can carry out: itch's messages can be neither merged nor skipped.
    POLICIES: ClassVar[tuple[Policy, ...]] = (Policy.DISCONNECT,)

    def __post_init__(self) -> None:
        check("memory_bytes", self.memory_bytes >= 0, self.memory_bytes, "give bytes, 0 or more")
        check("memory_bytes", self.journal_dir is not None or self.memory_bytes >= MIN_RING,
              self.memory_bytes, f"give {MIN_RING} or more without a journal_dir: it is all a "
              "client can resume from")  # fmt: skip
        check("keep_sessions", self.keep_sessions >= 2, self.keep_sessions,
              "give 2 or more: the session being written, and the one before, whose clients "
              "may still be finishing it")  # fmt: skip
        if self.fsync_interval is not None:
            check("fsync_interval", self.fsync_interval >= 0, self.fsync_interval,
                  "give seconds, 0 or more, or leave it out")
        self.policy(self.slow_consumer, "slow_consumer")
        for name, policy in self.slow_consumers.items():
            _check_user(name, f"slow_consumers.{name}")
            self.policy(policy, f"slow_consumers.{name}")

    def policy(self, name: str, where: str) -> Policy:
        """The policy ``name`` (the setting at ``where``), if this stream can carry it out."""
        fix = "give one of " + ", ".join(p.value for p in self.POLICIES)
        try:
            policy = Policy(name)
        except ValueError:
            raise ConfigError(where, f"{name!r} is not a policy", fix) from None
        if policy not in self.POLICIES:
            raise ConfigError(where, f"{name!r} cannot be done on this stream (its messages "
                              "can be neither merged nor skipped)", fix)  # fmt: skip
        return policy

    def policies(self) -> dict[bytes, Policy]:
        """Each user's policy, by the name a login carries."""
        return {user.encode("ascii"): self.policy(policy, f"slow_consumers.{user}")
                for user, policy in self.slow_consumers.items()}  # fmt: skip


@dataclass(frozen=True, slots=True)
class EventsConfig(StreamConfig):
    """The normalized events stream: BBO changes, trades, status changes, lost ranges. Its
    journal files are journal_dir/SESSION.events."""

    listen: Endpoint = EVENTS
    # Price levels per side in the image a client gets of each symbol it adds.
    depth: int = 5
    POLICIES: ClassVar[tuple[Policy, ...]] = (Policy.DISCONNECT, Policy.CONFLATE, Policy.SKIP)

    def __post_init__(self) -> None:
        StreamConfig.__post_init__(self)  # (zero-argument super() fails in a slots dataclass)
        if not 0 <= self.depth <= 255:
            raise ConfigError("depth", f"{self.depth}", "give 0 to 255 levels")


@dataclass(frozen=True, slots=True)
class GlimpseConfig:
    """The snapshot service: log in at 1, read the books as ITCH messages up to End of Snapshot
    ``G`` (the itch number to continue from), then End of Session."""

    listen: Endpoint = GLIMPSE
    limits: FanOutLimits = field(default_factory=FanOutLimits)
    # A snapshot is rebuilt this often while the stream moves (one vectorised pass over the
    # resting orders); a login gets the latest, and G says where it stands.
    refresh: float = 1.0

    def __post_init__(self) -> None:
        if not self.refresh > 0:
            raise ConfigError("refresh", f"{self.refresh}", "give seconds above 0")


@dataclass(frozen=True, slots=True)
class PlantConfig:
    feed: FeedConfig = field(default_factory=_feed)
    itch: StreamConfig = field(default_factory=StreamConfig)
    glimpse: GlimpseConfig = field(default_factory=GlimpseConfig)
    # User name -> scrypt hash of the password (`tickerplant passwd USER` makes one). With none,
    # any login is accepted, from this host's addresses only.
    users: dict[str, str] = field(default_factory=dict)
    events: EventsConfig = field(default_factory=EventsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # The events streams republished as MoldUDP64 on the plant's own groups (off unless its
    # lines are given): what edge hosts join.
    tier2: Tier2Config = field(default_factory=Tier2Config)
    # The exchange's channels (its --channels): channel k's lines are [feed]'s groups with k - 1
    # added to their third octet (wire/channels.py); the exchange's one re-request server and
    # one replay port serve them all, by session. Each stream serves every channel on its one
    # port, a client naming the channel's session in its login; journal files go in
    # journal_dir/NNN, and each channel's journal keeps memory_bytes / channels.
    channels: int = 1
    # Each channel's priority, in channel order (left out: 0): when several channels' sockets
    # are ready at once, the higher priorities' are read first. All equal: as the loop finds
    # them ready, which costs nothing more.
    priorities: list[int] = field(default_factory=list)
    # Keys a config may still carry from before, and where they went.
    MOVED: ClassVar[dict[str, str]] = {
        "slow_consumer": "[events] slow_consumer (policies are per stream; [itch] takes only "
                         "disconnect)",
        "slow_consumers": "[events] slow_consumers (policies are per stream; [itch] takes only "
                          "disconnect)",
    }  # fmt: skip

    def __post_init__(self) -> None:
        check_users(self.users)
        self.lines()  # (a bad count or a group two channels share: told now)
        if self.tier2.on:
            try:
                self.tier2.lines(self.channels)
            except ConfigError as err:
                raise err.within("tier2") from None
        for n, rank in enumerate(self.priorities):
            if not isinstance(rank, int) or isinstance(rank, bool):
                raise ConfigError(f"priorities[{n}]", f"{rank!r} is not a whole number",
                                  "give each channel's priority as an integer")
        if len(self.priorities) > self.channels:
            raise ConfigError("priorities", f"{len(self.priorities)} of them for "
                              f"{self.channels} channels", "give one per channel at most")
        if self.channels > 1 and self.feed.capture is not None:
            raise ConfigError("feed.capture", "is one channel's ITCH file",
                              "leave it out with several channels")
        for name in ("itch", "events"):
            check_shares(name, getattr(self, name), self.channels)

    def lines(self) -> list[tuple[Endpoint, Endpoint | None]]:
        """Every channel's A and B lines."""
        try:
            return feed_lines(self.feed.line_a, self.feed.line_b, self.channels)
        except ConfigError as err:
            raise err.within("feed") if err.field != "channels" else err from None

    def of_channel(self, channel: int) -> ChannelConfig:
        """The settings of ``channel`` (from 0)."""
        feed = self.feed
        if channel < len(self.priorities):
            feed = replace(feed, priority=self.priorities[channel])
        if self.channels == 1:
            return ChannelConfig(0, feed, self.itch, self.events, self.glimpse)
        k = channel + 1
        line_a, line_b = self.lines()[channel]
        session = feed.session and session_of(feed.session, k, self.channels)
        return ChannelConfig(
            channel,
            replace(feed, line_a=line_a, line_b=line_b, session=session),
            share(self.itch, k, self.channels), share(self.events, k, self.channels),
            self.glimpse,
        )


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """One channel's settings, derived from the plant's (:meth:`PlantConfig.of_channel`)."""

    number: int  # from 0
    feed: FeedConfig
    itch: StreamConfig
    events: EventsConfig
    glimpse: GlimpseConfig


S = TypeVar("S", bound=StreamConfig)


def share(stream: S, k: int, channels: int) -> S:
    """A stream's settings for channel ``k`` (from 1) of ``channels``: its share of the
    memory, its files in journal_dir/NNN."""
    if channels == 1:
        return stream
    folder = stream.journal_dir
    return replace(stream, memory_bytes=stream.memory_bytes // channels,
                   journal_dir=folder / f"{k:03d}" if folder is not None else None)


def check_shares(name: str, stream: StreamConfig, channels: int) -> None:
    """Each channel's share of a ring is still a ring a client can resume from."""
    need = channels * MIN_RING
    if channels > 1 and stream.journal_dir is None and stream.memory_bytes < need:
        raise ConfigError(f"{name}.memory_bytes", f"{stream.memory_bytes}",
                          f"give {need} or more: {MIN_RING} for each of {channels} "
                          "channels")  # fmt: skip


def check_users(users: dict[str, str]) -> None:
    """Each user's name and stored password hash."""
    for name, stored in users.items():
        _check_user(name, f"users.{name}")
        passwords.check(stored, f"users.{name}")


def _check_user(name: str, where: str) -> None:
    if not (0 < len(name) <= 6 and name.isascii() and name.isprintable()):
        raise ConfigError(where, "is not a SoupBinTCP user name", "use 1 to 6 ASCII characters")
