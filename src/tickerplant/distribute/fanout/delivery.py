"""Delivery: one session's journal to its subscribers, pushed to the live, pulled by the rest.

- *Live*: :meth:`Delivery.publish` encodes what the journal gained once and hands the same bytes
  to every live subscriber: per subscriber one append per batch, no work per message.
- *Catching up*: a subscriber behind pulls the journal in chunks as its socket takes them, at
  most ``turn_bytes`` a turn, so one client draining as fast as we write cannot keep the others
  (and the timers) waiting. Its next turn waits in :attr:`Delivery.turns` with everyone else's:
  io grants them a few at a time (``tick_bytes``, :meth:`Delivery.grant`), each grant after the
  loop has looked at its sockets, so a login waits behind that much work at most, however many
  clients catch up. A login from behind, a socket that drained and a publish that left one
  behind all queue for a turn rather than writing then.
- *Imaging* (events, symbols added at the live end): until every image asked for has gone, in
  the order asked, a subscriber is sent nothing else, and what is published meanwhile waits in
  the journal for it, as for one catching up.
- *Conflated* (events, a ``conflate`` user kept under its policy): it gets rounds
  (:func:`~tickerplant.distribute.selection.conflate` of everything since its last) every
  ``conflate_interval`` at most, each once io holds nothing of the one before, until an interval
  passes with nothing new (a slow consumer) or it has caught up (one pushed past the publish
  budget). What is stale is then bounded by a few bytes and the client's own buffers, not by the
  stream's rate times the kernel's.
- *Skipping* (events, a ``skip`` user kept under its policy): its next turn moves it to the live
  end, telling it the exact range it skipped.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from tickerplant.distribute.fanout.limits import FanOutLimits
from tickerplant.distribute.fanout.policy import cap
from tickerplant.distribute.fanout.state import Phase, Step
from tickerplant.distribute.journal import Journal
from tickerplant.distribute.selection import conflate, select
from tickerplant.latency import Latencies
from tickerplant.wire import events as ev
from tickerplant.wire.soupbintcp import encode_sequenced

if TYPE_CHECKING:
    from tickerplant.distribute.fanout.core import FanOutCounters
    from tickerplant.distribute.fanout.subscriber import Subscriber

ROUND_MESSAGES = 1 << 17  # read from the journal for one round at most (~7 MB of records)
PUBLISHES_KEPT = 4096  # (number, time) of recent publishes: how stale a conflated client is
GRANT_BYTES = 16 << 10  # what a catch-up turn granted is charged at least (:meth:`Delivery.grant`)
# Catch-up chunks kept for the next subscriber at the same place, across publishes (a range
# once published never changes): logins from 1 arriving one after another each read back and
# encoded the journal's first chunk (~0.5 MiB from the file) when the chunks were kept for one
# publish only: 230 a second took a third of the plant's time.
SHARED_BYTES = 8 << 20

# A chunk as a subscriber gets it: (messages read, bytes read, messages sent, packets, BBO
# changes conflated away).
Chunk = tuple[int, int, int, bytes, int]


class Published(NamedTuple):
    """What a publish did: see :meth:`Delivery.publish`."""

    pushed: list[Subscriber[Any]]
    deferred: list[Subscriber[Any]]
    behind: list[Subscriber[Any]]
    lagging: list[tuple[Subscriber[Any], int]]


class Delivery:
    """What belongs to the session of ``journal``: how far it is published and its turns."""

    def __init__(self, journal: Journal, limits: FanOutLimits, counters: FanOutCounters,
                 events: bool) -> None:  # fmt: skip
        self.journal = journal
        self.limits = limits
        self.counters = counters
        self.events = events  # an events stream: records may be selected and conflated
        self.published = journal.next_sequence
        self.published_bytes = journal.size  # of the journal up to ``published``
        self.ending = False
        # From the publish that gave a subscriber something to write to the moment io took the
        # first of it for the socket: the loop's delay, publish budgets and catch-up turns.
        self.latency = Latencies()
        # How stale a conflated slow consumer's picture was as each round went: from the
        # publish of the oldest record it had not been sent to the round.
        self.staleness = Latencies()
        self._publishes: deque[tuple[int, float]] = deque(maxlen=PUBLISHES_KEPT)
        self._rotation = 0  # who is pushed first: the next publish starts one further on
        self.turns: deque[Subscriber[Any]] = deque()  # waiting for a catch-up turn, in order
        self.worked = 0  # bytes catch-up turns have sent, or read and sent nothing of
        # Catch-up chunks shared by subscribers at the same place asking for the same, the most
        # recently used last, up to ``SHARED_BYTES`` of packets: (group, cursor, messages,
        # conflated) -> the chunk
        self._shared: OrderedDict[tuple[bytes | None, int, int, bool], Chunk] = OrderedDict()
        self._shared_bytes = 0
        # Those logged in whose socket is not full: what a publish walks (kept by join, leave,
        # park and unpark, as Subscriber.move, pause and resume call them).
        self.flowing: dict[Subscriber[Any], None] = {}
        # Those whose socket is full (io paused them), until it drains: none can take anything,
        # so no publish walks them (walked every publish, 1,000 clients that never read were a
        # third of the plant's time, and every publish's push to the rest waited for them).
        # What one lacks grows with the journal alone, so the publish that may take any of them
        # past its policy's cap is known beforehand: when the journal's bytes plus its messages
        # pass ``_parked_due``; only then are they looked at.
        self.parked: dict[Subscriber[Any], None] = {}
        self._parked_due: float = math.inf

    def publish(self, now: float) -> Published:
        """Take in what the journal gained since the last call: returns the live subscribers it
        was pushed to; those live that were not (past this publish's budget, or a burst too big
        to push), of whom the policy says what becomes; the rest that lack some of it (to pull
        it in turns: :meth:`behind`); and of those, the ones off the push path that now lack
        more than the policy allows them, with what they lack.

        It walks those logged in whose socket is not full (:attr:`flowing`): one that is, is
        parked (:meth:`park`). A client that never reads then costs nothing a publish (pushed, 1,000
        of them held a good client's p99 at 0.24 s), and what it lacks is still told to the
        policy."""
        old, new = self.published, self.journal.next_sequence
        size = self.journal.size  # of the journal up to ``new``
        if new <= old:
            return Published([], [], [], [])
        live: list[Subscriber[Any]] = []
        behind: list[Subscriber[Any]] = []
        lagging: list[tuple[Subscriber[Any], int]] = []
        for subscriber in self.flowing:
            phase = subscriber.phase
            if phase is Phase.CATCHING_UP and subscriber.cursor == old:
                subscriber.move(Step.CAUGHT_UP)  # it was waiting for this number
                phase = Phase.LIVE
            if phase is Phase.LIVE:
                if not subscriber.imaging:
                    live.append(subscriber)
                    continue
                subscriber.move(Step.DEFER)  # its images first
            if subscriber.active and subscriber.cursor < new:
                behind.append(subscriber)
                if subscriber.fell_at is not None:  # fell behind, drained, not caught up yet
                    lacks = self._lacks(subscriber, size, new)
                    if lacks > cap(subscriber.policy, self.events, self.limits):
                        lagging.append((subscriber, lacks))
        if size + new > self._parked_due:
            lagging += self._lagging_parked(size, new)
        self.published = new
        self.published_bytes = size
        self._publishes.append((old, now))
        if not live or new - old > self.limits.chunk_messages:
            return Published([], live, behind, lagging)
        count, blocks = self.journal.blocks(old, new - old)
        groups: dict[bytes | None, tuple[int, bytes]] = {}
        budget = self.limits.publish_bytes
        first = self._rotation % len(live)
        self._rotation += 1
        pushed: list[Subscriber[Any]] = []
        deferred: list[Subscriber[Any]] = []
        for subscriber in live[first:] + live[:first]:
            if budget <= 0:
                deferred.append(subscriber)
                continue
            group = subscriber.subscription.group
            packets = groups.get(group)
            if packets is None:  # once per group of subscribers asking for the same
                mine = (count, blocks)
                if subscriber.subscription.locates is not None:
                    mine = select(blocks, subscriber.subscription.locates)
                packets = groups[group] = (mine[0], encode_sequenced(mine[1]))
            self.send(subscriber, packets[1], packets[0], new)
            subscriber.pushed = True
            budget -= len(packets[1])
            pushed.append(subscriber)
        return Published(pushed, deferred, behind, lagging)

    def join(self, subscriber: Subscriber[Any]) -> None:
        """Logged in: on the walk, or parked if its socket is full already."""
        if subscriber.paused:
            self.park(subscriber)
        else:
            self.flowing[subscriber] = None

    def leave(self, subscriber: Subscriber[Any]) -> None:
        """Closed: owed nothing more."""
        self.flowing.pop(subscriber, None)
        self.parked.pop(subscriber, None)

    def park(self, subscriber: Subscriber[Any]) -> None:
        """Its socket is full (io paused it): off the publish's walk until it drains. A live one
        leaves the push path: what is published waits in the journal for it, as for one
        catching up, rather than in io's buffer, and it pulls it in turns once it drains."""
        self.flowing.pop(subscriber, None)
        if subscriber.phase is Phase.LIVE:
            subscriber.move(Step.DEFER)
            subscriber.fell_at = self.published_bytes
        self.parked[subscriber] = None
        self.watch(subscriber)

    def unpark(self, subscriber: Subscriber[Any]) -> None:
        """Its socket drained: back on the walk, live again if it lacks nothing."""
        del self.parked[subscriber]
        self.flowing[subscriber] = None
        if subscriber.phase is Phase.CATCHING_UP and subscriber.cursor == self.published:
            subscriber.move(Step.CAUGHT_UP)

    def watch(self, subscriber: Subscriber[Any]) -> None:
        """A parked subscriber fell behind the journal or io holds more for it: the publish
        that could take it past its cap may come sooner."""
        if subscriber.fell_at is not None:
            allowed = cap(subscriber.policy, self.events, self.limits)
            due = allowed - subscriber.backlog + subscriber.fell_at + subscriber.cursor
            self._parked_due = min(self._parked_due, due)

    def _lagging_parked(self, size: int, new: int) -> list[tuple[Subscriber[Any], int]]:
        """The parked subscribers that lack more than their policy allows once the journal
        holds ``size`` bytes up to ``new``, with what they lack; the next publish to look again."""
        self._parked_due = math.inf
        lagging: list[tuple[Subscriber[Any], int]] = []
        for subscriber in self.parked:
            if subscriber.fell_at is not None:
                lacks = self._lacks(subscriber, size, new)
                if lacks > cap(subscriber.policy, self.events, self.limits):
                    lagging.append((subscriber, lacks))
                self.watch(subscriber)
        return lagging

    @staticmethod
    def _lacks(subscriber: Subscriber[Any], size: int, new: int) -> int:
        """Bytes one off the push path lacks: what io holds, and the journal from its cursor
        on (to ``size`` bytes, ``new`` messages) as Sequenced Data."""
        assert subscriber.fell_at is not None
        return subscriber.backlog + size - subscriber.fell_at + new - subscriber.cursor

    def behind(self, subscribers: list[Subscriber[Any]], deferred: list[Subscriber[Any]]) -> None:
        """``subscribers`` pull what they lack from the journal at their own pace, in turns,
        granted after the loop has looked around (the feed it shares reads its lines): no one
        publish does every client's work. Those ``deferred`` (live, left by the publish's
        budget) go first, in the order the publish would have pushed them: they lack one batch,
        and a client reading from 1 does not notice a turn that comes a tick later (1,000 that
        logged in from 1 and never read kept a deferred live one waiting seconds)."""
        for subscriber in subscribers:
            self.wait_turn(subscriber)
        for subscriber in reversed(deferred):
            self.wait_turn(subscriber, first=True)

    def wait_turn(self, subscriber: Subscriber[Any], first: bool = False) -> None:
        """Its next chunk waits for a turn (:meth:`grant`): after those waiting, or ``first``."""
        subscriber.budget = 0
        if subscriber.waiting and first:
            self.turns.remove(subscriber)  # (rare: a live one is seldom waiting)
            subscriber.waiting = False
        if not subscriber.waiting:
            subscriber.waiting = True
            if first:
                self.turns.appendleft(subscriber)
            else:
                self.turns.append(subscriber)

    def grant(self, now: float) -> Iterator[Subscriber[Any]]:
        """The next turns, in the order asked, until ``tick_bytes`` of work is done: each
        subscriber yielded is io's to service before it asks for the next (its turn's work is
        what the tick is charged: a live client left one batch by the publish budget costs its
        batch, not a whole turn; but at least ``GRANT_BYTES``, as servicing one costs the loop
        tens of microseconds whatever it sends: charged its bytes alone, 1,000 clients a batch
        behind were one tick, 0.12 s). One gone or paused meanwhile is passed over (a socket
        that drains asks again)."""
        start = self.worked
        while self.turns and self.worked - start < self.limits.tick_bytes:
            subscriber = self.turns.popleft()
            subscriber.waiting = False
            if subscriber.active and not subscriber.paused:
                self.turn(subscriber, now)
                before = self.worked
                yield subscriber
                self.worked = max(self.worked, before + GRANT_BYTES)

    def turn(self, subscriber: Subscriber[Any], now: float) -> None:
        """Its turn came: a new budget, and a conflated subscriber whose round's interval passed
        with nothing new is live again."""
        subscriber.budget = self.limits.turn_bytes
        conflated = subscriber.phase in (Phase.CONFLATED, Phase.CONFLATED_CATCHUP)
        if conflated and now >= subscriber.round_at and subscriber.cursor >= self.published:
            self._arrived(subscriber)

    def catch_up(self, subscriber: Subscriber[Any], now: float) -> None:
        """One chunk from the journal, if it is behind and its socket and its turn allow."""
        if not subscriber.active or subscriber.imaging:
            return
        if subscriber.phase is Phase.SKIPPING and not subscriber.paused:
            self._skip(subscriber)
        # Until a chunk has something for it: a narrowed subscriber may want none of one.
        while subscriber.cursor < self.published and not subscriber.paused:
            if subscriber.budget <= 0:
                self.wait_turn(subscriber)  # yield: the next turn once io has looked around
                return
            at = subscriber.cursor
            conflating = subscriber.phase in (Phase.CONFLATED, Phase.CONFLATED_CATCHUP)
            if conflating and not self._round_due(subscriber, now):
                return
            step = ROUND_MESSAGES if conflating else self.limits.chunk_messages
            want = min(step, self.published - at)
            count, read, sent, packets, dropped = self._shared_chunk(subscriber, at, want,
                                                                    conflating)  # fmt: skip
            self.counters.conflated_updates += dropped
            # What it was sent, or (sent nothing) what was read for it: a turn's work is bounded,
            # and a tick's (a client narrowed to symbols a chunk lacks costs its reading).
            cost = len(packets) if sent else read
            if subscriber.fell_at is not None:
                subscriber.fell_at += read
            subscriber.budget -= cost
            self.worked += cost
            if conflating:
                self._round_sent(subscriber, at, now)
            self.send(subscriber, packets, sent, at + count)
            subscriber.subscription.passed(subscriber.cursor)
            if sent or conflating:
                break
        if subscriber.cursor >= self.published and subscriber.phase is not Phase.CONFLATED:
            self._arrived(subscriber)

    def _arrived(self, subscriber: Subscriber[Any]) -> None:
        """At or past the journal's end: live, or (ahead of it) waiting for its number."""
        if subscriber.phase is Phase.LIVE:
            return
        at_end = subscriber.cursor == self.published
        if at_end or subscriber.phase is not Phase.CATCHING_UP:
            subscriber.move(Step.CAUGHT_UP if at_end else Step.WAIT)

    def _round_due(self, subscriber: Subscriber[Any], now: float) -> bool:
        """Whether a conflated round may go now: its interval is over and io holds nothing of
        the round before (else it waits: the next round then covers more, not more rounds)."""
        if self.ending:
            return True  # the journal is complete: the rest goes as it can, then End of Session
        if now >= subscriber.round_at and not subscriber.backlog:
            return True
        # io tells us when a full socket drains (resume), not when its last bytes go: a round
        # held back by a backlog looks again a tenth of an interval on.
        again = now + self.limits.conflate_interval / 10 if subscriber.backlog else 0.0
        if subscriber.turn_at is None or subscriber.turn_at <= now:
            subscriber.turn_at = max(subscriber.round_at, again)
        return False

    def _round_sent(self, subscriber: Subscriber[Any], at: int, now: float) -> None:
        """A round from ``at`` goes now: its staleness noted, the next one's time set."""
        self.counters.conflated_rounds += 1
        # The publish that brought ``at``: the last that began at or before it (the oldest
        # kept, if it began before them all), by bisection: with thousands of conflated clients
        # there are thousands of rounds a second, each once walked back over the publishes.
        publishes = self._publishes
        i = bisect.bisect_right(publishes, at, key=lambda p: p[0])
        published = publishes[max(i - 1, 0)][1] if publishes else now
        self.staleness.add(max(0.0, now - published))
        subscriber.round_at = now + self.limits.conflate_interval
        subscriber.turn_at = subscriber.round_at

    def _shared_chunk(self, subscriber: Subscriber[Any], at: int, want: int,
                      conflating: bool) -> Chunk:  # fmt: skip
        """The chunk kept for the same place and selection, if the journal still holds its
        messages (a ring that let them go says so, as it would to a reader), else read now and
        kept (not for a subscriber whose selection starts per symbol: its own)."""
        shared = self._shared
        subscription = subscriber.subscription
        if subscription.since:
            return self._chunk(subscriber, at, want, conflating)
        key = (subscription.group, at, want, conflating)
        chunk = shared.get(key) if at >= self.journal.first_held else None
        if chunk is not None:
            shared.move_to_end(key)
            return chunk
        chunk = shared[key] = self._chunk(subscriber, at, want, conflating)
        self._shared_bytes += len(chunk[3])
        while self._shared_bytes > SHARED_BYTES:
            self._shared_bytes -= len(shared.popitem(last=False)[1][3])
        return chunk

    def _chunk(self, subscriber: Subscriber[Any], at: int, want: int, conflating: bool) -> Chunk:
        """Up to ``want`` messages from ``at`` as ``subscriber`` gets them."""
        self.counters.chunks += 1
        count, blocks = self.journal.blocks(at, want)
        read, sent, dropped = len(blocks), count, 0
        if self.events:
            subscription = subscriber.subscription
            sent, blocks = select(blocks, subscription.locates, subscription.since)
            if conflating:
                _, kept, dropped = conflate(blocks)
                if dropped:  # told first, in a notice
                    blocks = ev.notice(ev.CONFLATED, at, 0, at, count, dropped) + kept
                    sent = len(blocks) // ev.BLOCK_SIZE
        return count, read, sent, encode_sequenced(blocks), dropped

    def _skip(self, subscriber: Subscriber[Any]) -> None:
        """Move a skipping subscriber to the live end, telling it the exact range it skipped."""
        at, end = subscriber.cursor, self.published
        if end > at:
            self.counters.skipped_messages += end - at
            notice = ev.notice(ev.SKIPPED, at, 0, at, end - at, end - at)
            self.send(subscriber, encode_sequenced(notice), 1, end)
            subscriber.subscription.since = {}
        self._arrived(subscriber)

    def images(self, subscriber: Subscriber[Any], ready: list[bytes]) -> None:
        """Images built, in the order asked, go now; once none is awaited, what was published
        meanwhile follows in turns."""
        for blocks in ready:
            if subscriber.active:
                packets = encode_sequenced(blocks)
                subscriber.session.send_sequenced(packets, len(blocks) // ev.BLOCK_SIZE)
                self.counters.bytes_sent += len(packets)
        if not subscriber.imaging:
            self.wait_turn(subscriber)

    def send(self, subscriber: Subscriber[Any], packets: bytes, count: int, upto: int) -> None:
        """``count`` messages framed as ``packets``, which bring its cursor to ``upto``."""
        if count:
            subscriber.session.send_sequenced(packets, count)
            self.counters.messages_sent += count
            self.counters.bytes_sent += len(packets)
        subscriber.cursor = upto
