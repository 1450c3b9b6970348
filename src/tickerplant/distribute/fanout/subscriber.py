"""One connection of a fan-out: its SoupBinTCP server session, its state (:mod:`.state`), its
place in the journal and what io said of its socket; and what it tells io."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from tickerplant.distribute.fanout.limits import Policy
from tickerplant.distribute.fanout.policy import Backlog, Stalled, Unreadable
from tickerplant.distribute.fanout.state import Phase, Step, delivering, move
from tickerplant.distribute.fanout.subscriptions import Subscription
from tickerplant.errors import InputError
from tickerplant.session.soupbin import Event, LoginReceived, SoupServerSession

if TYPE_CHECKING:
    from tickerplant.distribute.fanout.core import FanOut

H = TypeVar("H")


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The login was accepted: Sequenced Data follows from message ``first``. ``unsent``: the
    bytes its kernel may hold unsent (TCP_NOTSENT_LOWAT)."""

    username: bytes
    first: int
    unsent: int


@dataclass(frozen=True, slots=True)
class Dropped:
    """Closed by the policy, told ``reason`` in a Debug packet: a slow consumer, or (not
    ``slow``) one owed what could not be read back; its :class:`Closed` follows."""

    reason: str
    slow: bool = True


@dataclass(frozen=True, slots=True)
class Lagging:
    """A slow consumer kept under its policy (conflate or skip) rather than cut, for ``reason``."""

    policy: Policy
    reason: str


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """io: check ``password`` against ``stored`` off the loop, then call
    :meth:`Subscriber.password_checked`."""

    stored: str = field(repr=False)
    password: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class BuildImages:
    """io: run ``build`` off the loop (it encodes a state already taken), then call
    :meth:`Subscriber.images_built` with ``number`` and what it returned."""

    number: int
    build: Callable[[], bytes] = field(repr=False)


# What a subscriber tells io: its session's events, the login as accepted, a drop (to log), a
# password to check, images to encode.
SubscriberEvent = Event | Subscribed | Dropped | Lagging | CheckPassword | BuildImages


