"""Tier-2: the plant's ``events`` streams republished as MoldUDP64 on the plant's own A and B
groups, so that any host receives them as the plant receives the exchange.

Each channel's events journal is a MoldUDP64 session of its own (the journal's session name;
channel k's groups derived from the tier-2 base groups as the exchange's are,
``wire/channels.py``), numbered as the journal numbers it: a record's ``sequence`` is its
MoldUDP64 sequence number. A receiver repairs from the other line, from the plant's tier-2
re-request server (answered from the same journals) and from the ``events`` SoupBinTCP service
(its replay: a login names the session). Idle, a channel sends a heartbeat each interval; a
session that ends sends End of Session on each line for ``end_of_session_seconds``, one each
interval, as the exchange does.

What the plant publishes on ``events`` goes out at once, after its clients' pushes, packed
and framed by compiled calls and sent as the exchange sends (:class:`~tickerplant.io.multicast.
Downstream`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tickerplant.distribute.journal import Journal
from tickerplant.endpoint import TIER2_REREQUEST, Endpoint
from tickerplant.errors import ConfigError
from tickerplant.io.loop import Timer, clock
from tickerplant.io.multicast import RETRY_DELAY, Downstream, Line, LineConfig
from tickerplant.io.rerequest import RerequestServer
from tickerplant.wire import moldudp64 as mold
from tickerplant.wire.blocks import as_array
from tickerplant.wire.channels import lines_of

TIER2 = ("tier2_packets", "tier2_heartbeats", "tier2_rerequests", "tier2_rerequests_refused")


@dataclass(frozen=True, slots=True)
class Tier2Config:
    """The tier-2 lines (channel 1's groups; off unless both are given) and re-request."""

    line_a: LineConfig | None = None
    line_b: LineConfig | None = None
    rerequest: Endpoint | None = TIER2_REREQUEST
    heartbeat_interval: float = mold.HEARTBEAT_INTERVAL
    end_of_session_seconds: float = mold.END_OF_SESSION_SECONDS
    sndbuf: int = 4 << 20

    def __post_init__(self) -> None:
        if (self.line_a is None) != (self.line_b is None):
            raise ConfigError("line_a" if self.line_a is None else "line_b", "is missing",
                              "give both lines, or neither (no tier-2)")  # fmt: skip
        if not self.heartbeat_interval > 0:
            raise ConfigError("heartbeat_interval", f"{self.heartbeat_interval}",
                              "give seconds above 0")  # fmt: skip

    @property
    def on(self) -> bool:
        return self.line_a is not None

    def lines(self, channels: int) -> list[tuple[LineConfig, LineConfig]]:
        """Every channel's two lines (a group two channels would share: told as the error)."""
        a, b = self.line_a, self.line_b
        assert a is not None and b is not None
        pairs = lines_of(Endpoint(a.group, a.port), Endpoint(b.group, b.port), channels)
        return [(replace(a, group=pa.host), replace(b, group=pb.host)) for pa, pb in pairs]


class _Session:
    """One channel's journal on its two lines: what has gone out, and when."""

    def __init__(self, downstream: Downstream) -> None:
        self.downstream = downstream
        self.lines = downstream.lines
        self.journal: Journal | None = None
        self.next = 1  # the next number to send
        self.last_sent = -math.inf
        self.ending_until = -math.inf  # End of Session goes out until then
        self.packets = 0
        self.heartbeats = 0

    def send(self, packet: bytes, now: float) -> None:
        self.downstream.broadcast(packet)
        self.last_sent = now


class Tier2:
    """The tier-2 lines of ``channels`` channels, and their re-request server."""

    def __init__(self, config: Tier2Config, channels: int) -> None:
        self.config = config
        # Loss injected on a line (LineConfig.drop) as the exchange's: the same packets for
        # the same line and numbers.
        self._sessions = [
            _Session(Downstream([Line("A", a, config.sndbuf), Line("B", b, config.sndbuf)], k))
            for k, (a, b) in enumerate(config.lines(channels))
        ]
        self.rerequest: RerequestServer | None = None
        self._timer = Timer(self._on_timer)

    async def start(self, journals: list[Journal]) -> None:
        """Serve re-requests for ``journals`` (each channel's current one)."""
        where = self.config.rerequest
        if where is not None:
            self.rerequest = RerequestServer(Journal(b""), where.host, where.port)
            await self.rerequest.start()
        for channel, journal in enumerate(journals):
            self.begin(channel, journal)
        self._timer.arm(clock())

    async def close(self) -> None:
        self._timer.cancel()
        if self.rerequest is not None:
            await self.rerequest.close()
        for session in self._sessions:
            for line in session.lines:
                line.close()

    def figures(self) -> dict[str, int]:
        """Named as the plant's figures (``tickerplant.ops.figures``)."""
        rerequest = self.rerequest.counters if self.rerequest is not None else None
        return {
            "tier2_packets": sum(s.packets for s in self._sessions),
            "tier2_heartbeats": sum(s.heartbeats for s in self._sessions),
            "tier2_rerequests": rerequest.requests if rerequest else 0,
            "tier2_rerequests_refused": rerequest.refused if rerequest else 0,
        }

    def begin(self, channel: int, journal: Journal) -> None:
        """``channel``'s events stream is a new session: ``journal``."""
        session = self._sessions[channel]
        old = session.journal
        if old is journal:
            return
        policy = self.rerequest.policy if self.rerequest is not None else None
        if policy is not None and old is not None:
            policy.remove(old)
        if policy is not None and journal.session.strip():  # (not one waiting for a session)
            policy.add(journal)
        session.journal = journal
        # What it held already (a journal reopened at a restart) is not sent again: the
        # heartbeats say where the stream is, and receivers that lack it repair it.
        session.next = journal.next_sequence
        session.ending_until = -math.inf

    def publish(self, channel: int) -> None:
        """Send what ``channel``'s journal gained since the last call."""
        session = self._sessions[channel]
        journal = session.journal
        if journal is None or session.next >= journal.next_sequence:
            return
        first = max(session.next, journal.first_held)  # (a ring that let go of some: gone)
        count, blocks = journal.blocks(first, journal.next_sequence - first)
        session.next = first + count
        session.packets += session.downstream.send(journal.session, as_array(blocks), first)
        now = clock()
        session.last_sent = now
        self._timer.arm(now + RETRY_DELAY if self._backlog() else None)

    def end(self, channel: int) -> None:
        """``channel``'s session is over: End of Session for a while, then nothing."""
        session = self._sessions[channel]
        self.publish(channel)
        session.ending_until = clock() + self.config.end_of_session_seconds
        session.last_sent = -math.inf
        self._timer.arm(clock())

    def _backlog(self) -> bool:
        return any(line.backlog for s in self._sessions for line in s.lines)

    def _on_timer(self) -> None:
        now = clock()
        interval = self.config.heartbeat_interval
        due = math.inf
        for session in self._sessions:
            for line in session.lines:
                line.flush()
            journal = session.journal
            if journal is None or not journal.session.strip():
                continue  # nothing heard from the exchange yet: no session to beat for
            if session.ending_until >= now or session.ending_until == -math.inf:
                at = session.last_sent + interval
                if now >= at:
                    ending = session.ending_until != -math.inf
                    encode = mold.encode_end_of_session if ending else mold.encode_heartbeat
                    session.send(encode(journal.session, session.next), now)
                    session.heartbeats += 1
                    at = now + interval
                due = min(due, at)
        if self._backlog():
            due = min(due, now + RETRY_DELAY)
        self._timer.arm(due if due < math.inf else None)
