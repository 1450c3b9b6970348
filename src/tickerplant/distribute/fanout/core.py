"""The fan-out: one session's journal to many SoupBinTCP subscribers, composed of its rooms.

Who may connect and log in is :mod:`.admission`'s; what an events client asked for,
:mod:`.subscriptions`'; pushing and pulling the journal, :mod:`.delivery`'s; what becomes of a
slow consumer and when a closed connection is reset, :func:`.policy.decide`'s. :class:`FanOut`
takes what a subscriber's session raised (:meth:`FanOut.absorb`), asks those rooms, and carries
out what they answer (:meth:`FanOut.act`), moving the subscriber's state through its table
(:mod:`.state`).

Login sequence numbers: 0 starts with the next message published; a number beyond the journal's
end is accepted and served once published (the spec's "(re)start from that number"; rejecting
would make a client that knows the future sequence number poll for it). After
:meth:`FanOut.end_session` every subscriber is sent End of Session as soon as it has caught up,
and later logins are still served their replay, then End of Session.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tickerplant.distribute.fanout.admission import Admission
from tickerplant.distribute.fanout.delivery import Delivery
from tickerplant.distribute.fanout.limits import HIGH_WATER, FanOutLimits, Policy
from tickerplant.distribute.fanout.policy import (
    Action,
    Backlog,
    Closing,
    Deferred,
    OverBudget,
    Report,
    Verdict,
    decide,
)
from tickerplant.distribute.fanout.state import Phase, Step
from tickerplant.distribute.fanout.subscriber import (
    BuildImages,
    CheckPassword,
    Dropped,
    Lagging,
    Subscribed,
    Subscriber,
)
from tickerplant.distribute.fanout.subscriptions import SYMBOL, Catalog, parse
from tickerplant.distribute.journal import Journal
from tickerplant.session.soupbin import (
    DEAD_AFTER,
    HEARTBEAT_INTERVAL,
    LOGIN_TIMEOUT,
    CloseCause,
    Closed,
    Credentials,
    LoginReceived,
    ProtocolViolated,
    SoupServerSession,
    State,
    UnsequencedReceived,
)
from tickerplant.wire.soupbintcp import NOT_AUTHORIZED, PAD

H = TypeVar("H")


@dataclass(slots=True)
class Queued:
    """Bytes io holds beyond their sockets for the session's logged-in clients: what
    ``max_queued`` bounds (a closed one's go with its connection). A session's own, as its
    subscribers are: over budget, only they can be cut to bring it back."""

    bytes: int = 0


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
    unreadable: int = 0  # closed: what they were owed could not be read back (its checksum did
    # not match, or the ring had moved past it)
    too_old: int = 0  # logins for numbers the ring no longer held: served from its oldest, told
    over_budget: int = 0  # slow consumers cut because the server held over max_queued for all
    chunks: int = 0  # catch-up chunks read from the journal (one shared by many counts once)
    refused: int = 0  # connections over a limit, throttled or not allowed from their address
    protocol_errors: int = 0
    timeouts: int = 0  # login timeouts and dead links
    sessions_ended: int = 0  # End of Session sent


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
        self.limits = limits if limits is not None else FanOutLimits()
        self._credentials = credentials
        self._timing = (heartbeat_interval, dead_after, login_timeout)
        # The server's, whatever the session: what it counted and whom it admits.
        self.counters = FanOutCounters()
        self.admission = Admission(self.limits, local_only)
        self._begin(journal)

    def _begin(self, journal: Journal) -> None:
        """What belongs to the session of ``journal``: its subscribers and where they stand."""
        self.delivery = Delivery(journal, self.limits, self.counters, self.catalog is not None)
        self.queued = Queued()
        self._subscribers: dict[Subscriber[H], None] = {}  # insertion-ordered set
        # Those logged in and not closed (Subscriber.move keeps it): what a publish looks at,
        # not the connections that never logged in (1,000 idle ones cost each publish as much
        # as the rest of it).
        self.delivering: dict[Subscriber[H], None] = {}

    @property
    def high_water(self) -> int:
        """io's write buffer above which its transport pauses: never above the backlog cap, so
        that a push over the cap always pauses it, and a slow consumer kept under its policy
        hears when it has drained (resume)."""
        return min(HIGH_WATER, self.limits.max_backlog)

    @property
    def login_timeout(self) -> float:
        return self._timing[2]

    def successor(self, journal: Journal) -> FanOut[H]:
        """The fan-out of the next session's ``journal``: the same settings, and the same
        counters and admission (they are the server's, not the session's)."""
        new = copy.copy(self)
        new._begin(journal)
        return new

    def adopt(self, journal: Journal) -> None:
        """Serve ``journal`` instead of an empty one that never published: the clients waiting
        (a plant listening before the exchange's first packet) are its session's."""
        self.delivery.journal = journal

    @property
    def journal(self) -> Journal:
        return self.delivery.journal

    def __len__(self) -> int:
        """Connections open now in this session, logged in or not."""
        return len(self._subscribers)

    @property
    def subscribers(self) -> list[Subscriber[H]]:
        return list(self._subscribers)

    @property
    def ending(self) -> bool:
        """End of Session was called: the journal will not grow again."""
        return self.delivery.ending

    @property
    def published(self) -> int:
        """One past the last message published: where a login with sequence 0 starts."""
        return self.delivery.published

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
        subscriber = Subscriber(self, handle, session, address)
        refusal = self.admission.connection(address, now)
        self._subscribers[subscriber] = None
        self.counters.connections += 1
        if refusal is not None:
            self._refuse(subscriber, refusal)
        return subscriber

    def left(self, subscriber: Subscriber[H]) -> None:
        if self._subscribers.pop(subscriber, False) is not False:
            self.admission.closed(subscriber.address)

    def publish(self, now: float) -> list[Subscriber[H]]:
        """Take in what the journal gained since the last call; returns the subscribers with
        something to write now."""
        pushed, deferred, behind, lagging = self.delivery.publish(now)
        self.counters.deferred += len(deferred)
        for subscriber in deferred:
            self.judge(subscriber, Deferred())
        for subscriber, lacks in lagging:  # (io services them: what the policy did is told)
            self.judge(subscriber, Backlog(lacks))
        # Those catching up, waiting for a future number, left to catch up by the publish,
        # imaging or conflated pull it from the journal at their own pace, in turns.
        self.delivery.behind(behind, deferred)
        for subscriber in pushed + behind + deferred:
            if subscriber.queued_at is None:
                subscriber.queued_at = now
        # (those behind are serviced as their turns are granted)
        return pushed + [subscriber for subscriber, _ in lagging]

    def get_timer(self) -> float | None:
        """When io is to grant the next catch-up turns (:meth:`handle_timer`): at once while
        any wait, after the loop has looked at its sockets."""
        return 0.0 if self.delivery.turns else None

    def handle_timer(self, now: float) -> Iterator[Subscriber[H]]:
        """The next catch-up turns, ``tick_bytes`` of them: each subscriber yielded is to be
        serviced before the next is asked for (what it sends is what the tick is charged)."""
        return self.delivery.grant(now)

    def end_session(self) -> list[Subscriber[H]]:
        """End of Session to every subscriber once it has caught up; returns those ended now."""
        self.delivery.ending = True
        return [s for s in list(self.delivering) if self._maybe_end(s)]

    def pull(self, subscriber: Subscriber[H], now: float) -> None:
        """io asks what to write of a subscriber behind (or of any once the session is ending):
        a chunk of the journal, or End of Session if that is all that is left."""
        self.delivery.catch_up(subscriber, now)
        self._maybe_end(subscriber)

    def _maybe_end(self, subscriber: Subscriber[H]) -> bool:
        if not (self.delivery.ending and subscriber.active
                and subscriber.cursor >= self.delivery.published
                and not subscriber.imaging):  # fmt: skip
            return False
        subscriber.session.end_session()
        self.absorb(subscriber)
        return True

    def over_budget(self) -> list[Subscriber[H]]:
        """io holds more than ``max_queued`` for the clients: the policy, for those holding the
        most, largest first, until the rest fit; returns those it was asked about."""
        budget = self.limits.max_queued
        holders = sorted((s for s in self.delivering if s.backlog),
                         key=lambda s: s.backlog, reverse=True)  # fmt: skip
        judged: list[Subscriber[H]] = []
        for subscriber in holders:
            if self.queued.bytes <= budget:
                break
            self.counters.over_budget += 1
            self.judge(subscriber, OverBudget(self.queued.bytes, subscriber.backlog))
            judged.append(subscriber)
        return judged

    # --- the policy, carried out -------------------------------------------------------------

    def judge(self, subscriber: Subscriber[H], report: Report) -> None:
        """Ask the policy what becomes of ``subscriber`` given ``report``, and carry it out."""
        events = self.catalog is not None
        self.act(subscriber, decide(report, subscriber.phase, subscriber.policy, events,
                                    self.limits))  # fmt: skip

    def act(self, subscriber: Subscriber[H], action: Action) -> None:
        """Carry out what the policy decided for ``subscriber``: the one place that does."""
        verdict, counters = action.verdict, self.counters
        if verdict is Verdict.KEEP:
            return
        if verdict is Verdict.RESET:
            subscriber.reset_after = action.reset_after
        elif verdict is Verdict.CATCH_UP:
            subscriber.move(Step.DEFER)
        elif verdict is Verdict.ROUNDS:
            subscriber.move(Step.ROUNDS)
        elif verdict is Verdict.CONFLATE or verdict is Verdict.SKIP:
            conflate = verdict is Verdict.CONFLATE
            subscriber.move(Step.CONFLATE if conflate else Step.SKIP)
            if conflate:
                counters.conflating += 1
            else:
                counters.skips += 1
            subscriber.events.append(Lagging(subscriber.policy, action.reason))
        else:  # cut or failed: told why, closed
            slow = verdict is Verdict.CUT
            if slow:
                counters.slow_consumers += 1
            else:
                counters.unreadable += 1
            subscriber.events.append(Dropped(action.reason, slow))
            _tell_and_close(subscriber, action.reason)
            self.absorb(subscriber)

    # --- what a subscriber's session raised --------------------------------------------------

    def absorb(self, subscriber: Subscriber[H]) -> None:
        """Act on what the session raised, then pass it on to io."""
        session, counters = subscriber.session, self.counters
        while (event := session.next_event()) is not None:
            if isinstance(event, LoginReceived):
                if session.state is State.LOGIN_RECEIVED:  # else what followed closed it
                    self._login(subscriber, event)
                continue
            if isinstance(event, UnsequencedReceived):
                self._request(subscriber, event.message)
                continue
            if isinstance(event, ProtocolViolated):
                counters.protocol_errors += 1
            elif isinstance(event, Closed):
                checking = subscriber.phase is Phase.CHECKING
                subscriber.move(Step.CLOSE)
                self.judge(subscriber, Closing(event.cause))
                if event.cause is CloseCause.LOGIN_REJECTED:
                    counters.rejected += 1
                    if not checking:  # a checked one was counted as failed as its check began
                        self.admission.failed(subscriber.address, subscriber.heard_at)
                elif event.cause in (CloseCause.LOGIN_TIMEOUT, CloseCause.DEAD_LINK):
                    counters.timeouts += 1
                elif event.cause is CloseCause.END_OF_SESSION:
                    counters.sessions_ended += 1
            subscriber.events.append(event)

    def _refuse(self, subscriber: Subscriber[H], reason: str) -> None:
        """Tell it why (Debug) and close: over a limit, throttled, or not served from there."""
        self.counters.refused += 1
        _tell_and_close(subscriber, reason)
        self.absorb(subscriber)

    def _login(self, subscriber: Subscriber[H], login: LoginReceived) -> None:
        if self.users is None:
            self._accept(subscriber, login)
            return
        stored = self.users.get(login.username.strip(PAD))
        refusal = self.admission.login(subscriber.address, subscriber.heard_at)
        if refusal is not None:
            self._refuse(subscriber, refusal)
            return
        if stored is None:
            subscriber.session.reject(NOT_AUTHORIZED)
            return
        # Slow on purpose (scrypt): io runs it off the loop.
        self.admission.check(subscriber.address, subscriber.heard_at)
        subscriber.move(Step.CHECK)
        subscriber.login = login
        subscriber.events.append(CheckPassword(stored, login.password))

    def checked(self, subscriber: Subscriber[H], ok: bool, now: float) -> None:
        """io checked the password of ``subscriber``'s login (moot if it went meanwhile)."""
        login, subscriber.login = subscriber.login, None
        if login is None:
            return
        self.admission.checked(subscriber.address, ok)
        if subscriber.phase is not Phase.CHECKING:
            return
        subscriber.heard_at = now
        if ok:
            self._accept(subscriber, login)
        else:
            subscriber.session.reject(NOT_AUTHORIZED)
        self.absorb(subscriber)

    def _accept(self, subscriber: Subscriber[H], login: LoginReceived) -> None:
        first = login.sequence or self.delivery.published
        held, asked = self.journal.first_held, first
        first = max(first, held)
        subscriber.session.accept(first)
        if asked < held:
            # A journal without a file keeps a ring: the accepted number says where the client
            # starts (as for a login past the end), the Debug packet after it says why.
            self.counters.too_old += 1
            subscriber.session.send_debug(f"messages {asked}-{held - 1} are no longer held: "
                                          f"served from {held}".encode("ascii"))  # fmt: skip
        subscriber.move(Step.ACCEPT)
        subscriber.cursor = first
        if first == self.delivery.published:
            subscriber.move(Step.CAUGHT_UP)
        else:
            self.delivery.wait_turn(subscriber)  # answered now; what it lacks, in its turn
        subscriber.policy = self.policies.get(login.username.strip(PAD), self.policy)
        self.counters.logins += 1
        conflated = self.catalog is not None and subscriber.policy is Policy.CONFLATE
        unsent = self.limits.unsent
        if conflated:
            unsent = min(unsent, self.limits.conflate_unsent)
        subscriber.events.append(Subscribed(login.username, first, unsent))
        subscription = subscriber.subscription
        if not login.sequence and self.catalog is not None:  # from now: state first
            if subscription.whole:
                self._images(subscriber, self.catalog.locates(), snapshot=True)
            elif subscription.locates is not None:
                self._images(subscriber, subscription.locates.tolist())

    def _request(self, subscriber: Subscriber[H], message: bytes) -> None:
        """A subscription request (:mod:`.subscriptions`). Symbols added at the live end are sent
        their state first (images), then their updates; added by a client replaying from an
        earlier number (one resuming), their records from where it is."""
        session = subscriber.session
        if session.closed:
            return  # what came after it in the same read closed the session: nothing to answer
        parsed = "this stream takes no requests" if self.catalog is None else parse(message)
        if isinstance(parsed, str):
            self.counters.protocol_errors += 1
            _tell_and_close(subscriber, parsed)  # (its Closed is the next event absorbed)
            return
        assert self.catalog is not None
        op, symbols = parsed
        self.counters.subscriptions += 1
        subscription = subscriber.subscription
        # One waiting for images is behind only for them: it was at the live end when it asked.
        at_end = subscriber.cursor >= self.delivery.published or subscriber.imaging
        if op == b"*":
            added = subscription.everything(self.catalog.locates())
            if subscriber.active and at_end:
                self._images(subscriber, added, snapshot=True)
            return
        found = {s: self.catalog.locate(s.ljust(SYMBOL)) for s in symbols}
        unknown = [s.decode("latin-1").strip() for s, loc in found.items() if loc is None]
        if unknown:
            text = f"unknown symbols (not in today's Stock Directory): {' '.join(unknown)}"
            session.send_debug(text[:200].encode("ascii", "replace"))
        added = subscription.change(op, {loc for loc in found.values() if loc is not None})
        if op == b"+" and subscriber.active and at_end:
            self._images(subscriber, added)

    def _images(self, subscriber: Subscriber[H], locates: list[int], snapshot: bool = False
                ) -> None:  # fmt: skip
        """The state of ``locates`` now (taken now, encoded by io off the loop), then their
        records from the next number on. A ``snapshot`` (``*``) is sent even of no symbol: its
        ``i`` notice says where the stream stands."""
        if (not locates and not snapshot) or self.catalog is None:
            return
        number = subscriber.subscription.imaged(locates, self.delivery.published)
        subscriber.events.append(BuildImages(number, self.catalog.images(locates)))


def _tell_and_close(subscriber: Subscriber[Any], reason: str) -> None:
    """A Debug packet saying ``reason``, then close: what it reads last is why."""
    subscriber.session.send_debug(reason.encode("ascii"))
    subscriber.session.close(reason)
