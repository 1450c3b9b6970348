"""The fan-out core on a fake clock: subscribers paired with client sessions in memory.

No sockets, no sleeps: :class:`Link` does what io does for one subscriber (write what it has,
report the backlog, pause above a high-water mark), with the bytes waiting in a list until the
client session at the other end reads them.
"""

from __future__ import annotations

from typing import Any

import pytest

from tickerplant.distribute import fanout as fanout_module
from tickerplant.distribute.fanout import (
    Dropped,
    FanOut,
    FanOutLimits,
    Subscribed,
    SubscriberEvent,
    delivery,
)
from tickerplant.distribute.fanout.limits import UNSENT
from tickerplant.distribute.fanout.state import Phase
from tickerplant.distribute.fanout.subscriber import Subscriber
from tickerplant.distribute.journal import Journal
from tickerplant.errors import InputError
from tickerplant.receive.events import Batch
from tickerplant.session.soupbin import (
    CloseCause,
    Closed,
    DebugReceived,
    Event,
    LoggedIn,
    ProtocolViolated,
    SoupClientSession,
)
from tickerplant.wire.blocks import join_messages
from tickerplant.wire.soupbintcp import encode_sequenced

SESSION = b"FANOUT0001"
PACKET = 15  # every test message is 12 bytes: as Sequenced Data, 2 + 1 + 12


def messages(first: int, count: int) -> bytes:
    """A block stream of ``count`` messages that carry their own sequence numbers."""
    return join_messages([b"msg %08d" % n for n in range(first, first + count)])


def journal_of(count: int) -> Journal:
    journal = Journal(SESSION)
    journal.append(messages(1, count))
    return journal


class Link:
    """io for one subscriber, in memory, with a client session at the other end."""

    def __init__(
        self,
        fanout: FanOut[Any],
        now: float,
        sequence: int = 0,
        high_water: int | None = None,
        password: bytes = b"",
        address: str = "127.0.0.1",
        username: bytes = b"",
        with_login: bytes = b"",
    ) -> None:
        self.client = SoupClientSession(
            now, sequence=sequence, password=password, username=username
        )
        self.sub = fanout.connect(self, now, address)
        self.high_water = high_water
        self.unread: list[bytes] = []  # written, not yet read by the client: the socket
        self.writes: list[bytes] = []
        self.events: list[SubscriberEvent] = []  # what the subscriber told io
        self.client_events: list[Event] = []  # what the client saw, batches aside
        self.next = sequence  # the sequence number the next batch must start with
        self.sub.receive_data(self.client.data_to_send(now) + with_login, now)
        self.service(now)

    @property
    def backlog(self) -> int:
        return sum(map(len, self.unread))

    def service(self, now: float) -> None:
        """What SoupConnection does: events, then writes until there are none."""
        self.sub.held(self.backlog)
        while True:
            while (event := self.sub.next_event()) is not None:
                self.events.append(event)
            data = self.sub.data_to_send(now)
            if not data:
                return
            self.writes.append(data)
            self.unread.append(data)
            if self.high_water is not None and self.backlog > self.high_water:
                self.sub.pause(now)  # as a transport does, inside write()
            for other in self.sub.report_backlog(self.backlog, now):
                other.handle.service(now)  # io: soon after, not inside this write

    def read(self, now: float) -> None:
        """The client reads everything; a paused socket drained that far resumes."""
        for data in self.unread:
            self.client.receive_data(data, now)
        self.unread.clear()
        while (event := self.client.next_event()) is not None:
            if isinstance(event, Batch):
                assert event.first == self.next, f"batch at {event.first}, {self.next} expected"
                assert event.blocks == messages(event.first, event.count)
                self.next = event.end
            elif isinstance(event, LoggedIn):
                self.next = event.sequence
                self.client_events.append(event)
            else:
                self.client_events.append(event)
        if self.sub.paused:
            self.sub.resume()
            self.service(now)


def grant(fanout: FanOut[Any], now: float) -> None:
    """What io's Turns does: the catch-up turns due, granted and serviced, until none wait."""
    while fanout.get_timer() is not None:
        for subscriber in fanout.handle_timer(now):
            subscriber.handle.service(now)


