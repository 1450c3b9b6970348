"""Fan-out of one session's journal to many SoupBinTCP subscribers, sans-I/O.

A :class:`FanOut` holds the journal, the subscribers and the policy. Each :class:`Subscriber` is
one connection's SoupBinTCP server session plus its place in the journal, and io drives it exactly
like a session (``receive_data``, ``handle_timer``, ``get_timer``, ``data_to_send``,
``next_event``), ``now`` always an argument. Besides, io only says what the socket says: full
(:meth:`Subscriber.pause`), able to take more (:meth:`Subscriber.resume`), the bytes it holds after
a write (:meth:`Subscriber.report_backlog`), gone (:meth:`Subscriber.connection_lost`). In return
:meth:`FanOut.publish` and :meth:`FanOut.end_session` name the subscribers with something to write
(io's own object for each is :attr:`Subscriber.handle`), and :attr:`Subscriber.abort_at` says
when to reset a dropped client's connection.

The policy, all of it here:

- *Live*: logged in and caught up. :meth:`FanOut.publish` encodes what the journal gained once
  and hands the same bytes to every live subscriber: per subscriber one append per batch, no work
  per message.
- *Catching up*: a subscriber behind pulls the journal in chunks as its socket takes them, at most
  ``turn_bytes`` a turn, so one client draining as fast as we write cannot keep the others (and
  the timers) waiting; its next turn is a timer due at once.
- *Slow consumer*: the live stream is pushed whatever the socket says (what catching up pulls is
  paced by the socket), so only a push can pile bytes up, and the backlog io reports after one is
  judged: past ``max_backlog`` the subscriber is sent a Debug packet saying why and closed, and
  its connection is reset ``linger`` seconds later. :meth:`FanOut._slow_consumer` chooses among
  the per-user policies (disconnect, conflate, skip).
- *Imaging* (events, symbols added at the live end): their state is taken at once and encoded
  off the loop (:class:`BuildImages`, answered by :meth:`Subscriber.images_built`); until every
  image asked for has gone, in the order asked, the subscriber is sent nothing else and what is
  published meanwhile waits in the journal for it, as for one catching up.
- *Conflated* (events, a ``conflate`` user): its kernel is asked to hold at most
  ``conflate_unsent`` bytes unsent (io sets TCP_NOTSENT_LOWAT, told by :class:`Subscribed`), so
  that what cannot go waits in io where it is seen; past that much held it is a slow consumer,
  and gets rounds (:func:`~tickerplant.session.selection.conflate` of everything since its
  last) every ``conflate_interval`` at most, each once io holds nothing of the one before, until
  an interval passes with nothing new. What is stale is then bounded by those few bytes and
  the client's own buffers, not by the stream's rate times the kernel's.

Login sequence numbers: 0 starts with the next message published; a number beyond the journal's
end is accepted and served once published (the spec's "(re)start from that number"; rejecting
would make a client that knows the future sequence number poll for it). After
:meth:`FanOut.end_session` every subscriber is sent End of Session as soon as it has caught up,
and later logins are still served their replay, then End of Session.
"""

from __future__ import annotations

import bisect
import copy
import enum
import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from tickerplant.ops.config import check
from tickerplant.session.journal import Journal
from tickerplant.session.latency import Latencies
from tickerplant.session.selection import conflate, select
from tickerplant.session.soupbin import (
    DEAD_AFTER,
    HEARTBEAT_INTERVAL,
    LOGIN_TIMEOUT,
    CloseCause,
    Closed,
    Credentials,
    Event,
    LoginReceived,
    ProtocolViolated,
    SoupServerSession,
    State,
    UnsequencedReceived,
)
from tickerplant.wire import events as ev
from tickerplant.wire.soupbintcp import NOT_AUTHORIZED, PAD, encode_sequenced

H = TypeVar("H")

MAX_BACKLOG = 16 << 20  # bytes a live subscriber may leave unread before it is dropped
CHUNK_MESSAGES = 16384  # read from the journal per catch-up write: ~0.5 MiB of ITCH
# What one catch-up turn may write before it yields: 8 MiB held the loop up to 36 ms (a client
# reading from 1 on loopback never fills its socket), 1 MiB about 5 (bench/loop_lag.py).
TURN_BYTES = 1 << 20
HIGH_WATER = 2 << 20  # io's transport asks us to stop writing above this, resumes below a quarter
LINGER = 2.0  # seconds a dropped client gets to read the Debug packet before the reset
PUBLISH_BYTES = 16 << 20  # ~15 ms of writes on this machine
# A slow consumer under ``conflate`` gets a round (everything published since its last, each
# symbol's latest BBO, its trades summarised) at most this often, and only once its socket has
# taken the round before: what its kernel buffers hold stays a few rounds, not seconds of them.
CONFLATE_INTERVAL = 0.1
CONFLATE_UNSENT = 16 << 10  # bytes a conflate user's kernel may hold unsent, and io beyond it
ROUND_MESSAGES = 1 << 17  # read from the journal for one round at most (~7 MB of records)
PUBLISHES_KEPT = 4096  # (number, time) of recent publishes: how stale a conflated client is
FAILURES_KEPT = 4096  # addresses whose failed logins are remembered
SYMBOL = 8  # bytes per symbol in a subscription request: ITCH's Stock field, space-padded


