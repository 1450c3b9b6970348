"""SoupBinTCP on asyncio transports: the driver of any sans-I/O SoupBinTCP machine.

:class:`SoupConnection` is the whole adapter between a machine (a session of
:mod:`tickerplant.session.soupbin`, or a fan-out :class:`~tickerplant.distribute.fanout.Subscriber`)
and a TCP transport, in the shape of aioquic's asyncio protocol: bytes in with ``now`` on the
one clock (:data:`tickerplant.io.loop.clock`), then act on the machine's events and write what
it has, then re-arm its one timer.
:class:`SubscriberConnection` is a fan-out subscriber's: it also tells the subscriber what the
socket says (full, drained, how much it holds), so the fan-out's policy sees flow control
without a socket. :class:`SoupServer` is a listener of those around one fan-out. The replay
client, the exchange's replay server and the plant's streams are compositions of these.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from functools import partial
from typing import Generic, Protocol, TypeVar, cast

from tickerplant.distribute.fanout import (
    BuildImages,
    CheckPassword,
    Dropped,
    FanOut,
    FanOutCounters,
    Lagging,
    Subscribed,
    Subscriber,
)
from tickerplant.distribute.journal import Journal
from tickerplant.endpoint import Endpoint
from tickerplant.io.listener import Listener
from tickerplant.io.loop import Timer, clock
from tickerplant.io.turns import Turns
from tickerplant.ops.logs import fields
from tickerplant.session.soupbin import (
    Closed,
    ProtocolViolated,
)
from tickerplant.wire.soupbintcp import PAD, encode_sequenced

log = logging.getLogger(__name__)

Verify = Callable[[str, bytes], bool]  # (stored hash, password as sent): does it match?


class SoupMachine(Protocol):
    """What :class:`SoupConnection` drives; ``now`` always comes from the one clock."""

    @property
    def closed(self) -> bool: ...

    def receive_data(self, data: bytes, now: float) -> None: ...

    def handle_timer(self, now: float) -> None: ...

    def get_timer(self) -> float | None: ...

    def data_to_send(self, now: float) -> bytes: ...

    def next_event(self) -> object: ...

    def close(self, detail: str) -> None: ...


M = TypeVar("M", bound=SoupMachine)


class SoupConnection(asyncio.Protocol, Generic[M]):
    """Drive ``session`` over a TCP transport; subclasses act on its events in :meth:`on_event`."""

    high_water = 1 << 20  # write buffer above which the transport asks us to pause

    def __init__(self, session: M) -> None:
        self.session = session
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._timer = Timer(self._on_timer)
        self._unreported = False  # push() wrote: wrote() is still owed

    def on_event(self, event: object) -> None:
        """One of the machine's events (its own types: dispatch with isinstance)."""
        raise NotImplementedError

    def wrote(self) -> None:
        """Called after each write, with :attr:`backlog` up to date."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=self.high_water)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # logins and heartbeats are single small packets: no Nagle delay
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.service()

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data, clock())
        self.service()

    def connection_lost(self, exc: Exception | None) -> None:
        self._timer.cancel()
        self.session.close(f"connection lost ({exc})" if exc else "connection closed by the peer")
        self.service()
        self.transport = None

    @property
    def backlog(self) -> int:
        """Bytes written but not yet taken by the socket."""
        return self.transport.get_write_buffer_size() if self.transport else 0

    @property
    def peer(self) -> object:
        return self.transport.get_extra_info("peername") if self.transport else None

    def service(self) -> None:
        """Act on the machine's events, send what it has, then close or re-arm its timer."""
        self.flush()
        if self.transport is None or self.transport.is_closing():
            return
        if self.session.closed:
            self.close_transport()
        else:
            self._timer.arm(self.session.get_timer())

    def close_transport(self) -> None:
        """The machine is done: close once what is buffered has been sent."""
        if self.transport is not None:
            self.transport.close()

    def push(self) -> bool:
        """Write what the machine has to send now and nothing more (whether it wrote);
        :meth:`service` does the rest (its events, :meth:`wrote`, its timer). A server pushes a
        publish to all its clients before it services any."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        data = self.session.data_to_send(clock())
        if data:
            transport.write(data)
            self._unreported = True
        return bool(data)

    def flush(self) -> None:
        """Events and writes until the machine has neither: acting on one may cause the other."""
        while True:
            if self._unreported:
                self._unreported = False
                self.wrote()
            while (event := self.session.next_event()) is not None:
                self.on_event(event)
            if not self.push():
                return

    def _on_timer(self) -> None:
        self.session.handle_timer(clock())
        self.service()


class SubscriberConnection(SoupConnection[Subscriber["SubscriberConnection"]]):
    """One fan-out subscriber on its TCP connection; the factory of a fan-out server's listener."""

    def __init__(
        self, fanout: FanOut[SubscriberConnection], turns: Turns, verify: Verify | None = None
    ) -> None:
        # The machine comes with the transport: its peer's address is part of the connection.
        self.fanout = fanout
        self.turns = turns
        self.high_water = fanout.high_water
        self.verify = verify
        self._reset: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else ""
        super().__init__(self.fanout.connect(self, clock(), address))
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.session.connection_lost()
        if self._reset is not None:
            self._reset.cancel()
            self._reset = None

    def pause_writing(self) -> None:
        self.session.pause(clock())

    def resume_writing(self) -> None:
        self.session.resume()
        # Not from inside the transport's write path: a service that ends the session would
        # close the transport there, and asyncio's selector transport (3.11) then calls
        # connection_lost twice (once for the close, once as its write buffer empties).
        self.loop.call_soon(self.service)

    def wrote(self) -> None:
        for other in self.session.report_backlog(self.backlog, clock()):
            # Closed by the policy while this one wrote (the server's queue over its budget):
            # its Debug packet and FIN go once this callback is done.
            self.loop.call_soon(other.handle.service)

    def service(self) -> None:
        self.session.held(self.backlog)
        super().service()
        self.turns.arm()  # (it may have asked for a turn)

    def close_transport(self) -> None:
        """Send what is buffered, then FIN, and read on until the client closes: closing a
        socket with the client's heartbeats unread would send RST, and the client's kernel
        would throw away what it had not yet read (the tail of the stream, End of Session).
        A client that does not close is reset when the fan-out says, ``reset_after`` seconds
        from now."""
        transport = self.transport
        if transport is None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._reset is None:
            self._reset = self.loop.call_later(self.session.reset_after, transport.abort)

    def _built(self, number: int, build: asyncio.Future[bytes]) -> None:
        if build.cancelled():
            return  # the loop is closing
        error = build.exception()
        if error is not None:  # our bug, not the client's: it is told, and nothing is skipped
            log.error("images for %s failed", self.peer, exc_info=error, extra=self._fields())
            self.shutdown(f"images failed: {type(error).__name__}")
            return
        self.session.images_built(number, build.result())
        self.service()

    def _checked(self, check: asyncio.Future[bool]) -> None:
        ok = not check.cancelled() and check.exception() is None and check.result()
        self.session.password_checked(ok, clock())
        self.service()

    def shutdown(self, detail: str) -> None:
        """Close now; what a client that is not reading has still buffered is thrown away."""
        self.session.close(detail)
        if self.transport is not None:
            if self.backlog:
                self.transport.abort()
            else:
                self.transport.close()

    def on_event(self, event: object) -> None:
        if isinstance(event, BuildImages):
            build = self.loop.run_in_executor(None, event.build)
            build.add_done_callback(partial(self._built, event.number))
        elif isinstance(event, CheckPassword):
            verify = self.verify
            if verify is None:
                raise RuntimeError("a fan-out with users needs a verify function")
            check = self.loop.run_in_executor(None, verify, event.stored, event.password)
            check.add_done_callback(self._checked)
        elif isinstance(event, Subscribed):
            log.info("subscriber %s logged in from %d", self.peer, event.first,
                     extra=self._fields())  # fmt: skip
            sock = self.transport.get_extra_info("socket") if self.transport else None
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, event.unsent)
        elif isinstance(event, Dropped) and not event.slow:
            log.error("client %s closed: %s", _address(self.peer), event.reason,
                      extra=self._fields(event="journal_unreadable",
                                         reason=event.reason))  # fmt: skip
        elif isinstance(event, Dropped):
            log.warning("client %s cut: %s", _address(self.peer), event.reason,
                        extra=self._fields(event="slow_consumer_cut",
                                           reason=event.reason))  # fmt: skip
        elif isinstance(event, Lagging):
            log.warning("client %s lagging, now %s: %s", _address(self.peer),
                        event.policy.value, event.reason,
                        extra=self._fields(event="slow_consumer", policy=event.policy.value,
                                           reason=event.reason))  # fmt: skip
        elif isinstance(event, ProtocolViolated):
            log.warning("subscriber %s broke the protocol: %s", self.peer, event.reason,
                        extra=self._fields())  # fmt: skip
        elif isinstance(event, Closed):
            log.info("subscriber %s closed: %s (%s)", self.peer, event.cause.value, event.detail,
                     extra=self._fields())  # fmt: skip

    def _fields(self, **values: object) -> dict[str, object]:
        """A line's fields: the client's address and the user it logged in as (a filter on a
        handler may tell a demo's own clients from others by it: ``logs.planned``)."""
        user = self.session.session.username.decode("ascii", "replace")
        return fields(client=_address(self.peer), user=user, **values)