def service(ready: list[fanout_module.Subscriber[Link]], now: float) -> None:
    for subscriber in ready:
        subscriber.handle.service(now)


def turns(links: list[Link], now: float) -> None:
    """What io's timers do: each subscriber's due timer fires, then it is serviced; then the
    catch-up turns are granted."""
    for link in links:
        due = link.sub.get_timer()
        if due is not None and due <= now:
            link.sub.handle_timer(now)
            link.service(now)
    if links:
        grant(links[0].sub.fanout, now)


def test_publish_encodes_once_and_hands_every_live_subscriber_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = journal_of(10)
    fanout: FanOut[Link] = FanOut(journal)
    links = [Link(fanout, 0.0) for _ in range(3)]
    assert all(link.events == [Subscribed(b"", 11, UNSENT)] and link.sub.live for link in links)
    encodes: list[int] = []

    def counted(blocks: bytes) -> bytes:
        encodes.append(len(blocks))
        return encode_sequenced(blocks)

    monkeypatch.setattr(delivery, "encode_sequenced", counted)
    for first in (11, 111):
        journal.append(messages(first, 100))
        ready = fanout.publish(0.0)
        assert {s.handle for s in ready} == set(links)
        service(ready, 0.0)
        sent = links[0].writes[-1]
        assert all(link.writes[-1] is sent for link in links)  # the very same bytes object
    assert len(encodes) == 2  # once per publish, not once per subscriber
    for link in links:
        link.read(0.0)
        assert link.next == 211
    assert fanout.counters.messages_sent == 3 * 200
    assert fanout.counters.bytes_sent == 3 * 200 * PACKET


def test_the_servers_queue_for_all_clients_is_bounded_the_largest_holders_cut_first() -> None:
    """No client is over its own cap, but together they hold more than max_queued: those
    holding the most are cut, largest first, until the rest fit; a client that reads is never
    one of them, and what io holds for the rest is counted exactly."""
    journal = journal_of(10)
    limits = FanOutLimits(max_backlog=1 << 30, max_queued=250 * PACKET)
    fanout: FanOut[Link] = FanOut(journal, limits=limits)
    sleepers = [Link(fanout, 0.0) for _ in range(4)]  # never read
    reader = Link(fanout, 0.0)
    first = 11
    for tick in range(1, 6):
        journal.append(messages(first, 100))
        first += 100
        service(fanout.publish(float(tick)), float(tick))
        reader.read(float(tick))
        held = sum(link.sub.backlog for link in [*sleepers, reader] if link.sub.active)
        assert fanout.queued.bytes == held <= limits.max_queued, tick
    assert reader.sub.active and reader.next == first
    cut = [link for link in sleepers if link.sub.closed]
    assert len(cut) == fanout.counters.over_budget == fanout.counters.slow_consumers >= 3
    dropped = next(e for e in cut[0].events if isinstance(e, Dropped))
    assert f"over its {250 * PACKET} budget" in dropped.reason and "the most" in dropped.reason


def test_a_range_the_journal_cannot_read_back_is_never_served_the_client_is_told() -> None:
    """The journal spilled its first messages to a file whose bytes no longer match their
    checksums (the backing raises, as capture.journal's does): a client catching up through
    them is told why and closed; one at the live end is not touched."""
    journal = journal_of(0)
    journal.append(messages(1, 100))
    journal.append(messages(101, 100))

    def unreadable(offset: int, size: int) -> bytes:
        raise InputError(f"journal bytes {offset}-{offset + size} do not match their checksum")

    journal.backing = unreadable
    journal.spill(0, 100 * 14)  # the first piece is on file only
    fanout: FanOut[Link] = FanOut(journal)
    live = Link(fanout, 0.0)
    behind = Link(fanout, 0.0, sequence=1)
    grant(fanout, 0.0)  # its first turn
    reason = "journal bytes 0-1400 do not match their checksum"
    assert behind.sub.closed and behind.events[-2:] == [
        Dropped(reason, slow=False), Closed(CloseCause.LOCAL, reason)]
    behind.read(0.0)
    assert behind.next == 1 and behind.client_events[-1] == DebugReceived(reason.encode())
    assert fanout.counters.unreadable == 1 and fanout.counters.slow_consumers == 0
    live.read(0.0)
    assert live.sub.active and live.next == 201  # logged in at the live end


