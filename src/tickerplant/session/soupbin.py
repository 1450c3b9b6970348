"""SoupBinTCP sessions, sans-I/O: one machine per side of a connection.

In the shape of aioquic's connection: the I/O layer hands in bytes with :meth:`receive_data` and
the clock with :meth:`handle_timer`, calls the API (``accept``, ``send_sequenced``, ``logout``...),
and after every call drains :meth:`data_to_send`, :meth:`next_event` and re-arms its timer at
:meth:`get_timer`. ``now`` always arrives as an argument; nothing here reads a clock or a socket.

Liveness is the spec's: a side that has sent nothing for ``heartbeat_interval`` sends a heartbeat,
and a side that has heard nothing for ``dead_after`` closes the link. Who broke the protocol
decides what happens: bytes from the peer that are not SoupBinTCP, or a packet it may not send
now, earn a Debug packet with the reason, a :class:`ProtocolViolated` event and a close; a
wrong call from our own side raises :class:`~tickerplant.errors.LocalProtocolError`.

State, all of it here: ``state`` (a :class:`State`), the framer's unread bytes, the outbox, the
event queue, when we last sent and last heard, and ``next_sequence``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from tickerplant.errors import LocalProtocolError, MalformedPacket
from tickerplant.ops.config import check
from tickerplant.receive.events import Batch
from tickerplant.wire.soupbintcp import (
    NOT_AUTHORIZED,
    PAD,
    SESSION_NOT_AVAILABLE,
    ClientHeartbeat,
    Debug,
    EndOfSession,
    Framer,
    LoginAccepted,
    LoginRejected,
    LoginRequest,
    LogoutRequest,
    Packet,
    ServerHeartbeat,
    Side,
    UnsequencedData,
    encode,
)

HEARTBEAT_INTERVAL = 1.0
DEAD_AFTER = 15.0
LOGIN_TIMEOUT = 5.0

Credentials = tuple[bytes, bytes] | Callable[[bytes, bytes], bool] | None


class State(Enum):
    AWAITING_LOGIN = "awaiting login"  # server: connected, no Login Request yet
    LOGIN_RECEIVED = "login received"  # server: credentials good, the application decides
    LOGGING_IN = "logging in"  # client: Login Request sent
    ACTIVE = "active"  # logged in: sequenced data and heartbeats flow
    CLOSED = "closed"


class CloseCause(Enum):
    LOGOUT = "logout"
    END_OF_SESSION = "end of session"
    LOGIN_REJECTED = "login rejected"
    LOGIN_TIMEOUT = "login timeout"
    DEAD_LINK = "dead link"  # nothing heard for dead_after seconds
    PROTOCOL_ERROR = "protocol error"  # the peer broke the protocol
    LOCAL = "closed locally"  # our application asked (a slow consumer, shutdown)


@dataclass(frozen=True, slots=True)
class LoginReceived:
    """Server: a login with good credentials for this session; answer with accept() or reject()."""

    username: bytes
    session: bytes
    sequence: int  # as requested: 0 = the next message generated
    # For an application that checks passwords itself (off its event loop); never shown.
    password: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """Client: Login Accepted; the next Sequenced Data packet is message ``sequence``."""

    session: bytes
    sequence: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """Client: Login Rejected; ``reason`` is ``A`` (not authorized) or ``S`` (no such session)."""

    reason: bytes


@dataclass(frozen=True, slots=True)
class UnsequencedReceived:
    message: bytes


@dataclass(frozen=True, slots=True)
class DebugReceived:
    text: bytes


@dataclass(frozen=True, slots=True)
class ProtocolViolated:
    """The peer broke the protocol; a :class:`Closed` follows."""

    reason: str


@dataclass(frozen=True, slots=True)
class Closed:
    """Always the last event: flush :meth:`data_to_send`, then close the connection."""

    cause: CloseCause
    detail: str


Event = (
    LoginReceived
    | LoggedIn
    | Rejected
    | Batch
    | UnsequencedReceived
    | DebugReceived
    | ProtocolViolated
    | Closed
)


class SoupSession:
    """What both sides share: framing, liveness, the outbox and the event queue."""

    def __init__(
        self, peer: Side, now: float, heartbeat: bytes, heartbeat_interval: float, dead_after: float
    ) -> None:
        check("heartbeat_interval", heartbeat_interval > 0, heartbeat_interval, "give seconds > 0")
        check("dead_after", dead_after > heartbeat_interval, dead_after,
              "give more seconds than heartbeat_interval")
        self.state = State.CLOSED
        self.next_sequence = 0
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self._framer = Framer(peer)
        self._heartbeat = heartbeat
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._last_sent = now
        self._last_heard = now

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        if self.closed or not data:
            return
        self._last_heard = now
        self._framer.feed(data)
        try:
            self._receive()
        except MalformedPacket as exc:
            self._protocol_error(str(exc))

    def _receive(self) -> None:
        while not self.closed and (packet := self._framer.next_packet()) is not None:
            self._handle(packet)

    def _handle(self, packet: Packet) -> None:
        raise NotImplementedError

    def handle_timer(self, now: float) -> None:
        if self.closed:
            return
        if now >= self._last_heard + self.dead_after:
            self._close(CloseCause.DEAD_LINK, f"nothing heard for {now - self._last_heard:.1f} s")
        elif (
            self.state is State.ACTIVE
            and not self._out
            and now >= self._last_sent + self.heartbeat_interval
        ):
            self._out.append(self._heartbeat)

    def get_timer(self) -> float | None:
        """The next moment :meth:`handle_timer` has something to do (None: closed)."""
        if self.closed:
            return None
        dead = self._last_heard + self.dead_after
        if self.state is State.ACTIVE:
            return min(dead, self._last_sent + self.heartbeat_interval)
        return dead

    def data_to_send(self, now: float) -> bytes:
        if not self._out:
            return b""
        self._last_sent = now
        data = b"".join(self._out)  # one chunk comes back as itself, uncopied
        self._out.clear()
        return data

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def send_debug(self, text: bytes) -> None:
        if self.closed:
            raise LocalProtocolError("the session is closed")
        self._out.append(encode(Debug(text)))

    def close(self, detail: str) -> None:
        """Close from our side (a slow consumer, shutdown); a no-op once closed."""
        if not self.closed:
            self._close(CloseCause.LOCAL, detail)

    def _require(self, *states: State) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"not allowed in state {self.state.value}")

    def _protocol_error(self, reason: str) -> None:
        self._out.append(encode(Debug(reason.encode("ascii", "replace"))))
        self._events.append(ProtocolViolated(reason))
        self._close(CloseCause.PROTOCOL_ERROR, reason)

    def _close(self, cause: CloseCause, detail: str) -> None:
        self.state = State.CLOSED
        self._events.append(Closed(cause, detail))


class SoupServerSession(SoupSession):
    """The server's side of one connection.

    ``credentials`` is a fixed (username, password) pair, a callable judging a pair, or None to
    let anyone in. A login for another session than ``session`` (blank asks for the current one)
    is rejected with ``S``, bad credentials with ``A``; a good one raises :class:`LoginReceived`
    and the application answers with :meth:`accept` (choosing the first sequence number) or
    :meth:`reject`.
    """

    def __init__(
        self,
        session: bytes,
        now: float,
        credentials: Credentials = None,
        *,
        login_timeout: float = LOGIN_TIMEOUT,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        dead_after: float = DEAD_AFTER,
    ) -> None:
        super().__init__(
            Side.CLIENT, now, encode(ServerHeartbeat()), heartbeat_interval, dead_after
        )
        self.session = session.strip(PAD)
        self.state = State.AWAITING_LOGIN
        self.username = b""
        self._credentials = credentials
        self._login_deadline = now + login_timeout

    def accept(self, sequence: int) -> None:
        """Accept the login; ``sequence`` is the number of the first Sequenced Data to follow."""
        self._require(State.LOGIN_RECEIVED)
        self._out.append(encode(LoginAccepted(self.session, sequence)))
        self.next_sequence = sequence
        self.state = State.ACTIVE

    def reject(self, reason: bytes) -> None:
        self._require(State.LOGIN_RECEIVED)
        self._reject(reason)

    def send_sequenced(self, packets: bytes, count: int) -> None:
        """Queue ``count`` messages already framed as Sequenced Data (``encode_sequenced``).

        Taking them framed lets a server encode a run once and hand the same bytes to every
        subscriber.
        """
        self._require(State.ACTIVE)
        self._out.append(packets)
        self.next_sequence += count

    def end_session(self) -> None:
        """Send End of Session and close: the session is over, nothing more will follow."""
        self._require(State.ACTIVE)
        self._out.append(encode(EndOfSession()))
        self._close(CloseCause.END_OF_SESSION, f"session over at {self.next_sequence}")

    def handle_timer(self, now: float) -> None:
        if self.state is State.AWAITING_LOGIN:
            if now >= self._login_deadline:
                self._out.append(encode(Debug(b"no Login Request in time")))
                self._close(CloseCause.LOGIN_TIMEOUT, "no Login Request in time")
            return
        super().handle_timer(now)

    def get_timer(self) -> float | None:
        if self.state is State.AWAITING_LOGIN:
            return self._login_deadline
        return super().get_timer()

    def _handle(self, packet: Packet) -> None:
        if isinstance(packet, LoginRequest):
            if self.state is not State.AWAITING_LOGIN:
                self._protocol_error("a second Login Request")
            else:
                self._login(packet)
        elif isinstance(packet, LogoutRequest):
            self._close(CloseCause.LOGOUT, "the client logged out")
        elif isinstance(packet, Debug):
            self._events.append(DebugReceived(packet.text))
        elif self.state is State.AWAITING_LOGIN:
            self._protocol_error(f"{type(packet).__name__} before a Login Request")
        elif isinstance(packet, UnsequencedData):
            self._events.append(UnsequencedReceived(packet.message))
        # a Client Heartbeat only proves the link alive, which receive_data already noted

    def _login(self, login: LoginRequest) -> None:
        if not self._authorized(login.username, login.password):
            self._reject(NOT_AUTHORIZED)
        elif login.session not in (b"", self.session):
            self._reject(SESSION_NOT_AVAILABLE)
        else:
            self.username = login.username
            self.state = State.LOGIN_RECEIVED
            self._events.append(
                LoginReceived(login.username, login.session, login.sequence, login.password)
            )

    def _authorized(self, username: bytes, password: bytes) -> bool:
        if self._credentials is None:
            return True
        if callable(self._credentials):
            return self._credentials(username, password)
        user, word = self._credentials
        return (username, password) == (user.strip(PAD), word.strip(PAD))

    def _reject(self, reason: bytes) -> None:
        self._out.append(encode(LoginRejected(reason)))
        self._close(CloseCause.LOGIN_REJECTED, f"rejected with {reason!r}")


class SoupClientSession(SoupSession):
    """The client's side: logs in at construction and counts sequenced messages from Login Accepted.

    Runs of Sequenced Data come out as :class:`Batch` events (first sequence, count, block
    stream), converted by one compiled pass per read, never one Python object per message.
    """

    def __init__(
        self,
        now: float,
        *,
        username: bytes = b"",
        password: bytes = b"",
        session: bytes = b"",
        sequence: int = 0,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        dead_after: float = DEAD_AFTER,
    ) -> None:
        super().__init__(
            Side.SERVER, now, encode(ClientHeartbeat()), heartbeat_interval, dead_after
        )
        self._out.append(encode(LoginRequest(username, password, session, sequence)))
        self.session = b""
        self.state = State.LOGGING_IN

    def send_unsequenced(self, message: bytes) -> None:
        """Unsequenced Data to the server (a request: the events stream's subscriptions)."""
        self._require(State.LOGGING_IN, State.ACTIVE)
        self._out.append(encode(UnsequencedData(message)))

    def logout(self) -> None:
        """Send Logout Request and close (the server closes its end on reading it)."""
        self._require(State.LOGGING_IN, State.ACTIVE)
        self._out.append(encode(LogoutRequest()))
        self._close(CloseCause.LOGOUT, "logged out")

    def _receive(self) -> None:
        framer = self._framer
        while not self.closed:
            if self.state is State.ACTIVE:
                count, blocks = framer.next_sequenced()
                if count:
                    self._events.append(Batch(self.next_sequence, count, blocks))
                    self.next_sequence += count
            packet = framer.next_packet()
            if packet is None:
                return
            self._handle(packet)

    def _handle(self, packet: Packet) -> None:
        # In the active state next_sequenced has consumed every S that next_packet could return.
        if isinstance(packet, Debug):
            self._events.append(DebugReceived(packet.text))
        elif isinstance(packet, EndOfSession):
            self._close(CloseCause.END_OF_SESSION, f"session over at {self.next_sequence}")
        elif isinstance(packet, ServerHeartbeat):
            pass  # proves the link alive, which receive_data already noted
        elif self.state is not State.LOGGING_IN:
            self._protocol_error(f"{type(packet).__name__} after Login Accepted")
        elif isinstance(packet, LoginAccepted):
            self.session = packet.session
            self.next_sequence = packet.sequence
            self.state = State.ACTIVE
            self._events.append(LoggedIn(packet.session, packet.sequence))
        elif isinstance(packet, LoginRejected):
            self._events.append(Rejected(packet.reason))
            self._close(CloseCause.LOGIN_REJECTED, f"rejected with {packet.reason!r}")
        else:
            self._protocol_error(f"{type(packet).__name__} before Login Accepted")