async def connect(factory: Callable[[], asyncio.Protocol], endpoint: Endpoint,
                  rcvbuf: int | None = None) -> None:  # fmt: skip
    """A TCP connection to ``endpoint`` for the protocol ``factory`` makes; ``rcvbuf``: the
    receive buffer asked for (SO_RCVBUF; None: the kernel's autotuning)."""
    loop = asyncio.get_running_loop()
    if rcvbuf is None:
        await loop.create_connection(factory, endpoint.host, endpoint.port)
        return
    # Set before connect: the window scale the handshake agrees on follows it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await loop.sock_connect(sock, (endpoint.host, endpoint.port))
    except BaseException:
        sock.close()
        raise
    await loop.create_connection(factory, sock=sock)


def _address(peer: object) -> str:
    """host:port of a peer as asyncio reports it (a tuple), as an operator writes it."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


# Linux's; the socket module names it from Python 3.12 on only.
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


class SoupServer:
    """A SoupBinTCP server of one session's ``journal`` on ``host:port``: a login replays from
    any sequence number, then stays live.

    A listener whose connections are :class:`SubscriberConnection` around one
    :class:`~tickerplant.distribute.fanout.FanOut`; the policy (catch-up paced by each client's
    socket, encode once for every live client, slow consumers dropped, logins, End of Session)
    is the fan-out's, the bytes are the connections'. The exchange's replay server and the
    plant's streams are each one of these, each given its fan-out built (its settings are the
    fan-out's, written once). The owner appends to the journal and then calls :meth:`publish`.
    """

    def __init__(
        self,
        fanout: FanOut[SubscriberConnection],
        host: str,
        port: int,
        *,
        verify: Verify | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.verify = verify  # checks a password against its stored hash (a fan-out with users)
        self.fanout = fanout
        self.turns = Turns(fanout)
        self._listener: Listener | None = None  # (none: a router listens for it)

    @property
    def journal(self) -> Journal:
        return self.fanout.journal

    def start_session(self, journal: Journal) -> None:
        """A new session: clients of the old one get End of Session once caught up, and new
        logins are served ``journal``. Before anything was published (a plant listening before
        the exchange's first packet), the clients waiting are the new session's."""
        current = self.fanout
        if journal is current.journal:
            return  # served already (a journal reopened from the run before)
        if len(current.journal) == 0 and not current.ending:
            current.adopt(journal)
            self.publish()  # what it holds already (a whole snapshot) is there for them
            return
        _service(current.end_session())
        self.fanout = current.successor(journal)
        self.turns = Turns(self.fanout)  # (the old one's go on for its clients catching up)

    @property
    def counters(self) -> FanOutCounters:
        return self.fanout.counters

    @property
    def clients(self) -> int:
        """Connections open now, logged in or not."""
        return len(self.fanout)

    @property
    def queued(self) -> int:
        """Bytes written for the clients that their sockets have not taken yet."""
        return sum(s.handle.backlog for s in self.fanout.subscribers)

    @property
    def published(self) -> int:
        """One past the last message published: where a login with sequence 0 starts."""
        return self.fanout.published

    async def start(self, listen: bool = True) -> int:
        """Listen (unless a :class:`~tickerplant.io.listener.Router` listens for it); returns
        the bound port (so port 0 picks a free one)."""
        # Load (first run: compile) the framing kernel now, not inside the first client's replay.
        encode_sequenced(b"\x00\x01x")
        if not listen:
            return self.port
        listener = Listener(self.host, self.port, min(self.fanout.limits.max_connections, 4096),
                            self.connection)  # fmt: skip
        self.port = await listener.start()
        self._listener = listener
        return self.port

    def connection(self) -> SubscriberConnection:
        """A connection to this server's current session (a listener's factory)."""
        return SubscriberConnection(self.fanout, self.turns, self.verify)

    @property
    def session(self) -> bytes:
        """The session served now (padding stripped): what a router matches a login with."""
        return self.fanout.journal.session.strip(PAD)

    @property
    def login_timeout(self) -> float:
        return self.fanout.login_timeout

    @property
    def max_connections(self) -> int:
        return self.fanout.limits.max_connections

    def publish(self) -> None:
        """Send every caught-up client what the journal gained since the last call."""
        _service(self.fanout.publish(clock()))
        self.turns.arm()

    def end_session(self) -> None:
        """End of Session to every client once it has caught up (now, for those that have)."""
        _service(self.fanout.end_session())

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for subscriber in self.fanout.subscribers:
            subscriber.handle.shutdown("server shutting down")
        # let connection_lost run for the transports just closed
        await asyncio.sleep(0)


def _service(subscribers: Iterable[Subscriber[SubscriberConnection]]) -> None:
    """Write to each, back to back, then service each. A write wakes its reader; one that comes
    after the reader has gone back to sleep pays that wake-up again: 12 us a write back to back,
    25 us with 30 us of work between writes (10 clients in one process, 3.9 KB each), and
    servicing a subscriber between its write and the next is that much work."""
    subscribers = list(subscribers)
    for subscriber in subscribers:
        subscriber.handle.push()
    for subscriber in subscribers:
        subscriber.handle.service()
