"""TCP listeners: :class:`Listener` takes the connections waiting a batch at a time for a
protocol factory; :class:`Router` is one port in front of several SoupBinTCP servers (a stream's
channels), each connection handed to the server of the session its Login Request names.

A routed connection is held, with a login timeout of its own and the first server's connection
limit, only until its Login Request is whole (49 bytes); then its server's connection takes the
transport as if it had accepted it, and reads those bytes first. A login naming no session (blank)
or one no server serves goes to the first server, whose session machine answers as SoupBinTCP
says: blank is its current session, any other is Login Rejected ``S`` (session not available).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar, cast

from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.io.loop import Timer, clock
from tickerplant.wire.soupbintcp import Debug, encode, login_session

log = logging.getLogger(__name__)

ACCEPT_BATCH = 256  # connections taken a call of the listener's callback (the rest: the next)
ACCEPT_RETRY = 1.0  # seconds before accepting again after accept() failed (asyncio's wait)
T = TypeVar("T")
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
MAX_HELD = 1 << 16  # bytes a routed connection may send before its Login Request is whole


async def bound(name: str, where: Endpoint, listening: Coroutine[Any, Any, T]) -> T:
    """``listening`` (a server's start), a port in use or an address not of this host told as
    the configuration error it is: ``name.listen`` and the errno's words."""
    try:
        return await listening
    except OSError as err:
        why = os.strerror(err.errno) if err.errno else str(err)  # (the loop's own repeat it)
        raise ConfigError(f"{name}.listen", f"cannot listen on {where}: {why}",
                          "give a free host:port") from None  # fmt: skip


class Listener:
    """Listen on ``host:port`` (port 0: a free one), each connection given to a protocol from
    ``factory``; ``backlog`` connections may wait in the kernel's queue."""

    def __init__(self, host: str, port: int, backlog: int,
                 factory: Callable[[], asyncio.Protocol]) -> None:  # fmt: skip
        self.host = host
        self.port = port
        self.backlog = backlog
        self.factory = factory
        self._socket: socket.socket | None = None
        self._opening: set[asyncio.Task[object]] = set()  # connections being set up

    async def start(self) -> int:
        """Listen; returns the bound port."""
        loop = asyncio.get_running_loop()
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            # Thousands of clients may connect at once (a plant restarting): asyncio's default
            # of 100 pending would drop their handshakes (the kernel caps it at somaxconn).
            listener.listen(self.backlog)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        loop.add_reader(listener.fileno(), self._accept)
        self._socket = listener
        self.port = int(listener.getsockname()[1])
        return self.port

    def _accept(self) -> None:
        """Take the connections waiting, up to ACCEPT_BATCH a call. (uvloop's own listener takes
        one a loop turn: behind a loop busy with catch-up turns, 1,000 clients connecting at
        once waited seconds in the kernel's queue, and a new login behind them.)"""
        listener = self._socket
        if listener is None:
            return
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                if err.errno not in OUT_OF_RESOURCES:
                    continue  # that connection's own failure (aborted while queued): the next
                # Out of descriptors or memory: the rest wait in the kernel's queue.
                log.error("cannot accept on %s: %s; trying again in %.0f s",
                          Endpoint(self.host, self.port), err, ACCEPT_RETRY)  # fmt: skip
                loop.remove_reader(listener.fileno())
                loop.call_later(ACCEPT_RETRY, self._listen_again, listener)
                return
            conn.setblocking(False)
            opening = loop.create_task(loop.connect_accepted_socket(self.factory, conn))
            self._opening.add(opening)
            opening.add_done_callback(partial(self._opened, conn))

    def _listen_again(self, listener: socket.socket) -> None:
        if listener is self._socket:
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)

    def _opened(self, conn: socket.socket, opening: asyncio.Task[object]) -> None:
        self._opening.discard(opening)
        if not opening.cancelled() and opening.exception() is not None:
            log.warning("a connection could not be set up: %s", opening.exception())
            conn.close()

    def close(self) -> None:
        listener, self._socket = self._socket, None
        if listener is not None:
            asyncio.get_running_loop().remove_reader(listener.fileno())
            listener.close()
        for opening in list(self._opening):
            opening.cancel()


class Routed(Protocol):
    """What a :class:`Router` routes to: a server of one session at a time."""

    @property
    def session(self) -> bytes: ...

    @property
    def login_timeout(self) -> float: ...

    @property
    def max_connections(self) -> int: ...

    def connection(self) -> asyncio.Protocol: ...


class Router:
    """One listener on ``host:port`` for ``servers``: each connection is served by the one
    whose session its Login Request names (the first: blank, or none of theirs)."""

    def __init__(self, servers: Sequence[Routed], host: str, port: int) -> None:
        self.servers = list(servers)
        first = self.servers[0]
        self.waiting = 0  # connections held for their Login Request
        self.refused = 0  # connections over the limit while waiting, closed at once
        self.listener = Listener(host, port, min(first.max_connections, 4096),
                                 partial(Routing, self))  # fmt: skip

    @property
    def host(self) -> str:
        return self.listener.host

    @property
    def port(self) -> int:
        return self.listener.port

    async def start(self) -> int:
        return await self.listener.start()

    def close(self) -> None:
        self.listener.close()

    def server(self, session: bytes) -> Routed:
        """The server of ``session`` (stripped), else the first."""
        for server in self.servers:
            if session and server.session == session:
                return server
        return self.servers[0]


class Routing(asyncio.Protocol):
    """A routed connection until its Login Request is whole."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self._data = bytearray()
        self._timer = Timer(self._expired)
        self._held = False  # counted in the router's waiting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        router, first = self.router, self.router.servers[0]
        if router.waiting >= first.max_connections:
            router.refused += 1
            self._tell("too many connections waiting to log in")
            return
        router.waiting += 1
        self._held = True
        self._timer.arm(clock() + first.login_timeout)

    def data_received(self, data: bytes) -> None:
        self._data += data
        session = login_session(self._data)
        if session is None:
            if len(self._data) > MAX_HELD:  # Debug packets without end: not a client's way
                self._tell(f"no Login Request in the first {MAX_HELD} bytes")
            return
        transport = self.transport
        self._done()
        if transport is None or transport.is_closing():
            return
        connection = self.router.server(session).connection()
        transport.set_protocol(connection)
        connection.connection_made(transport)
        connection.data_received(bytes(self._data))

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()

    def _expired(self) -> None:
        self._tell("no Login Request in time")

    def _tell(self, reason: str) -> None:
        """A Debug packet saying why, then close: what the client reads last is why."""
        transport = self.transport
        self._done()
        if transport is not None and not transport.is_closing():
            transport.write(encode(Debug(reason.encode("ascii"))))
            transport.close()

    def _done(self) -> None:
        """No longer held (handed on, closed or timed out): counted once."""
        self.transport = None
        self._timer.cancel()
        if self._held:
            self._held = False
            self.router.waiting -= 1