def test_a_subscriber_behind_catches_up_from_the_journal_and_joins_the_live_stream() -> None:
    journal = journal_of(1000)
    limits = FanOutLimits(chunk_messages=100)
    fanout: FanOut[Link] = FanOut(journal, limits=limits)
    behind = Link(fanout, 0.0, sequence=1, high_water=3 * 100 * PACKET)
    live = Link(fanout, 0.0)
    grant(fanout, 0.0)
    assert behind.sub.paused and behind.sub.cursor == 301  # its socket took three chunks
    first = 1001
    for _ in range(100):  # each round it reads three chunks of 100, the stream grows by 30
        if behind.sub.live:
            break
        journal.append(messages(first, 30))
        first += 30
        service(fanout.publish(1.0), 1.0)
        behind.read(1.0)
        live.read(1.0)
        grant(fanout, 1.0)
    assert behind.sub.live, f"never caught up: at {behind.sub.cursor} of {journal.next_sequence}"
    behind.read(1.0)  # (its last chunk may have filled its socket: then it is not pushed to)
    journal.append(messages(first, 30))
    service(fanout.publish(1.0), 1.0)
    assert behind.writes[-1] is live.writes[-1]  # caught up: pushed like everyone else
    behind.read(1.0)
    live.read(1.0)
    assert behind.next == live.next == first + 30  # Link.read saw no gap and no duplicate


def test_a_burst_too_big_to_push_is_pulled_from_the_journal_by_each_subscriber() -> None:
    journal = journal_of(10)
    fanout: FanOut[Link] = FanOut(journal, limits=FanOutLimits(chunk_messages=100))
    links = [Link(fanout, 0.0) for _ in range(2)]
    journal.append(messages(11, 250))
    ready = fanout.publish(0.0)
    assert not any(link.sub.live for link in links)
    service(ready, 0.0)
    assert all(len(link.writes) == 1 for link in links)  # nothing yet: their turns wait
    assert fanout.get_timer() == 0.0  # granted at once, after the loop has looked around
    grant(fanout, 0.0)
    for link in links:
        assert len(link.writes) == 1 + 3  # Login Accepted, then chunks of 100, 100, 50
        link.read(0.0)
        assert link.next == 261 and link.sub.live


def test_a_live_subscriber_over_max_backlog_is_told_why_and_closed_the_others_continue() -> None:
    journal = journal_of(10)
    limits = FanOutLimits(max_backlog=100 * PACKET, linger=2.0)
    fanout: FanOut[Link] = FanOut(journal, limits=limits)
    stuck, healthy = Link(fanout, 0.0), Link(fanout, 0.0)
    first = 11
    for tick in range(1, 6):
        journal.append(messages(first, 40))
        first += 40
        ready = fanout.publish(0.0)
        assert stuck.sub in ready or stuck.sub.closed
        service(ready, float(tick))
        healthy.read(float(tick))
    assert fanout.counters.slow_consumers == 1
    reason = f"slow consumer: {3 * 40 * PACKET + 33} bytes unsent, over the {100 * PACKET} cap"
    assert stuck.events[-2:] == [Dropped(reason), Closed(CloseCause.LOCAL, reason)]
    assert stuck.sub.closed and stuck.sub.reset_after == 2.0  # reset once it had the linger
    stuck.read(5.0)  # it wakes up: what was queued, then why it was dropped
    assert stuck.next == 131
    assert stuck.client_events[-1] == DebugReceived(reason.encode())
    assert healthy.next == first and healthy.sub.live
    stuck.sub.connection_lost()
    assert len(fanout) == 1 and fanout.subscribers == [healthy.sub]