class Subscriber(Generic[H]):
    """Driven by io exactly like a session (``receive_data``, ``handle_timer``, ``get_timer``,
    ``data_to_send``, ``next_event``), ``now`` always an argument. Besides, io only says what the
    socket says: full (:meth:`pause`), able to take more (:meth:`resume`), the bytes it holds
    (:meth:`held`, and :meth:`report_backlog` after a write), gone (:meth:`connection_lost`); and
    answers what it was asked (:meth:`password_checked`, :meth:`images_built`). Once it is closed,
    :attr:`reset_after` says how long after its FIN io resets a connection still open.

    Its state changes only by :meth:`move`, through the table in :mod:`.state`; the rest of what
    it holds are the fan-out's quantities (its cursor, its turn) and io's reports."""

    # Thousands of them, each looked at several times a publish: no __dict__.
    __slots__ = ("active", "address", "backlog", "budget", "cursor", "events", "fanout",
                 "fell_at", "handle", "heard_at", "login", "paused_at", "phase", "policy",
                 "pushed",
                 "queued_at", "reset_after", "round_at", "session", "subscription",
                 "turn_at", "waiting")  # fmt: skip

    def __init__(self, fanout: FanOut[H], handle: H, session: SoupServerSession,
                 address: str) -> None:  # fmt: skip
        self.handle = handle  # io's own object for the connection; the core never looks inside
        self.session = session
        self.address = address  # the peer's, for limits and throttling
        self.fanout = fanout
        self.phase = Phase.AWAITING_LOGIN
        # Logged in and not closed: worth sending messages to. The phase says so; kept by
        # move() rather than asked of it, as it is looked at several times a write.
        self.active = False
        self.policy = Policy.DISCONNECT  # its user's, set at login
        self.subscription = Subscription()
        self.cursor = 0  # the sequence number of the next message to send
        self.login: LoginReceived | None = None  # awaiting its password check
        self.heard_at = 0.0  # when what it sent last arrived: a login is judged then
        self.events: deque[SubscriberEvent] = deque()
        # Closed: how long after its FIN io resets a connection the client has not closed
        self.reset_after = fanout.limits.linger
        # What io said of its socket.
        self.backlog = 0  # bytes io holds beyond the socket, as it last reported
        self.paused_at: float | None = None  # its socket filled: no catching up until resume()
        # Its turns at the journal (delivery's).
        self.budget = 0  # bytes the current catch-up turn may still write
        self.turn_at: float | None = None  # a conflated round's turn is due then
        self.waiting = False  # in the delivery's queue for a turn
        # Off the push path because its socket filled: the journal's bytes before its cursor
        # (what it lacks is the rest); None on the push path, or catching up from its login.
        self.fell_at: int | None = None
        self.round_at = 0.0  # conflated: when its next round may go
        self.pushed = False  # live bytes queued that the next backlog report is judged on
        self.queued_at: float | None = None  # the publish that gave it something to write

    def move(self, step: Step) -> None:
        self.phase = move(self.phase, step)
        if self.phase is not Phase.CATCHING_UP:
            self.fell_at = None  # (live again, or the policy has it)
        active = delivering(self.phase)
        if active != self.active:  # what io holds for it counts toward max_queued while active
            fanout = self.fanout
            fanout.queued.bytes += self.backlog if active else -self.backlog
            if active:
                fanout.delivering[self] = None
                fanout.delivery.join(self)
            else:
                del fanout.delivering[self]
                fanout.delivery.leave(self)
            self.active = active

    @property
    def live(self) -> bool:
        """At the journal's end with nothing held back: the next publish is pushed to it."""
        return self.phase is Phase.LIVE and not self.subscription.imaging

    @property
    def paused(self) -> bool:
        """The socket is full: no catching up until :meth:`resume`."""
        return self.paused_at is not None

    @property
    def imaging(self) -> bool:
        return self.subscription.imaging

    @property
    def closed(self) -> bool:
        return self.session.closed

    # --- driven by io exactly like a session ------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        self.heard_at = now
        self.session.receive_data(data, now)
        self.fanout.absorb(self)

    def handle_timer(self, now: float) -> None:
        fanout = self.fanout
        if self.turn_at is not None and now >= self.turn_at:
            self.turn_at = None
            fanout.delivery.turn(self, now)
        if self.paused_at is not None and self.active:
            fanout.judge(self, Stalled(self.paused_at, now))
        self.session.handle_timer(now)
        fanout.absorb(self)

    def get_timer(self) -> float | None:
        stalled = None
        if self.paused_at is not None and self.active:
            stalled = self.paused_at + self.fanout.limits.write_deadline
        timers = [t for t in (self.session.get_timer(), self.turn_at, stalled) if t is not None]
        return min(timers) if timers else None

    def data_to_send(self, now: float) -> bytes:
        """What to write next; call again after writing it, until it returns nothing.

        Catching up, each call adds at most one chunk, so io stops pulling the moment its socket
        is full (:meth:`pause`) rather than the core guessing how much it would take.
        """
        delivery = self.fanout.delivery
        if self.cursor < delivery.published or delivery.ending:  # else only the outbox to send
            try:
                self.fanout.pull(self, now)
            except InputError as err:  # the journal's file: what the disk changed is not served
                self.fanout.judge(self, Unreadable(str(err)))
        data = self.session.data_to_send(now)
        if data and self.queued_at is not None:
            self.fanout.delivery.latency.add(max(0.0, now - self.queued_at))
            self.queued_at = None
        return data

    def password_checked(self, ok: bool, now: float) -> None:
        """io's answer to :class:`CheckPassword` (moot if the connection went meanwhile)."""
        self.fanout.checked(self, ok, now)

    def images_built(self, number: int, blocks: bytes) -> None:
        """io's answer to :class:`BuildImages` ``number``: its image blocks. They go in the
        order asked; the last sent, what was published meanwhile follows, in turns."""
        self.fanout.delivery.images(self, self.subscription.built(number, blocks))

    def next_event(self) -> SubscriberEvent | None:
        return self.events.popleft() if self.events else None

    def close(self, detail: str) -> None:
        """Close from our side (shutdown); a no-op once closed."""
        self.session.close(detail)
        self.fanout.absorb(self)

    # --- what io says of the socket ---------------------------------------------------------

    def pause(self, now: float) -> None:
        """The socket is full: what we write waits in io until :meth:`resume`; the delivery
        parks it."""
        if self.paused_at is None:
            self.paused_at = now
            if self.active:
                self.fanout.delivery.park(self)

    def resume(self) -> None:
        """The socket can take more: it waits for a new catch-up turn."""
        if self.paused_at is not None and self.active:
            self.fanout.delivery.unpark(self)
        self.paused_at = None
        self.fanout.delivery.wait_turn(self)

    def held(self, size: int) -> None:
        """io holds ``size`` bytes for it beyond the socket now (before it asks what to write:
        a conflated round waits for the one before to be gone)."""
        self._hold(size)

    def report_backlog(self, size: int, now: float) -> list[Subscriber[H]]:
        """io holds ``size`` bytes for it beyond the socket, just after a write. Returns the
        other subscribers the policy closed meanwhile (the server's queue was over its budget
        and they held the most): io services them, as their own events are due."""
        self._hold(size)
        fanout = self.fanout
        if self.pushed:
            self.pushed = False
            if size and self.active:  # nothing held is nobody's backlog
                fanout.judge(self, Backlog(size))
        if fanout.queued.bytes > fanout.limits.max_queued:
            return [s for s in fanout.over_budget() if s is not self]
        return []

    def _hold(self, size: int) -> None:
        grew = size > self.backlog
        if self.active:
            self.fanout.queued.bytes += size - self.backlog
        self.backlog = size
        if grew and self.paused_at is not None and self.active:  # (a heartbeat, a Debug packet)
            self.fanout.delivery.watch(self)

    def connection_lost(self) -> None:
        """The connection is gone: forget the subscriber (closing its session if still open)."""
        self.close("connection lost")
        self.fanout.left(self)
