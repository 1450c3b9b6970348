"""SoupBinTCP on asyncio transports: the driver of any sans-I/O SoupBinTCP machine.

:class:`SoupConnection` is the whole adapter between a machine (a session of
:mod:`tickerplant.session.soupbin`, or a fan-out :class:`~tickerplant.session.fanout.Subscriber`)
and a TCP transport, in the shape of aioquic's asyncio protocol: bytes in with ``loop.time()``,
then act on the machine's events and write what it has, then re-arm its one timer.
:class:`SubscriberConnection` is a fan-out subscriber's: it also tells the subscriber what the
socket says (full, drained, how much it holds), so the fan-out's policy sees flow control
without a socket. The replay client and any fan-out server are compositions of these.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Generic, Protocol, TypeVar, cast

from tickerplant.session.fanout import Dropped, FanOut, Subscribed, Subscriber
from tickerplant.session.soupbin import Closed, ProtocolError

log = logging.getLogger(__name__)


class SoupMachine(Protocol):
    """What :class:`SoupConnection` drives; ``now`` always comes from the loop's clock."""

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
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._timer_at = float("inf")

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
        self.session.receive_data(data, self.loop.time())
        self.service()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
            self.transport.close()  # after what is buffered has been sent
        else:
            self._arm()

    def flush(self) -> None:
        """Events and writes until the machine has neither: acting on one may cause the other."""
        while True:
            while (event := self.session.next_event()) is not None:
                self.on_event(event)
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            data = self.session.data_to_send(self.loop.time())
            if not data:
                return
            transport.write(data)
            self.wrote()

    def _arm(self) -> None:
        deadline = self.session.get_timer()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # it fires first, and _on_timer re-arms for the later deadline
            self._timer.cancel()
        # Kept apart from the handle: uvloop returns a plain Handle, without when(), for a
        # deadline already past (a catch-up turn due at once).
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        self.session.handle_timer(self.loop.time())
        self.service()


class SubscriberConnection(SoupConnection[Subscriber["SubscriberConnection"]]):
    """One fan-out subscriber on its TCP connection; the factory of a fan-out server's listener."""

    def __init__(self, fanout: FanOut[SubscriberConnection], high_water: int) -> None:
        super().__init__(fanout.connect(self, asyncio.get_running_loop().time()))
        self.high_water = high_water
        self._reset: asyncio.TimerHandle | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.session.connection_lost()
        if self._reset is not None:
            self._reset.cancel()
            self._reset = None

    def pause_writing(self) -> None:
        self.session.pause()

    def resume_writing(self) -> None:
        self.session.resume()
        self.service()

    def wrote(self) -> None:
        self.session.report_backlog(self.backlog, self.loop.time())

    def service(self) -> None:
        super().service()
        abort_at = self.session.abort_at
        if abort_at is not None and self._reset is None and self.transport is not None:
            self._reset = self.loop.call_at(abort_at, self.transport.abort)

    def shutdown(self, detail: str) -> None:
        """Close now; what a client that is not reading has still buffered is thrown away."""
        self.session.close(detail)
        if self.transport is not None:
            if self.backlog:
                self.transport.abort()
            else:
                self.transport.close()

    def on_event(self, event: object) -> None:
        if isinstance(event, Subscribed):
            log.info("subscriber %s logged in from %d", self.peer, event.first)
        elif isinstance(event, Dropped):
            log.warning("subscriber %s dropped: %s", self.peer, event.reason)
        elif isinstance(event, ProtocolError):
            log.warning("subscriber %s broke the protocol: %s", self.peer, event.reason)
        elif isinstance(event, Closed):
            log.info("subscriber %s closed: %s (%s)", self.peer, event.cause.value, event.detail)