def test_a_full_socket_leaves_the_push_path_and_what_it_lacks_waits_in_the_journal() -> None:
    journal = journal_of(0)
    limits = FanOutLimits(max_backlog=200 * PACKET)
    fanout: FanOut[Link] = FanOut(journal, limits=limits)
    stalled, healthy = Link(fanout, 0.0, high_water=30 * PACKET), Link(fanout, 0.0)
    first = 1

    def publish(now: float) -> list[Subscriber[Link]]:
        nonlocal first
        journal.append(messages(first, 20))
        first += 20
        ready = fanout.publish(now)
        service(ready, now)
        healthy.read(now)
        return ready

    publish(0.0)
    publish(0.0)  # 40 messages: its socket (as io holds it) is over the high-water mark
    assert stalled.sub.paused
    held = stalled.backlog
    for tick in range(1, 4):  # nothing more is written for it: the journal keeps it
        assert stalled.sub not in publish(float(tick))
    assert stalled.backlog == held and stalled.sub.phase is Phase.CATCHING_UP
    stalled.read(4.0)  # it drains: it pulls what it lacks in turns, then is pushed again
    grant(fanout, 4.0)
    stalled.read(4.0)
    assert stalled.sub.live and stalled.next == first
    publish(5.0)
    assert stalled.writes[-1] is healthy.writes[-1]
    publish(5.0)  # (its socket full again)
    held, lacks = stalled.backlog, 0
    for tick in range(6, 30):  # until what it lacks passes max_backlog: cut, told why
        if stalled.sub.closed:
            break
        assert stalled.backlog == held  # io holds no more than when it left the push path
        lacks = held + (first + 20 - stalled.sub.cursor) * PACKET  # after this publish
        publish(float(tick))
    reason = f"slow consumer: {lacks} bytes unsent, over the {200 * PACKET} cap"
    assert stalled.events[-2:] == [Dropped(reason), Closed(CloseCause.LOCAL, reason)]
    assert fanout.counters.slow_consumers == 1 and healthy.sub.live


def test_a_publish_looks_only_at_those_whose_socket_can_take_something() -> None:
    """A full socket parks its subscriber: no publish walks it or queues it for a turn (walked
    every publish, 1,000 clients that never read were a third of the plant's time), until its
    socket drains; then it pulls what it lacks and is live again."""
    journal = journal_of(0)
    fanout: FanOut[Link] = FanOut(journal, limits=FanOutLimits(max_backlog=1000 * PACKET))
    stalled = [Link(fanout, 0.0, high_water=30 * PACKET) for _ in range(50)]
    healthy = Link(fanout, 0.0)
    first = 1
    for _ in range(4):
        journal.append(messages(first, 20))
        first += 20
        service(fanout.publish(0.0), 0.0)
        healthy.read(0.0)
    assert all(link.sub.paused for link in stalled)
    assert not fanout.delivery.turns  # none waits for a turn it could not use
    assert list(fanout.delivery.flowing) == [healthy.sub]
    assert set(fanout.delivery.parked) == {link.sub for link in stalled}
    for link in stalled:
        link.read(1.0)  # drained: back on the walk, what it lacks pulled in turns
    grant(fanout, 1.0)
    for link in stalled:
        link.read(1.0)
        assert link.sub.live and link.next == first
    assert not fanout.delivery.parked and len(fanout.delivery.flowing) == 51


def test_logins_from_one_after_another_read_the_journal_once_between_them() -> None:
    """A chunk is kept for the next subscriber at the same place across publishes: logins
    from 1 arriving one after another each read back and encoded the journal's first chunk
    when chunks were kept for one publish only. A ring that let the messages go says so
    rather than serve them from what was kept."""
    journal = journal_of(500)
    fanout: FanOut[Link] = FanOut(journal, limits=FanOutLimits(chunk_messages=100))
    links: list[Link] = []
    for n in range(3):
        links.append(Link(fanout, float(n), sequence=1, high_water=50 * PACKET))
        grant(fanout, float(n))  # its first chunk: one turn, then its socket is full
        journal.append(messages(501 + 10 * n, 10))
        service(fanout.publish(float(n)), float(n))
    assert [link.sub.cursor for link in links] == [101, 101, 101]
    assert fanout.counters.chunks == 1
    links[0].read(3.0)  # drained: it reads 101-200 (kept), and its socket is full again
    grant(fanout, 3.0)
    assert links[0].sub.cursor == 201 and fanout.counters.chunks == 2
    journal.drop(keep=0)  # a ring's turn: 1-530 let go of
    links[1].read(3.0)
    grant(fanout, 3.0)
    assert links[1].sub.closed and fanout.counters.unreadable == 1
    links[1].read(3.0)
    assert links[1].next == 101 and any(
        isinstance(e, DebugReceived) and b"no longer held" in e.text
        for e in links[1].client_events)  # fmt: skip