class Policy(enum.Enum):
    """What becomes of a slow consumer (one per user, from the config)."""

    DISCONNECT = "disconnect"  # told why and closed; it resumes from the journal
    CONFLATE = "conflate"  # events: while it lags, only each symbol's latest BBO is sent
    SKIP = "skip"  # events: moved to live, told the exact range it skipped


class Catalog(Protocol):
    """What an events stream's fan-out asks of the books (the owner keeps both in step: the
    state it reports is the state after the journal's last record)."""

    def locate(self, symbol: bytes) -> int | None:
        """The locate of ``symbol`` (8 bytes, space-padded) today, None if unknown."""
        ...

    def images(self, locates: list[int]) -> Callable[[], bytes]:
        """``locates``'s current state, taken now; the function returned encodes it as image
        records (wire.events blocks) from what was taken, so it may run on a thread."""
        ...


@dataclass(frozen=True, slots=True)
class FanOutLimits:
    max_backlog: int = MAX_BACKLOG
    chunk_messages: int = CHUNK_MESSAGES
    turn_bytes: int = TURN_BYTES
    linger: float = LINGER
    # A socket that takes nothing this long while we have bytes for it (io paused writing) is a
    # slow consumer too, however little it holds: a dead reader must not keep its place.
    write_deadline: float = 10.0
    max_connections: int = 10_000  # open at once, logged in or not
    max_per_address: int = 1_000
    failed_logins: int = 5  # from one address within throttle seconds: then it is refused
    throttle: float = 10.0
    max_checks: int = 8  # password checks under way at once (each ~16 MiB and tens of ms)
    # What one publish may push in all: past it, the live subscribers left pull the batch in
    # catch-up turns from the next loop iteration, so that a burst to thousands of clients does
    # not hold the loop (and the feed it shares) for one long call.
    publish_bytes: int = PUBLISH_BYTES
    conflate_interval: float = CONFLATE_INTERVAL
    conflate_unsent: int = CONFLATE_UNSENT

    def __post_init__(self) -> None:
        for name in ("max_backlog", "chunk_messages", "turn_bytes", "max_connections",
                     "max_per_address", "failed_logins", "max_checks", "publish_bytes",
                     "conflate_unsent"):
            check(name, getattr(self, name) >= 1, getattr(self, name), "give 1 or more")
        for name in ("linger", "throttle", "conflate_interval"):
            check(name, getattr(self, name) >= 0, getattr(self, name), "give seconds, 0 or more")
        check("write_deadline", self.write_deadline > 0, self.write_deadline, "give seconds > 0")


