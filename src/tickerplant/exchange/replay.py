"""The exchange's SoupBinTCP replay server: replay from the journal, then stay live.

A client logs in with a sequence number and is sent the journal from there in large writes, paced
by its own TCP connection (a client whose socket is full is simply not written to until it drains,
so one slow reader never holds up another). Once it has everything published it is *live*: each
:meth:`ReplayServer.publish` encodes the new messages once and hands the same bytes to every live
client. A live client that stops reading lets its backlog grow; past ``max_backlog`` bytes it is
sent a Debug packet saying why and disconnected (a slow consumer).

Login sequence numbers: 0 starts with the next message published; a number beyond the journal's
end is accepted and the client is sent messages from there once they are published (the spec's
"(re)start from that number"; rejecting would make a client that knows the future sequence
number poll for it). After :meth:`ReplayServer.end_session` every client is sent End of Session
as soon as it has caught up, and later logins are still served their replay, then End of Session.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from tickerplant.io.replay_client import SoupConnection
from tickerplant.session.journal import Journal
from tickerplant.session.soupbin import (
    DEAD_AFTER,
    HEARTBEAT_INTERVAL,
    LOGIN_TIMEOUT,
    CloseCause,
    Closed,
    Event,
    LoginReceived,
    ProtocolError,
    SoupServerSession,
    State,
)
from tickerplant.wire.soupbintcp import encode_sequenced

log = logging.getLogger(__name__)

# Messages read from the journal per write while catching a client up: ~0.5 MiB of ITCH.
CHUNK_MESSAGES = 16384
# What one catch-up turn may write before yielding to the event loop, so a fast client that
# drains as quickly as we write does not keep the others (and the timers) waiting.
TURN_BYTES = 8 << 20
HIGH_WATER = 2 << 20  # the transport asks us to stop writing above this, resumes below a quarter
MAX_BACKLOG = 16 << 20
LINGER = 2.0  # seconds a dropped client gets to read the Debug packet before the socket is reset


@dataclass(slots=True)
class ReplayCounters:
    connections: int = 0
    logins: int = 0
    rejected: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0  # of Sequenced Data
    slow_consumers: int = 0
    protocol_errors: int = 0
    timeouts: int = 0  # login timeouts and dead links
    sessions_ended: int = 0  # End of Session sent


class _Client(SoupConnection[SoupServerSession]):
    """One connection: its session machine, its place in the journal, its socket."""

    high_water = HIGH_WATER

    def __init__(self, server: ReplayServer) -> None:
        super().__init__(server._new_session(asyncio.get_running_loop().time()))
        self.server = server
        self.cursor = 0  # the sequence number of the next message to send
        self.turn_scheduled = False

    @property
    def active(self) -> bool:
        """Logged in and still connected: worth encoding messages for."""
        transport = self.transport
        return (
            self.session.state is State.ACTIVE
            and transport is not None
            and not transport.is_closing()
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server._joined(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.server._left(self)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.server._catch_up(self)

    def on_event(self, event: Event) -> None:
        if isinstance(event, LoginReceived):
            self.server._login(self, event)
        elif isinstance(event, ProtocolError):
            self.server.counters.protocol_errors += 1
            log.warning("replay client %s broke the protocol: %s", self.peer, event.reason)
        elif isinstance(event, Closed):
            self.server._closed(self, event)


class ReplayServer:
    """SoupBinTCP replay of ``journal`` to any number of clients on ``host:port``.

    ``username``/``password`` both empty lets anyone log in; otherwise a login must match them.
    The exchange appends to the journal and then calls :meth:`publish`.
    """

    def __init__(
        self,
        journal: Journal,
        host: str,
        port: int,
        username: str = "",
        password: str = "",
        *,
        max_backlog: int = MAX_BACKLOG,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        dead_after: float = DEAD_AFTER,
        login_timeout: float = LOGIN_TIMEOUT,
    ) -> None:
        self.journal = journal
        self.host = host
        self.port = port
        self.max_backlog = max_backlog
        self.counters = ReplayCounters()
        self._credentials = (
            (username.encode("ascii"), password.encode("ascii")) if username or password else None
        )
        self._timing = (heartbeat_interval, dead_after, login_timeout)
        self._server: asyncio.Server | None = None
        self._clients: set[_Client] = set()
        self._published = journal.next_sequence
        self._ending = False

    @property
    def clients(self) -> int:
        """Connections open now, logged in or not."""
        return len(self._clients)

    @property
    def published(self) -> int:
        """One past the last message published: where a login with sequence 0 starts."""
        return self._published

    async def start(self) -> int:
        """Listen; returns the bound port (so port 0 picks a free one)."""
        # Load (first run: compile) the framing kernel now, not inside the first client's replay.
        encode_sequenced(b"\x00\x01x")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Client(self), self.host, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def publish(self) -> None:
        """Send every caught-up client what the journal gained since the last call."""
        old, new = self._published, self.journal.next_sequence
        if new <= old:
            return
        self._published = new
        live = [c for c in self._clients if c.active and c.cursor == old]
        if live and new - old <= CHUNK_MESSAGES:
            count, blocks = self.journal.blocks(old, new - old)
            packets = encode_sequenced(blocks)  # once, for every live client
            for client in live:
                self._send(client, packets, count)
                if client.backlog > self.max_backlog:
                    self._drop_slow(client)
        # clients catching up, waiting for a future sequence number, or facing a burst too big
        # to push pull it from the journal at their own pace
        for client in list(self._clients):
            if client.active and client.cursor < new:
                self._catch_up(client)

    def end_session(self) -> None:
        """End of Session to every client once it has caught up (now, for those that have)."""
        self._ending = True
        for client in list(self._clients):
            self._maybe_end(client)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for client in list(self._clients):
            client.session.close("server shutting down")
            if client.transport is not None:
                if client.backlog:
                    client.transport.abort()
                else:
                    client.transport.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # let connection_lost run for the transports just closed
        await asyncio.sleep(0)

    # --- called by the connections ---------------------------------------------------------

    def _new_session(self, now: float) -> SoupServerSession:
        heartbeat_interval, dead_after, login_timeout = self._timing
        return SoupServerSession(
            self.journal.session,
            now,
            self._credentials,
            login_timeout=login_timeout,
            heartbeat_interval=heartbeat_interval,
            dead_after=dead_after,
        )

    def _joined(self, client: _Client) -> None:
        self._clients.add(client)
        self.counters.connections += 1

    def _left(self, client: _Client) -> None:
        self._clients.discard(client)

    def _login(self, client: _Client, login: LoginReceived) -> None:
        if client.session.state is not State.LOGIN_RECEIVED:
            return  # what followed the login in the same read already closed the session
        first = login.sequence or self._published
        client.session.accept(first)
        client.cursor = first
        self.counters.logins += 1
        log.info("replay client %s logged in from %d", client.peer, first)
        self._catch_up(client)

    def _closed(self, client: _Client, closed: Closed) -> None:
        if closed.cause is CloseCause.LOGIN_REJECTED:
            self.counters.rejected += 1
        elif closed.cause in (CloseCause.LOGIN_TIMEOUT, CloseCause.DEAD_LINK):
            self.counters.timeouts += 1
        elif closed.cause is CloseCause.END_OF_SESSION:
            self.counters.sessions_ended += 1
        log.info("replay client %s closed: %s (%s)", client.peer, closed.cause.value, closed.detail)

    def _catch_up(self, client: _Client) -> None:
        """Write journal chunks until the client is caught up, its socket full or its turn over."""
        budget = TURN_BYTES
        while client.active and not client.paused and client.cursor < self._published:
            if budget <= 0:
                if not client.turn_scheduled:
                    client.turn_scheduled = True
                    client.loop.call_soon(self._next_turn, client)
                return
            want = min(CHUNK_MESSAGES, self._published - client.cursor)
            count, blocks = self.journal.blocks(client.cursor, want)
            packets = encode_sequenced(blocks)
            self._send(client, packets, count)
            budget -= len(packets)
        self._maybe_end(client)
        client.service()

    def _next_turn(self, client: _Client) -> None:
        client.turn_scheduled = False
        self._catch_up(client)

    def _send(self, client: _Client, packets: bytes, count: int) -> None:
        client.session.send_sequenced(packets, count)
        client.cursor += count
        self.counters.messages_sent += count
        self.counters.bytes_sent += client.flush()

    def _maybe_end(self, client: _Client) -> None:
        if self._ending and client.active and client.cursor >= self._published:
            client.session.end_session()
            client.service()

    def _drop_slow(self, client: _Client) -> None:
        self.counters.slow_consumers += 1
        reason = f"slow consumer: {client.backlog} bytes unsent, over the {self.max_backlog} cap"
        log.warning("replay client %s dropped: %s", client.peer, reason)
        client.session.send_debug(reason.encode("ascii"))
        client.session.close(reason)
        client.service()
        if client.transport is not None:
            client.loop.call_later(LINGER, client.transport.abort)