def test_login_at_zero_starts_with_the_next_message_and_beyond_the_end_waits_for_it() -> None:
    journal = journal_of(50)
    fanout: FanOut[Link] = FanOut(journal)
    now, future = Link(fanout, 0.0), Link(fanout, 0.0, sequence=60)
    assert now.events == [Subscribed(b"", 51, UNSENT)]
    assert future.events == [Subscribed(b"", 60, UNSENT)]
    journal.append(messages(51, 5))
    assert [s.handle for s in fanout.publish(0.0)] == [now]  # 60 is not published yet
    journal.append(messages(56, 10))
    service(fanout.publish(0.0), 0.0)
    turns([now, future], 0.0)  # 60 onwards, pulled in its turn
    for link in (now, future):
        link.read(0.0)
        assert link.next == 66 and link.sub.live
    assert now.client_events == [LoggedIn(SESSION, 51)]
    assert future.client_events == [LoggedIn(SESSION, 60)]


def test_a_ring_serves_a_login_older_than_it_holds_from_its_oldest_and_says_so() -> None:
    journal = journal_of(0)
    for first in range(1, 200, 20):
        journal.append(messages(first, 20))
    journal.drop(keep=5 * 20 * 14)  # the newest five pieces: from 101
    fanout: FanOut[Link] = FanOut(journal, limits=FanOutLimits(chunk_messages=10))
    old, held = Link(fanout, 0.0, sequence=7), Link(fanout, 0.0, sequence=150)
    grant(fanout, 0.0)
    for link in (old, held):
        link.read(0.0)
        assert link.next == 201 and link.sub.live
    told = b"messages 7-100 are no longer held: served from 101"
    assert old.client_events == [LoggedIn(SESSION, 101), DebugReceived(told)]
    assert held.client_events == [LoggedIn(SESSION, 150)]
    assert fanout.counters.too_old == 1
    # One catching up when the ring moves past it is told why and closed; it resumes later.
    behind = Link(fanout, 0.0, sequence=101, high_water=40)  # its login, then a chunk
    grant(fanout, 0.0)
    journal.append(messages(201, 200))
    journal.drop(keep=5 * 20 * 14)
    assert behind.sub.paused and behind.sub.cursor == 111
    service(fanout.publish(0.0), 0.0)
    behind.read(0.0)
    grant(fanout, 0.0)
    assert behind.sub.closed and fanout.counters.unreadable == 1
    behind.read(0.0)  # what its last turn wrote
    assert any(isinstance(e, DebugReceived) and b"no longer held" in e.text
               for e in behind.client_events)  # fmt: skip


def test_end_of_session_comes_after_catching_up_and_for_later_logins() -> None:
    journal = journal_of(1000)
    fanout: FanOut[Link] = FanOut(journal, limits=FanOutLimits(chunk_messages=100))
    behind = Link(fanout, 0.0, sequence=1, high_water=2 * 100 * PACKET)
    live = Link(fanout, 0.0)
    assert [s.handle for s in fanout.end_session()] == [live]
    live.service(0.0)
    live.read(0.0)
    assert live.client_events[-1] == Closed(CloseCause.END_OF_SESSION, "session over at 1001")
    for _ in range(100):  # two chunks of 100 a read
        if behind.client.closed:
            break
        grant(fanout, 0.0)
        behind.read(0.0)
    assert behind.client.closed, f"no End of Session after catching up: at {behind.next}"
    assert behind.next == 1001
    assert behind.client_events[-1] == Closed(CloseCause.END_OF_SESSION, "session over at 1001")
    late = Link(fanout, 0.0, sequence=990)
    grant(fanout, 0.0)
    late.read(0.0)
    assert late.next == 1001 and late.client.closed
    assert fanout.counters.sessions_ended == 3