@dataclass(slots=True)
class FanOutCounters:
    connections: int = 0
    logins: int = 0
    rejected: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0  # of Sequenced Data
    slow_consumers: int = 0  # cut: over max_backlog or past write_deadline
    conflating: int = 0  # slow consumers moved to conflation (policy conflate)
    conflated_updates: int = 0  # records they were not sent as themselves (merged away)
    conflated_rounds: int = 0  # rounds sent to them
    skips: int = 0  # slow consumers moved to live (policy skip)
    skipped_messages: int = 0  # the messages they skipped
    subscriptions: int = 0  # symbol subscription requests served
    deferred: int = 0  # live pushes left to catch-up turns (past publish_bytes, or a burst)
    refused: int = 0  # connections over a limit, throttled or not allowed from their address
    protocol_errors: int = 0
    timeouts: int = 0  # login timeouts and dead links
    sessions_ended: int = 0  # End of Session sent


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The login was accepted: Sequenced Data follows from message ``first``. ``unsent``: the
    bytes its kernel may hold unsent (TCP_NOTSENT_LOWAT; None: the kernel's own)."""

    username: bytes
    first: int
    unsent: int | None = None


@dataclass(frozen=True, slots=True)
class Dropped:
    """A slow consumer, told ``reason`` in a Debug packet; its :class:`Closed` follows."""

    reason: str


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
    """One connection: its session, its cursor in the journal, what io said of its socket."""

    def __init__(self, fanout: FanOut[H], handle: H, session: SoupServerSession) -> None:
        self.handle = handle  # io's own object for the connection; the core never looks inside
        self.session = session
        self.cursor = 0  # the sequence number of the next message to send
        self.backlog = 0  # bytes io holds beyond the socket, as it last reported
        self.paused = False  # the socket is full: no catching up until resume()
        self.address = ""  # the peer's, for limits and throttling
        self._heard_at = 0.0
        self._login: LoginReceived | None = None  # awaiting its password check
        self._checked = False  # its password was checked (and counted as it started)
        self._paused_at: float | None = None
        self.abort_at: float | None = None  # io resets the connection then (a dropped client)
        # Closed: how long after its FIN io resets a connection the client has not closed
        self.reset_after = LINGER
        self._fanout = fanout
        self._events: deque[SubscriberEvent] = deque()
        self._budget = 0  # bytes the current catch-up turn may still write
        self._turn_at: float | None = None  # the next turn is due: the last one ran out
        self._pushed = False  # live bytes queued that the next backlog report is judged on
        self._queued_at: float | None = None  # the publish that gave it something to write
        # events streams: the symbols asked for (sorted locates; None: all), the same as a key
        # shared by every subscriber asking for them, and the locates whose image was sent at
        # a sequence number the cursor has not reached (their records before it are not sent)
        self.locates: np.ndarray | None = None
        self.group: bytes | None = None
        self._since: dict[int, int] = {}
        self.policy = Policy.DISCONNECT  # its user's, set at login
        self.lagging: Policy | None = None  # a slow consumer kept under its policy
        # Conflated: when its next round may go, and whether it stays conflated until a round
        # finds nothing new (a slow consumer) or only until it has caught up (pushed past the
        # publish budget by the server's own limit, not by its slowness).
        self._round_at = 0.0
        self._until_quiet = False
        # Images asked for (BuildImages numbers from 0), those io has built and not yet sent,
        # and the number of the next to send: they go in the order asked, before anything else.
        self._images_asked = 0
        self._images_built: dict[int, bytes] = {}
        self._images_sent = 0

    @property
    def active(self) -> bool:
        """Logged in and not closed: worth sending messages to."""
        return self.session.state is State.ACTIVE

    @property
    def live(self) -> bool:
        """Caught up: the next publish is pushed to it."""
        return (self.active and self.cursor == self._fanout.published and self.lagging is None
                and not self.imaging)  # fmt: skip

    @property
    def imaging(self) -> bool:
        """Images asked for are still being built: nothing else goes until they have."""
        return self._images_sent < self._images_asked

    @property
    def closed(self) -> bool:
        return self.session.closed

    # --- driven by io exactly like a session ------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        self._heard_at = now  # when a login it carried was judged
        self.session.receive_data(data, now)
        self._fanout._absorb(self)

    def handle_timer(self, now: float) -> None:
        if self._turn_at is not None and now >= self._turn_at:
            self._turn_at = None
            self._budget = self._fanout.limits.turn_bytes
            if (self.lagging is Policy.CONFLATE and now >= self._round_at
                    and self.cursor >= self._fanout.published):  # fmt: skip
                self.lagging = None  # a round's interval with nothing new: live again
                self._until_quiet = False
        stuck = self._stuck_until()
        if stuck is not None and now >= stuck and self.active:
            waited = now - (self._paused_at or now)
            reason = f"slow consumer: nothing taken for {waited:.1f} s"
            self._fanout._slow_consumer(self, now, reason, dead=True)
        self.session.handle_timer(now)
        self._fanout._absorb(self)

    def get_timer(self) -> float | None:
        timers = [t for t in (self.session.get_timer(), self._turn_at, self._stuck_until())
                  if t is not None]
        return min(timers) if timers else None

    def _stuck_until(self) -> float | None:
        if self._paused_at is None or not self.active:
            return None
        return self._paused_at + self._fanout.limits.write_deadline

    def data_to_send(self, now: float) -> bytes:
        """What to write next; call again after writing it, until it returns nothing.

        Catching up, each call adds at most one chunk, so io stops pulling the moment its socket
        is full (:meth:`pause`) rather than the core guessing how much it would take.
        """
        fanout = self._fanout
        if self.cursor < fanout._published or fanout._ending:  # else only the outbox to send
            fanout._catch_up(self, now)
        data = self.session.data_to_send(now)
        if data and self._queued_at is not None:
            fanout.delivery.add(max(0.0, now - self._queued_at))
            self._queued_at = None
        return data

    def password_checked(self, ok: bool, now: float) -> None:
        """io's answer to :class:`CheckPassword` (moot if the connection went meanwhile)."""
        login, self._login = self._login, None
        if login is None:
            return
        fanout = self._fanout
        fanout._checking -= 1
        self._checked = True
        if self.session.state is not State.LOGIN_RECEIVED:
            return
        self._heard_at = now
        if ok:
            fanout._failures.pop(self.address, None)
            fanout._accept(self, login)
        else:
            self.session.reject(NOT_AUTHORIZED)
        fanout._absorb(self)

    def images_built(self, number: int, blocks: bytes) -> None:
        """io's answer to :class:`BuildImages` ``number``: its image blocks. They go in the
        order asked; the last sent, what was published meanwhile follows, in turns."""
        self._images_built[number] = blocks
        while self._images_sent in self._images_built:
            blocks = self._images_built.pop(self._images_sent)
            self._images_sent += 1
            if self.active:
                self._fanout._send_images(self, blocks)
        if not self.imaging:
            self._budget = self._fanout.limits.turn_bytes

    def next_event(self) -> SubscriberEvent | None:
        return self._events.popleft() if self._events else None

    def close(self, detail: str) -> None:
        """Close from our side (shutdown); a no-op once closed."""
        self.session.close(detail)
        self._fanout._absorb(self)

    # --- what io says of the socket ---------------------------------------------------------

    def pause(self, now: float) -> None:
        """The socket is full: what we write waits in io until :meth:`resume`."""
        self.paused = True
        if self._paused_at is None:
            self._paused_at = now

    def resume(self) -> None:
        """The socket can take more: a new catch-up turn starts."""
        self.paused = False
        self._paused_at = None
        self._budget = self._fanout.limits.turn_bytes

    def held(self, size: int) -> None:
        """io holds ``size`` bytes for it beyond the socket now (before it asks what to write:
        a conflated round waits for the one before to be gone)."""
        self.backlog = size

    def report_backlog(self, size: int, now: float) -> None:
        """io holds ``size`` bytes for it beyond the socket, just after a write."""
        self.backlog = size
        if self._pushed:
            self._pushed = False
            limits = self._fanout.limits
            cap = limits.max_backlog
            if self._fanout.catalog is not None and self.policy is Policy.CONFLATE:
                cap = min(cap, limits.conflate_unsent)  # it would rather have rounds than wait
            if self.active and size > cap:
                reason = f"slow consumer: {size} bytes unsent, over the {cap} cap"
                self._fanout._slow_consumer(self, now, reason)

    def connection_lost(self) -> None:
        """The connection is gone: forget the subscriber (closing its session if still open)."""
        self.close("connection lost")
        self._fanout._left(self)


class FanOut(Generic[H]):
    """SoupBinTCP subscriptions to ``journal``; ``credentials`` as :class:`SoupServerSession`.

    The owner appends to the journal and then calls :meth:`publish`.
    """

    def __init__(
        self,
        journal: Journal,
        credentials: Credentials = None,
        limits: FanOutLimits | None = None,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        dead_after: float = DEAD_AFTER,
        login_timeout: float = LOGIN_TIMEOUT,
        local_only: bool = False,
        users: Mapping[bytes, str] | None = None,
        catalog: Catalog | None = None,
        policies: Mapping[bytes, Policy] | None = None,
        policy: Policy = Policy.DISCONNECT,
    ) -> None:
        # An events stream's: its records are wire.events blocks, clients may narrow them to
        # symbols, and slow consumers may be conflated or skipped (elsewhere they are cut).
        self.catalog = catalog
        self.policies = dict(policies or {})  # user name -> policy; others get ``policy``
        self.policy = policy
        # Users' password hashes (scrypt, see tickerplant.ops.passwords): a login names one and
        # io checks its password off the loop (CheckPassword); None: ``credentials`` decide.
        self.users = users
        # With nobody's credentials checked, only this host's clients are served.
        self.local_only = local_only
        self.limits = limits if limits is not None else FanOutLimits()
        self._credentials = credentials
        self._timing = (heartbeat_interval, dead_after, login_timeout)
        # The server's, whatever the session: what it counted, whom it throttles, and how many
        # connections each address holds.
        self.counters = FanOutCounters()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._per_address: dict[str, int] = {}
        self._begin(journal)

    def _begin(self, journal: Journal) -> None:
        """What belongs to the session of ``journal``: its subscribers and where they stand."""
        self.journal = journal
        self._checking = 0  # password checks io is running
        # From the publish that gave a subscriber something to write to the moment io took the
        # first of it for the socket: the loop's delay, publish budgets and catch-up turns.
        self.delivery = Latencies()
        # How stale a conflated slow consumer's picture was as each round went: from the
        # publish of the oldest record it had not been sent to the round.
        self.staleness = Latencies()
        self._publishes: deque[tuple[int, float]] = deque(maxlen=PUBLISHES_KEPT)
        self._subscribers: dict[Subscriber[H], None] = {}  # insertion-ordered set
        self._published = journal.next_sequence
        self._ending = False
        self._rotation = 0  # who is pushed first: the next publish starts one further on
        # Catch-up chunks computed this publish, shared by subscribers at the same place asking
        # for the same: (group, cursor, messages, conflated) -> what _chunk returned
        self._shared: dict[tuple[bytes | None, int, int, bool],
                           tuple[int, int, int, bytes, int]] = {}  # fmt: skip

    @property
    def high_water(self) -> int:
        """io's write buffer above which its transport pauses: never above the backlog cap, so
        that a push over the cap always pauses it, and a slow consumer kept under its policy
        hears when it has drained (resume)."""
        return min(HIGH_WATER, self.limits.max_backlog)

    def successor(self, journal: Journal) -> FanOut[H]:
        """The fan-out of the next session's ``journal``: the same settings, and the same
        counters, throttle and per-address counts (they are the server's, not the session's).
        """
        new = copy.copy(self)
        new._begin(journal)
        return new

    def __len__(self) -> int:
        """Connections open now, logged in or not."""
        return len(self._subscribers)

    @property
    def subscribers(self) -> list[Subscriber[H]]:
        return list(self._subscribers)

    @property
    def ending(self) -> bool:
        """End of Session was called: the journal will not grow again."""
        return self._ending

    @property
    def published(self) -> int:
        """One past the last message published: where a login with sequence 0 starts."""
        return self._published

    def connect(self, handle: H, now: float, address: str = "") -> Subscriber[H]:
        """A new connection from ``address``, awaiting its Login Request; ``handle`` is io's,
        given back as is. One over a limit is told why (Debug) and closed at once."""
        heartbeat_interval, dead_after, login_timeout = self._timing
        session = SoupServerSession(
            self.journal.session,
            now,
            self._credentials,
            login_timeout=login_timeout,
            heartbeat_interval=heartbeat_interval,
            dead_after=dead_after,
        )
        subscriber = Subscriber(self, handle, session)
        subscriber.address = address
        refusal = self._refusal(address, now)
        self._subscribers[subscriber] = None
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self.counters.connections += 1
        if refusal is not None:
            self._refuse(subscriber, refusal)
            self._absorb(subscriber)
        return subscriber

    def _refusal(self, address: str, now: float) -> str | None:
        """Why a connection from ``address`` may not be served now (None: it may)."""
        limits = self.limits
        if self.local_only and not _loopback(address):
            return "no users are configured: only clients on the plant's host are served"
        if len(self._subscribers) >= limits.max_connections:
            return f"the server is full: {limits.max_connections} connections"
        if self._per_address.get(address, 0) >= limits.max_per_address:
            return f"too many connections from {address}: {limits.max_per_address} at most"
        return self._throttled(address, now)

    def _throttled(self, address: str, now: float) -> str | None:
        limits = self.limits
        failures = self._failures.get(address)
        if failures is not None:
            while failures and failures[0] <= now - limits.throttle:
                failures.popleft()
            if len(failures) >= limits.failed_logins:
                wait = failures[0] + limits.throttle - now
                return f"too many failed logins from {address}: try again in {wait:.0f} s"
        return None

    def _refuse(self, subscriber: Subscriber[H], reason: str) -> None:
        """Tell it why (Debug) and close: over a limit, throttled, or not served from there."""
        self.counters.refused += 1
        subscriber.session.send_debug(reason.encode("ascii"))
        subscriber.session.close(reason)

    def _failed_login(self, address: str, now: float) -> None:
        failures = self._failures.pop(address, None) or deque(maxlen=self.limits.failed_logins)
        failures.append(now)
        self._failures[address] = failures  # the most recent last
        if len(self._failures) > FAILURES_KEPT:
            self._failures.popitem(last=False)  # forget the address that failed longest ago

    def _left(self, subscriber: Subscriber[H]) -> None:
        if self._subscribers.pop(subscriber, False) is not False:
            left = self._per_address.get(subscriber.address, 1) - 1
            if left:
                self._per_address[subscriber.address] = left
            else:
                self._per_address.pop(subscriber.address, None)

    def publish(self, now: float) -> list[Subscriber[H]]:
        """Take in what the journal gained since the last call; returns the subscribers with
        something to write now."""
        old, new = self._published, self.journal.next_sequence
        if new <= old:
            return []
        live: list[Subscriber[H]] = []
        behind: list[Subscriber[H]] = []
        for subscriber in self._subscribers:
            if subscriber.active:
                (live if subscriber.live else behind).append(subscriber)
        self._published = new
        self._publishes.append((old, now))
        self._shared.clear()
        deferred: list[Subscriber[H]] = []
        if live and new - old <= self.limits.chunk_messages:
            count, blocks = self.journal.blocks(old, new - old)
            groups: dict[bytes | None, tuple[int, bytes]] = {}
            budget = self.limits.publish_bytes
            first = self._rotation % len(live)
            self._rotation += 1
            pushed: list[Subscriber[H]] = []
            for subscriber in live[first:] + live[:first]:
                if budget <= 0:
                    deferred.append(subscriber)
                    continue
                packets = groups.get(subscriber.group)
                if packets is None:  # once per group of subscribers asking for the same
                    mine = (count, blocks)
                    if subscriber.locates is not None:
                        mine = select(blocks, subscriber.locates)
                    packets = groups[subscriber.group] = (mine[0], encode_sequenced(mine[1]))
                self._send(subscriber, packets[1], packets[0], new)
                subscriber._pushed = True
                budget -= len(packets[1])
                pushed.append(subscriber)
            live = pushed
        else:
            deferred, live = live, []
        # Those catching up, waiting for a future sequence number, facing a burst too big to
        # push, or past this publish's budget pull it from the journal at their own pace, in
        # turns: the next is due at once, a timer, so it runs after the loop has looked around
        # (the feed it shares reads its lines) and no one publish does every client's work. A
        # conflate user who was live and is now behind (the server could not push it all) is
        # conflated until it has caught up, as a slow consumer is.
        self.counters.deferred += len(deferred)
        behind = [s for s in behind + deferred if s.cursor < new]
        for subscriber in behind:
            if subscriber._turn_at is None:
                subscriber._budget = 0
                subscriber._turn_at = 0.0
        for subscriber in deferred:
            if self.catalog is not None and subscriber.policy is Policy.CONFLATE:
                subscriber.lagging = subscriber.lagging or Policy.CONFLATE
        ready = live + behind
        for subscriber in ready:
            if subscriber._queued_at is None:
                subscriber._queued_at = now
        return ready

    def end_session(self) -> list[Subscriber[H]]:
        """End of Session to every subscriber once it has caught up; returns those ended now."""
        self._ending = True
        return [s for s in self._subscribers if self._maybe_end(s)]

    # --- the policy -------------------------------------------------------------------------

    def _absorb(self, subscriber: Subscriber[H]) -> None:
        """Act on what the session raised, then pass it on to io."""
        session, counters = subscriber.session, self.counters
        while (event := session.next_event()) is not None:
            if isinstance(event, LoginReceived):
                if session.state is not State.LOGIN_RECEIVED:
                    continue  # what followed the login in the same read already closed it
                if self.users is None:
                    self._accept(subscriber, event)
                    continue
                stored = self.users.get(event.username.strip(PAD))
                refusal = self._throttled(subscriber.address, subscriber._heard_at)
                if refusal is None and self._checking >= self.limits.max_checks:
                    refusal = "busy checking other logins: try again shortly"
                if refusal is not None:
                    self._refuse(subscriber, refusal)
                elif stored is None:
                    session.reject(NOT_AUTHORIZED)
                else:
                    # Slow on purpose (scrypt): io runs it off the loop. Counted as failed until
                    # it succeeds, so that logins in flight are throttled too.
                    self._checking += 1
                    self._failed_login(subscriber.address, subscriber._heard_at)
                    subscriber._login = event
                    subscriber._events.append(CheckPassword(stored, event.password))
                continue
            if isinstance(event, UnsequencedReceived):
                self._request(subscriber, event.message)
                continue
            if isinstance(event, ProtocolViolated):
                counters.protocol_errors += 1
            elif isinstance(event, Closed):
                # How long io waits, after its FIN, for the client to close before a reset: a
                # client at the end of the session (or logging out) may have a lot left to
                # read; one told why it is closed has a Debug packet to read.
                graceful = event.cause in (CloseCause.END_OF_SESSION, CloseCause.LOGOUT)
                limits = self.limits
                subscriber.reset_after = limits.write_deadline if graceful else limits.linger
                if event.cause is CloseCause.LOGIN_REJECTED:
                    counters.rejected += 1
                    if not subscriber._checked:  # a checked one was counted when it started
                        self._failed_login(subscriber.address, subscriber._heard_at)
                elif event.cause in (CloseCause.LOGIN_TIMEOUT, CloseCause.DEAD_LINK):
                    counters.timeouts += 1
                elif event.cause is CloseCause.END_OF_SESSION:
                    counters.sessions_ended += 1
            subscriber._events.append(event)

    def _accept(self, subscriber: Subscriber[H], login: LoginReceived) -> None:
        first = login.sequence or self._published
        subscriber.session.accept(first)
        subscriber.cursor = first
        subscriber._budget = self.limits.turn_bytes
        subscriber.policy = self.policies.get(login.username.strip(PAD), self.policy)
        self.counters.logins += 1
        conflated = self.catalog is not None and subscriber.policy is Policy.CONFLATE
        unsent = self.limits.conflate_unsent if conflated else None
        subscriber._events.append(Subscribed(login.username, first, unsent))
        if not login.sequence and subscriber.locates is not None:
            self._images(subscriber, subscriber.locates.tolist())  # from now: state first

    def _request(self, subscriber: Subscriber[H], message: bytes) -> None:
        """A subscription request (Unsequenced Data): ``+`` and 8-byte symbols adds them (the
        first ``+`` narrows the stream from every symbol to these), ``-`` and symbols removes
        them, ``*`` alone goes back to every symbol. Symbols added at the live end are sent
        their state first (images), then their updates; added by a client replaying from an
        earlier number (one resuming), their records from where it is."""
        session = subscriber.session
        op, body = message[:1], message[1:]
        if self.catalog is None:
            problem = "this stream takes no requests"
        elif op not in (b"+", b"-", b"*") or len(body) % SYMBOL or (op == b"*" and body):
            problem = "a subscription request is + or - then 8-byte symbols, or * alone"
        else:
            problem = ""
        if problem:
            self.counters.protocol_errors += 1
            session.send_debug(problem.encode("ascii"))
            session.close(problem)
            return
        assert self.catalog is not None
        self.counters.subscriptions += 1
        if op == b"*":
            subscriber.locates, subscriber.group, subscriber._since = None, None, {}
            return
        symbols = [body[i : i + SYMBOL] for i in range(0, len(body), SYMBOL)]
        found = {s: self.catalog.locate(s.ljust(SYMBOL)) for s in symbols}
        unknown = [s.decode("latin-1").strip() for s, loc in found.items() if loc is None]
        if unknown:
            text = f"unknown symbols (not in today's Stock Directory): {' '.join(unknown)}"
            session.send_debug(text[:200].encode("ascii", "replace"))
        chosen = {loc for loc in found.values() if loc is not None}
        had = set() if subscriber.locates is None else set(subscriber.locates.tolist())
        now = had | chosen if op == b"+" else had - chosen
        if op == b"-" and subscriber.locates is None:
            return  # removing from every symbol: nothing to narrow, say "+" first
        locates = np.array(sorted(now), dtype=np.uint16)
        subscriber.locates, subscriber.group = locates, locates.tobytes()
        for locate in had - now:
            subscriber._since.pop(locate, None)
        # One waiting for images is behind only for them: it was at the live end when it asked.
        at_end = subscriber.cursor >= self._published or subscriber.imaging
        if op == b"+" and subscriber.active and at_end:
            self._images(subscriber, sorted(chosen - had))

    def _images(self, subscriber: Subscriber[H], locates: list[int]) -> None:
        """The state of ``locates`` now (taken now, encoded by io off the loop), then their
        records from the next number on."""
        if not locates or self.catalog is None:
            return
        for locate in locates:
            subscriber._since[locate] = self._published
        build = self.catalog.images(locates)
        subscriber._events.append(BuildImages(subscriber._images_asked, build))
        subscriber._images_asked += 1

    def _send_images(self, subscriber: Subscriber[H], blocks: bytes) -> None:
        packets = encode_sequenced(blocks)
        subscriber.session.send_sequenced(packets, len(blocks) // ev.BLOCK_SIZE)
        self.counters.bytes_sent += len(packets)

    def _catch_up(self, subscriber: Subscriber[H], now: float) -> None:
        """One chunk from the journal, if it is behind and its socket and its turn allow."""
        if not subscriber.active or subscriber.imaging:
            return
        if subscriber.lagging is Policy.SKIP and not subscriber.paused:
            self._skip(subscriber)
        # Until a chunk has something for it: a narrowed subscriber may want none of one.
        while subscriber.cursor < self._published and not subscriber.paused:
            if subscriber._budget <= 0:
                if subscriber._turn_at is None:
                    subscriber._turn_at = now  # yield: the next turn once io has looked around
                return
            at = subscriber.cursor
            conflating = subscriber.lagging is Policy.CONFLATE
            if conflating and not self._round_due(subscriber, now):
                return
            step = ROUND_MESSAGES if conflating else self.limits.chunk_messages
            want = min(step, self._published - at)
            key = None if subscriber._since else (subscriber.group, at, want, conflating)
            chunk = self._shared.get(key) if key is not None else None
            if chunk is None:
                chunk = self._chunk(subscriber, at, want, conflating)
                if key is not None:
                    self._shared[key] = chunk
            count, read, sent, packets, dropped = chunk
            self.counters.conflated_updates += dropped
            # What it was sent, or (sent nothing) what was read for it: a turn's work is bounded.
            subscriber._budget -= len(packets) if sent else read
            if conflating:
                self._round_sent(subscriber, at, now)
            self._send(subscriber, packets, sent, at + count)
            if subscriber._since:
                subscriber._since = {k: v for k, v in subscriber._since.items()
                                     if v > subscriber.cursor}  # fmt: skip
            if sent or conflating:
                break
        if subscriber.cursor >= self._published and not subscriber._until_quiet:
            subscriber.lagging = None  # caught up: live again
        self._maybe_end(subscriber)

    def _round_due(self, subscriber: Subscriber[H], now: float) -> bool:
        """Whether a conflated round may go now: its interval is over and io holds nothing of
        the round before (else it waits: the next round then covers more, not more rounds)."""
        if self._ending:
            return True  # the journal is complete: the rest goes as it can, then End of Session
        if now >= subscriber._round_at and not subscriber.backlog:
            return True
        # io tells us when a full socket drains (resume), not when its last bytes go: a round
        # held back by a backlog looks again a tenth of an interval on.
        again = now + self.limits.conflate_interval / 10 if subscriber.backlog else 0.0
        if subscriber._turn_at is None or subscriber._turn_at <= now:
            subscriber._turn_at = max(subscriber._round_at, again)
        return False

    def _round_sent(self, subscriber: Subscriber[H], at: int, now: float) -> None:
        """A round from ``at`` goes now: its staleness noted, the next one's time set."""
        self.counters.conflated_rounds += 1
        # The publish that brought ``at``: the last that began at or before it (the oldest
        # kept, if it began before them all), by bisection: with thousands of conflated clients
        # there are thousands of rounds a second, each once walked back over the publishes.
        publishes = self._publishes
        i = bisect.bisect_right(publishes, at, key=lambda p: p[0])
        published = publishes[max(i - 1, 0)][1] if publishes else now
        self.staleness.add(max(0.0, now - published))
        subscriber._round_at = now + self.limits.conflate_interval
        subscriber._turn_at = subscriber._round_at

    def _chunk(
        self, subscriber: Subscriber[H], at: int, want: int, conflating: bool
    ) -> tuple[int, int, int, bytes, int]:
        """Up to ``want`` messages from ``at`` as ``subscriber`` gets them: (messages read,
        bytes read, messages sent, packets, BBO changes conflated away)."""
        count, blocks = self.journal.blocks(at, want)
        read, sent, dropped = len(blocks), count, 0
        if self.catalog is not None:
            sent, blocks = select(blocks, subscriber.locates, subscriber._since)
            if conflating:
                _, kept, dropped = conflate(blocks)
                if dropped:  # told first, in a notice
                    blocks = ev.notice(ev.CONFLATED, at, 0, at, count, dropped) + kept
                    sent = len(blocks) // ev.BLOCK_SIZE
        return count, read, sent, encode_sequenced(blocks), dropped

    def _skip(self, subscriber: Subscriber[H]) -> None:
        """Move a lagging subscriber to live, telling it the exact range it skipped."""
        at, end = subscriber.cursor, self._published
        subscriber.lagging = None
        if end > at:
            self.counters.skipped_messages += end - at
            notice = ev.notice(ev.SKIPPED, at, 0, at, end - at, end - at)
            self._send(subscriber, encode_sequenced(notice), 1, end)
            subscriber._since = {}

    def _send(self, subscriber: Subscriber[H], packets: bytes, count: int, upto: int) -> None:
        """``count`` messages framed as ``packets``, which bring its cursor to ``upto``."""
        if count:
            subscriber.session.send_sequenced(packets, count)
            self.counters.messages_sent += count
            self.counters.bytes_sent += len(packets)
        subscriber.cursor = upto

    def _maybe_end(self, subscriber: Subscriber[H]) -> bool:
        if not (self._ending and subscriber.active and subscriber.cursor >= self._published
                and not subscriber.imaging):  # fmt: skip
            return False
        subscriber.session.end_session()
        self._absorb(subscriber)
        return True

    def _slow_consumer(
        self, subscriber: Subscriber[H], now: float, reason: str, dead: bool = False
    ) -> None:
        """Over the backlog cap, or past the write deadline (``dead``): its user's policy. On an
        events stream ``conflate`` and ``skip`` keep a client over the cap (nothing more is
        pushed to it; what it is sent next is paced by its socket, as catching up is); a client
        that takes nothing for the write deadline is cut whatever its policy, and so is any
        slow consumer of another stream (its messages can be neither merged nor skipped)."""
        policy = subscriber.policy if self.catalog is not None and not dead else Policy.DISCONNECT
        if policy is not Policy.DISCONNECT:
            # A conflate user pushed past the budget (lagging until caught up) that turns out
            # slow too stays conflated until a quiet round, and is told so.
            if subscriber.lagging is None or (policy is Policy.CONFLATE
                                              and not subscriber._until_quiet):  # fmt: skip
                subscriber.lagging = policy
                if policy is Policy.CONFLATE:
                    subscriber._until_quiet = True
                    self.counters.conflating += 1
                else:
                    self.counters.skips += 1
                subscriber._events.append(Lagging(policy, reason))
            return
        self.counters.slow_consumers += 1
        subscriber._events.append(Dropped(reason))
        subscriber.session.send_debug(reason.encode("ascii"))
        subscriber.session.close(reason)
        subscriber.abort_at = now + self.limits.linger
        self._absorb(subscriber)


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # unknown: not known to be this host
