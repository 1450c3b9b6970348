"""The feed handler's SoupBinTCP replay client.

:class:`ReplayClient` fetches a range of sequenced messages (gap repair, late join): it logs in
at the first number wanted and hands each run of messages to ``on_messages`` as one block stream,
the way it came off the socket, never one call per message. The connection is a
:class:`~tickerplant.io.soupbin.SoupConnection` driving a client session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from tickerplant.errors import RemoteError
from tickerplant.io.loop import clock
from tickerplant.io.soupbin import SoupConnection
from tickerplant.receive.events import Batch
from tickerplant.session.soupbin import (
    DEAD_AFTER,
    HEARTBEAT_INTERVAL,
    CloseCause,
    Closed,
    DebugReceived,
    LoggedIn,
    ProtocolViolated,
    Rejected,
    SoupClientSession,
    State,
)
from tickerplant.wire.blocks import offsets_of

log = logging.getLogger(__name__)

OnMessages = Callable[[int, int, bytes], None]


class ReplayError(RemoteError):
    """The replay server refused us (login rejected): retrying the same way will not help."""


class _Fetch(SoupConnection[SoupClientSession]):
    """One login: deliver messages ``first..last`` as they come, log out after ``last``."""

    def __init__(
        self,
        session: SoupClientSession,
        first: int,
        last: int,
        on_messages: OnMessages,
        wanted: bytes = b"",
    ) -> None:
        super().__init__(session)
        self.wanted = wanted.strip(b" \x00")
        self.first = first
        self.last = last
        self.on_messages = on_messages
        self.accepted: int | None = None  # the sequence number in Login Accepted
        self.delivered = first - 1
        self.debug = b""
        self.done: asyncio.Future[Closed] = self.loop.create_future()

    def on_event(self, event: object) -> None:
        if self.done.done():
            return  # failed (or over): nothing after that point may reach the caller
        if isinstance(event, Batch):
            self._deliver(event)
        elif isinstance(event, LoggedIn):
            got = event.session.strip(b" \x00")
            if self.wanted and got != self.wanted:
                # Another session's messages under our sequence numbers would be silent damage.
                self._fail(ReplayError(f"login accepted for session {got!r}, not {self.wanted!r}"))
                return
            self.accepted = event.sequence
            if self.first < event.sequence and self.first <= self.last:  # not for a probe
                log.warning("replay server starts at %d, %d asked", event.sequence, self.first)
            if event.sequence > self.last:
                self.session.logout()
        elif isinstance(event, DebugReceived):
            self.debug = event.text
            log.info("replay server %s says: %r", self.peer, event.text)
        elif isinstance(event, Rejected):
            reason = {b"A": "not authorized", b"S": "session not available"}.get(event.reason)
            self._fail(ReplayError(f"login rejected: {reason or event.reason!r}"))
        elif isinstance(event, ProtocolViolated):
            log.warning("replay server %s broke the protocol: %s", self.peer, event.reason)
        elif isinstance(event, Closed) and not self.done.done():
            self.done.set_result(event)

    def _deliver(self, batch: Batch) -> None:
        start = max(batch.first, self.delivered + 1)
        end = min(batch.end, self.last + 1)  # exclusive
        if start >= end:
            return
        blocks = batch.blocks
        if start != batch.first or end != batch.end:
            offsets, size = offsets_of(blocks)
            cut_end = int(offsets[end - batch.first]) if end < batch.end else size
            blocks = blocks[int(offsets[start - batch.first]) : cut_end]
        try:
            self.on_messages(start, end - start, blocks)
        except Exception as exc:  # the caller's bug: stop and hand it back from fetch()
            self._fail(exc)
            return
        self.delivered = end - 1
        if self.delivered >= self.last:
            self.session.logout()

    def _fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def stop(self) -> None:
        """Log out if still logged in, and close (after a timeout or an error)."""
        if self.session.state in (State.LOGGING_IN, State.ACTIVE):
            self.session.logout()
        self.service()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class ReplayClient:
    """Fetch ranges of sequenced messages from a SoupBinTCP replay server.

    ``session`` is the session to ask for (blank: the server's current one). ``on_messages`` gets
    ``(first sequence number, count, block stream)`` for each run as it arrives.
    """

    def __init__(
        self,
        host: str,
        port: int,
        session: bytes,
        on_messages: OnMessages,
        username: str = "",
        password: str = "",
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        dead_after: float = DEAD_AFTER,
    ) -> None:
        self.host = host
        self.port = port
        self.session = session
        self.on_messages = on_messages
        self.username = username.encode("ascii")
        self.password = password.encode("ascii")
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.stop_reason = ""  # why the last fetch ended: "complete", "timeout", ...

    async def fetch(self, first: int, last: int, timeout: float) -> int:
        """Deliver messages ``first..last`` (inclusive); returns the last sequence number of the
        run delivered from ``first`` on.

        Stops once ``last`` is delivered, or at ``timeout`` seconds, or when the server ends the
        session or the connection; :attr:`stop_reason` says which. Fewer than asked is not an
        error: the return value says how far it got. A server that starts later than ``first``
        delivered no run from ``first``: ``first - 1``, though what it sent is handed over.
        Raises :class:`ReplayError` when the login is rejected, OSError when the server cannot be
        reached, and whatever ``on_messages`` raised.
        """
        if first < 1:
            raise ValueError(f"sequence numbers start at 1, not {first}")
        if last < first:
            self.stop_reason = "complete"
            return first - 1
        fetch = await self._run(timeout, _Fetch(
            self._login(first), first, last, self.on_messages, self.session
        ))
        if fetch.accepted is not None and fetch.accepted > first:
            self.stop_reason = f"the server starts at {fetch.accepted}, {first} asked"
            return first - 1
        return fetch.delivered

    async def next_sequence(self, timeout: float) -> int:
        """The number the server will give its next message: log in at 0, read it, log out.

        A late joiner fetches ``1 .. next_sequence() - 1``. Raises TimeoutError if the server
        does not answer the login in time.
        """
        fetch = await self._run(timeout, _Fetch(
            self._login(0), 1, 0, self.on_messages, self.session
        ))
        if fetch.accepted is None:
            raise TimeoutError(f"no Login Accepted within {timeout} s ({self.stop_reason})")
        return fetch.accepted

    def _login(self, sequence: int) -> SoupClientSession:
        return SoupClientSession(
            clock(),
            username=self.username,
            password=self.password,
            session=self.session,
            sequence=sequence,
            heartbeat_interval=self.heartbeat_interval,
            dead_after=self.dead_after,
        )

    async def _run(self, timeout: float, fetch: _Fetch) -> _Fetch:
        loop = asyncio.get_running_loop()
        self.stop_reason = "timeout"
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: fetch, self.host, self.port)
                closed = await fetch.done
            self.stop_reason = _explain(closed, fetch)
        except TimeoutError:
            pass
        finally:
            fetch.stop()
        return fetch


def _explain(closed: Closed, fetch: _Fetch) -> str:
    if closed.cause is CloseCause.LOGOUT and fetch.delivered >= fetch.last:
        return "complete"
    if closed.cause is CloseCause.LOGOUT:
        return f"logged out: the server starts at {fetch.accepted}"
    if closed.cause is CloseCause.LOCAL and fetch.debug:
        return f"{closed.detail}: {fetch.debug.decode('ascii', 'replace')}"
    return f"{closed.cause.value}: {closed.detail}"