def test_a_catch_up_turn_yields_after_turn_bytes_and_turns_are_granted_a_tick_at_a_time(
) -> None:  # fmt: skip
    journal = journal_of(1000)
    chunk = 100 * PACKET
    fanout: FanOut[Link] = FanOut(journal, limits=FanOutLimits(
        chunk_messages=100, turn_bytes=2 * chunk, tick_bytes=2 * chunk))  # fmt: skip
    links = [Link(fanout, 5.0, sequence=1) for _ in range(2)]
    # Logged in from 1: answered, and nothing more until a turn is granted.
    assert all(link.sub.cursor == 1 and len(link.writes) == 1 for link in links)
    for tick, link in enumerate(links * 2):  # one turn a tick, in the order asked
        assert fanout.get_timer() == 0.0
        granted = []
        for subscriber in fanout.handle_timer(5.0):  # each serviced before the next is asked
            granted.append(subscriber)
            subscriber.handle.service(5.0)
        assert granted == [link.sub]  # the tick's bytes sent: the other waits for the next
        assert link.sub.cursor == (201 if tick < 2 else 401)  # a turn's two chunks, then yields
    journal.append(messages(1001, 10))
    assert fanout.publish(5.1) == []  # a publish leaves those behind to their turns
    assert all(link.sub.cursor == 401 for link in links)
    turns(links, 5.1)
    assert all(link.sub.cursor == 1011 for link in links)
    # A full socket stops the catch-up, whatever the turn; one that drains waits for the next.
    more = Link(fanout, 5.2, sequence=1)
    more.sub.pause(5.2)
    assert list(fanout.handle_timer(5.2)) == [] and more.sub.cursor == 1  # passed over, paused
    more.sub.resume()
    more.service(5.3)
    assert more.sub.cursor == 1 and list(fanout.handle_timer(5.3)) == [more.sub]
    more.service(5.3)
    assert more.sub.cursor == 201
    more.read(5.3)
    assert more.next == 201


def drain(subscriber: fanout_module.Subscriber[Any]) -> list[SubscriberEvent]:
    events: list[SubscriberEvent] = []
    while (event := subscriber.next_event()) is not None:
        events.append(event)
    return events


def test_failed_logins_and_broken_protocol_are_counted_and_never_subscribed() -> None:
    fanout: FanOut[Any] = FanOut(journal_of(5), (b"", b"secret"), login_timeout=1.0)
    rejected = Link(fanout, 0.0, password=b"wrong")
    assert rejected.events == [Closed(CloseCause.LOGIN_REJECTED, "rejected with b'A'")]
    silent = fanout.connect("silent", 0.0)
    assert silent.get_timer() == 1.0
    silent.handle_timer(1.0)
    assert drain(silent) == [Closed(CloseCause.LOGIN_TIMEOUT, "no Login Request in time")]
    junk = fanout.connect("junk", 0.0)
    login = SoupClientSession(0.0, password=b"secret").data_to_send(0.0)
    junk.receive_data(login + b"\x00\x01Q", 0.0)  # the login, then an unknown packet type
    assert [type(e) for e in drain(junk)] == [ProtocolViolated, Closed]
    counters = fanout.counters
    assert (counters.rejected, counters.timeouts, counters.protocol_errors) == (1, 1, 1)
    assert counters.logins == 0 and counters.connections == 3


def _refused(link: Link) -> str:
    """The Debug text a refused connection was sent before its close."""
    link.read(0.0)
    debug = [e for e in link.client_events if isinstance(e, DebugReceived)]
    assert link.sub.closed and not link.sub.active and debug, link.client_events
    return debug[0].text.decode()


def test_connections_over_the_limits_are_told_why_and_closed() -> None:
    limits = FanOutLimits(max_connections=3, max_per_address=2)
    fanout: FanOut[Any] = FanOut(journal_of(5), limits=limits)

    def refused(address: str) -> str:
        link = Link(fanout, 0.0, address=address)
        why = _refused(link)
        link.sub.connection_lost()  # io closes it once the Debug is out
        return why

    a1, a2 = Link(fanout, 0.0, address="10.0.0.1"), Link(fanout, 0.0, address="10.0.0.1")
    assert "too many connections from 10.0.0.1" in refused("10.0.0.1")
    b = Link(fanout, 0.0, address="10.0.0.2")
    assert b.sub.active and a1.sub.active and a2.sub.active
    assert "the server is full: 3 connections" in refused("10.0.0.3")
    a1.sub.connection_lost()  # a place frees up, for its address too
    assert Link(fanout, 0.0, address="10.0.0.1").sub.active
    assert fanout.counters.refused == 2 and len(fanout) == 3


