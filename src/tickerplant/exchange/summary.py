"""What an exchange run says of itself: its summary (per line, per channel) and its figures."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

from tickerplant.distribute.fanout import FanOutCounters
from tickerplant.distribute.rerequest import RerequestCounters
from tickerplant.exchange.publisher import Publisher
from tickerplant.io.multicast import Line
from tickerplant.io.rerequest import RerequestServer
from tickerplant.io.soupbin import SoupServer


@dataclass(frozen=True, slots=True)
class LineSummary:
    name: str
    group: str
    port: int
    sndbuf: int  # SO_SNDBUF the kernel granted
    sent: int
    dropped: int  # skipped on purpose (loss injection)
    retries: int  # sends deferred by a full socket buffer (EAGAIN/ENOBUFS), none lost
    errors: int  # sends that failed otherwise (the packet is lost on this line)


@dataclass(frozen=True, slots=True)
class ChannelSummary:
    session: str
    published: int  # messages: its stocks', and every message of no stock
    next_sequence: int
    sha256: str  # of its block stream
    line_a: str  # group:port
    line_b: str


@dataclass(frozen=True, slots=True)
class ExchangeSummary:
    session: str
    published: int  # messages
    packets: int  # data packets per line, before loss injection
    heartbeats: int
    end_of_session_packets: int
    next_sequence: int
    sha256: str  # of the published block stream (u16 length + message, repeated)
    lines: tuple[LineSummary, ...]
    rerequest_port: int | None
    rerequest: RerequestCounters | None
    replay_port: int | None
    replay: FanOutCounters | None
    seconds: float
    ended: bool  # the end of session was sent for its whole while
    journal_memory: int = 0  # bytes of the journal held in memory (the rest: its file)
    error: str | None = None  # why the source stopped early, if it did
    # With more than one channel, each one's (the fields above: the first channel's, but
    # published and sha256, the day's).
    channels: tuple[ChannelSummary, ...] = ()

    def figures(self) -> dict[str, Any]:
        """The summary as figures (names in ``tickerplant.ops.figures.EXCHANGE``)."""
        lines = {line.name.lower(): line for line in self.lines}
        rerequest, replay = self.rerequest, self.replay
        return {
            "session": self.session.strip(),
            "published_messages": self.published,
            "published_packets": self.packets,
            "line_sent_packets": {k: v.sent for k, v in lines.items()},
            "line_dropped_packets": {k: v.dropped for k, v in lines.items()},
            "line_send_retries": {k: v.retries for k, v in lines.items()},
            "line_send_errors": {k: v.errors for k, v in lines.items()},
            "rerequests_received": rerequest.requests if rerequest else 0,
            "rerequest_messages_served": rerequest.messages if rerequest else 0,
            "rerequests_refused": rerequest.refused if rerequest else 0,
            "replay_logins": replay.logins if replay else 0,
            "replay_sent_messages": replay.messages_sent if replay else 0,
            "exchange_journal_memory_bytes": self.journal_memory,
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.rerequest is not None:
            out["rerequest"]["refused"] = self.rerequest.refused
        return out


def summarize(
    session: str,
    publisher: Publisher,
    servers: tuple[RerequestServer | None, list[SoupServer]],
    seconds: float,
    error: str | None,
) -> ExchangeSummary:
    rerequest, replays = servers
    replay = replays[0] if replays else None
    lines = publisher.lines
    channels = tuple(
        ChannelSummary(channel.session.decode("ascii").strip(), channel.messages,
                       channel.next_sequence, channel.sha256, _where(channel.lines[0]),
                       _where(channel.lines[1]))
        for channel in publisher.channels
    ) if len(publisher.channels) > 1 else ()  # fmt: skip
    return ExchangeSummary(
        session=session,
        published=publisher.messages,
        packets=publisher.packets,
        heartbeats=publisher.heartbeats,
        end_of_session_packets=publisher.end_of_session_packets,
        next_sequence=publisher.next_sequence,
        sha256=publisher.sha256,
        lines=tuple(
            LineSummary(
                line.name,
                line.config.group,
                line.config.port,
                line.sndbuf,
                line.sent,
                line.dropped,
                line.retries,
                line.errors,
            )
            for line in lines
        ),
        rerequest_port=rerequest.port if rerequest is not None else None,
        rerequest=copy.deepcopy(rerequest.counters) if rerequest is not None else None,
        replay_port=replay.port if replay is not None else None,
        replay=copy.deepcopy(replay.counters) if replay is not None else None,
        seconds=seconds,
        ended=publisher.done,
        journal_memory=sum(c.journal.memory for c in publisher.channels),
        error=error,
        channels=channels,
    )


def _where(line: Line) -> str:
    return f"{line.config.group}:{line.config.port}"
