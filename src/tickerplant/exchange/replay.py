"""The exchange's SoupBinTCP replay server: replay from the journal, then stay live.

A listener whose connections are :class:`~tickerplant.io.soupbin.SubscriberConnection` around
one :class:`~tickerplant.session.fanout.FanOut`; the policy (catch-up paced by each client's
socket, encode once for every live client, slow consumers dropped, logins, End of Session) is
the fan-out's, the bytes are the connections'.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from tickerplant.io.soupbin import SubscriberConnection
from tickerplant.session.fanout import (
    FanOut,
    FanOutCounters,
    FanOutLimits,
    Subscriber,
)
from tickerplant.session.journal import Journal
from tickerplant.session.soupbin import DEAD_AFTER, HEARTBEAT_INTERVAL, LOGIN_TIMEOUT
from tickerplant.wire.soupbintcp import encode_sequenced

HIGH_WATER = 2 << 20  # the transport asks us to stop writing above this, resumes below a quarter


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
        limits: FanOutLimits | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        dead_after: float = DEAD_AFTER,
        login_timeout: float = LOGIN_TIMEOUT,
    ) -> None:
        self.journal = journal
        self.host = host
        self.port = port
        credentials = (
            (username.encode("ascii"), password.encode("ascii")) if username or password else None
        )
        self.fanout: FanOut[SubscriberConnection] = FanOut(
            journal,
            credentials,
            limits,
            heartbeat_interval=heartbeat_interval,
            dead_after=dead_after,
            login_timeout=login_timeout,
        )
        self._server: asyncio.Server | None = None

    @property
    def counters(self) -> FanOutCounters:
        return self.fanout.counters

    @property
    def clients(self) -> int:
        """Connections open now, logged in or not."""
        return len(self.fanout)

    @property
    def published(self) -> int:
        """One past the last message published: where a login with sequence 0 starts."""
        return self.fanout.published

    async def start(self) -> int:
        """Listen; returns the bound port (so port 0 picks a free one)."""
        # Load (first run: compile) the framing kernel now, not inside the first client's replay.
        encode_sequenced(b"\x00\x01x")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SubscriberConnection(self.fanout, HIGH_WATER),
            self.host,
            self.port,
            reuse_address=True,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def publish(self) -> None:
        """Send every caught-up client what the journal gained since the last call."""
        _service(self.fanout.publish())

    def end_session(self) -> None:
        """End of Session to every client once it has caught up (now, for those that have)."""
        _service(self.fanout.end_session())

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for subscriber in self.fanout.subscribers:
            subscriber.handle.shutdown("server shutting down")
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        # let connection_lost run for the transports just closed
        await asyncio.sleep(0)


def _service(subscribers: Iterable[Subscriber[SubscriberConnection]]) -> None:
    for subscriber in subscribers:
        subscriber.handle.service()