def test_without_users_only_loopback_clients_are_served() -> None:
    fanout: FanOut[Any] = FanOut(journal_of(5), local_only=True)
    assert Link(fanout, 0.0, address="127.0.0.1").sub.active
    assert Link(fanout, 0.0, address="::1").sub.active
    assert "only clients on the plant's host" in _refused(Link(fanout, 0.0, address="10.1.2.3"))


def test_an_address_with_too_many_failed_logins_is_throttled_for_a_while() -> None:
    limits = FanOutLimits(failed_logins=3, throttle=10.0)
    fanout: FanOut[Any] = FanOut(journal_of(5), (b"", b"secret"), limits)
    for t in (0.0, 1.0, 2.0):
        Link(fanout, t, password=b"wrong", address="10.9.9.9")
    assert fanout.counters.rejected == 3
    assert "too many failed logins" in _refused(Link(fanout, 3.0, password=b"secret",
                                                      address="10.9.9.9"))
    assert Link(fanout, 3.0, password=b"secret", address="10.9.9.8").sub.active  # others: fine
    assert Link(fanout, 10.5, password=b"secret", address="10.9.9.9").sub.active  # aged out
    assert fanout.counters.refused == 1


def test_a_socket_that_takes_nothing_past_the_write_deadline_is_a_slow_consumer() -> None:
    limits = FanOutLimits(write_deadline=2.0)
    fanout: FanOut[Link] = FanOut(journal_of(0), limits=limits)
    stuck, fine = Link(fanout, 0.0, sequence=1), Link(fanout, 0.0, sequence=1)
    for link in (stuck, fine):
        link.sub.pause(1.0)  # both sockets fill up
    fine.sub.resume()  # this one drains in time
    for now in (1.5, 2.0, 2.9, 3.0):
        for link in (stuck, fine):
            link.sub.handle_timer(now)
            link.service(now)
        dropped = [e for e in stuck.events if isinstance(e, Dropped)]
        cut = [Dropped("slow consumer: nothing taken for 2.0 s")]
        assert dropped == (cut if now == 3.0 else [])
    assert stuck.sub.closed and stuck.sub.reset_after == limits.linger
    assert fine.sub.active and fanout.counters.slow_consumers == 1


def test_password_checks_in_flight_count_toward_the_throttle_and_are_capped() -> None:
    from tickerplant.distribute.fanout import CheckPassword

    limits = FanOutLimits(failed_logins=3, max_checks=2)
    fanout: FanOut[Any] = FanOut(journal_of(5), limits=limits, users={b"alice": "stored"})

    def login(address: str, now: float = 0.0) -> Link:
        return Link(fanout, now, password=b"guess", address=address, username=b"alice")

    a, b = login("10.0.0.1"), login("10.0.0.2")
    assert [e for e in a.events if isinstance(e, CheckPassword)]  # io is asked to check
    assert "busy checking other logins" in _refused(login("10.0.0.3"))  # two under way
    a.sub.password_checked(False, 0.1)
    b.sub.password_checked(True, 0.1)
    assert a.sub.closed and b.sub.active and fanout.counters.rejected == 1
    # 10.0.0.1: one failure counted once; two more checks in flight reach the throttle.
    c, d = login("10.0.0.1"), login("10.0.0.1")
    assert "too many failed logins" in _refused(login("10.0.0.1"))
    c.sub.password_checked(True, 0.2)  # a success forgives the address its failures
    d.sub.password_checked(False, 0.2)
    assert login("10.0.0.1", 0.3).sub.session.state.value == "login received"


def test_the_next_sessions_fan_out_keeps_the_servers_counters_and_throttle() -> None:
    limits = FanOutLimits(failed_logins=2, throttle=10.0)
    first: FanOut[Any] = FanOut(journal_of(5), (b"", b"secret"), limits)
    Link(first, 0.0, password=b"wrong", address="10.0.0.9")
    Link(first, 0.0, password=b"secret", address="10.0.0.1")
    second = first.successor(Journal(b"FANOUT0002"))
    assert second.counters is first.counters and second.counters.logins == 1
    Link(second, 1.0, password=b"wrong", address="10.0.0.9")  # its second failure in 10 s
    assert "too many failed logins" in _refused(Link(second, 2.0, address="10.0.0.9"))
    assert second.counters.rejected == 2  # counters go on, never back to zero


def test_past_the_publish_budget_the_rest_pull_the_batch_on_the_next_turn_in_rotation() -> None:
    journal = journal_of(10)
    fanout: FanOut[Link] = FanOut(journal, limits=FanOutLimits(publish_bytes=1))
    links = [Link(fanout, 0.0) for _ in range(3)]
    firsts = []
    for first in (11, 111, 211):
        journal.append(messages(first, 100))
        ready = fanout.publish(0.0)
        service(ready, 1.0)
        pushed = [link for link in links if link.sub.cursor == first + 100]
        assert len(pushed) == 1  # the budget: one push, the others wait for their turn
        firsts.append(pushed[0])
        assert fanout.get_timer() == 0.0  # due at once: after the loop looks around
        grant(fanout, 1.0)
        assert all(link.sub.cursor == first + 100 for link in links)
        for link in links:
            link.read(1.0)  # every message once, in order (Link checks)
    assert len(set(firsts)) == 3  # a different one first each time
    assert fanout.counters.deferred == 6


def test_live_ones_past_the_budget_take_their_turns_before_those_catching_up() -> None:
    journal = journal_of(1000)
    limits = FanOutLimits(publish_bytes=1, chunk_messages=100, tick_bytes=1)
    fanout: FanOut[Link] = FanOut(journal, limits=limits)
    early = [Link(fanout, 0.0, sequence=1) for _ in range(3)]  # waiting for turns from 1
    live = [Link(fanout, 0.0) for _ in range(3)]
    journal.append(messages(1001, 10))
    pushed = fanout.publish(0.0)
    service(pushed, 0.0)
    deferred = [link.sub for link in live if link.sub not in pushed]
    assert len(deferred) == 2
    # A tick of one byte grants one turn: the live ones left by the budget first, in the
    # order the publish would have pushed them, then those from 1.
    granted = []
    for _ in range(3):
        for subscriber in fanout.handle_timer(0.0):
            subscriber.handle.service(0.0)
            granted.append(subscriber)
    assert granted == [*deferred, early[0].sub]
    assert all(subscriber.live for subscriber in deferred)


def test_a_tick_grants_few_turns_however_little_each_sends() -> None:
    journal = journal_of(10)
    limits = FanOutLimits(publish_bytes=1, tick_bytes=3 * delivery.GRANT_BYTES)
    fanout: FanOut[Link] = FanOut(journal, limits=limits)
    links = [Link(fanout, 0.0) for _ in range(10)]
    journal.append(messages(11, 1))  # 15 bytes each: one is pushed, nine deferred
    service(fanout.publish(0.0), 0.0)
    ticks = []
    while fanout.get_timer() is not None:
        granted = list(fanout.handle_timer(0.0))
        for subscriber in granted:
            subscriber.handle.service(0.0)
        ticks.append(len(granted))
    # Servicing a client costs the loop whatever it sends: three a tick, not nine.
    assert ticks == [3, 3, 3] and all(link.sub.live for link in links)


def test_delivery_latency_runs_from_the_publish_to_the_write_that_takes_it() -> None:
    journal = journal_of(10)
    fanout: FanOut[Link] = FanOut(journal)
    quick, late = Link(fanout, 0.0, sequence=11), Link(fanout, 0.0, sequence=11)
    journal.append(messages(11, 5))
    ready = fanout.publish(1.0)
    quick.service(1.0005)  # taken half a millisecond after the publish
    late.service(1.25)  # the loop got to this one a quarter of a second later
    assert {s.handle for s in ready} == {quick, late}
    figures = fanout.delivery.latency.figures()
    assert figures["count"] == 2
    assert abs(figures["sum"] - 0.2505) < 1e-9  # type: ignore[operator]
    buckets = dict((str(b), n) for b, n in figures["buckets"])  # type: ignore[attr-defined]
    assert buckets["0.0005"] == 1 and buckets["0.25"] == 2
    late.service(2.0)  # nothing more to write: nothing more measured
    assert fanout.delivery.latency.figures()["count"] == 2
