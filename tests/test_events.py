"""The events stream: records from the books, and the fan-out's symbol subscriptions and slow
consumer policies on them, on a fake clock (no socket, no sleep)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from test_book_engine import directory, stream
from test_fanout import Link, grant
from tickerplant.book import BookEngine
from tickerplant.book.normalize import images, records
from tickerplant.client.subscribe import Conflated, Events
from tickerplant.client.subscribe import _events as client_records
from tickerplant.client.subscribe import _resumed as resumed
from tickerplant.distribute.fanout import (
    BuildImages,
    FanOut,
    FanOutLimits,
    Lagging,
    Phase,
    Policy,
    Subscribed,
)
from tickerplant.distribute.fanout.limits import CONFLATE_INTERVAL, UNSENT
from tickerplant.distribute.journal import Journal
from tickerplant.distribute.selection import conflate
from tickerplant.distribute.stream import EventStream
from tickerplant.exchange.synthetic import SyntheticMarket
from tickerplant.receive.events import Batch
from tickerplant.session.soupbin import CloseCause, Closed, DebugReceived
from tickerplant.wire import events as ev
from tickerplant.wire import itch
from tickerplant.wire.blocks import iter_messages
from tickerplant.wire.soupbintcp import LogoutRequest, encode
from tickerplant.wire.soupbintcp import UnsequencedData as Request

SESSION = b"EVENTS0001"


def decoded(blocks: bytes) -> npt.NDArray[np.void]:
    out = ev.decode(b"".join(iter_messages(blocks)))  # the slow way, message by message
    assert out.tobytes() == ev.from_blocks(blocks).tobytes()  # and the one the client takes
    return out


def test_the_books_events_come_out_in_message_order_numbered_with_their_source() -> None:
    engine = BookEngine()
    engine.process(stream(directory(5, "ZVZZT"), directory(6, "QQQ")))
    batch = engine.process(stream(
        itch.AddOrder(5, 0, 10, 1, "B", 100, "ZVZZT", 99_5000),  # itch 101: BBO
        itch.StockTradingAction(6, 0, 11, "QQQ", "H", " ", "LUDP"),  # 102: status
        itch.AddOrder(6, 0, 12, 2, "S", 10, "QQQ", 10_0000),  # 103: BBO
        itch.OrderExecuted(5, 0, 13, 1, 100, 77),  # 104: trade, then the BBO it emptied
    ))  # fmt: skip
    count, blocks = records(batch, 41, 101)
    out = decoded(blocks)
    assert count == 5 and len(blocks) == 5 * ev.BLOCK_SIZE
    # Given the block stream, each Stock Directory in it names its locate in place.
    more = stream(directory(7, "SPY"), itch.AddOrder(7, 0, 14, 3, "B", 1, "SPY", 1))
    both = decoded(records(engine.process(more), 46, 105, more)[1])
    assert both["kind"].tolist() == [b"y", b"b"] and both["source"].tolist() == [105, 106]
    assert ev.view(both, ev.SYMBOL)[["locate", "symbol"]].tolist() == [(7, b"SPY     ")]
    assert out["kind"].tolist() == [b"b", b"s", b"b", b"t", b"b"]
    assert out["sequence"].tolist() == [41, 42, 43, 44, 45]
    assert out["source"].tolist() == [101, 102, 103, 104, 104]
    assert out["locate"].tolist() == [5, 6, 6, 5, 5]
    trade = ev.view(out, ev.TRADE)[0]
    assert (trade["price"], trade["size"], trade["match"], trade["side"], trade["trade"]) == (
        99_5000, 100, 77, ord("B"), ord("E"))
    bbo = ev.view(out, ev.BBO)
    assert bbo[["bid_price", "bid_size", "ask_price", "ask_size"]].tolist() == [
        (99_5000, 100, 0, 0), (0, 0, 10_0000, 10), (0, 0, 0, 0)]
    status = ev.view(out, ev.STATUS)[0]
    assert (status["status"], status["code"], bytes(status["reason"])) == (
        ord("H"), ord("H"), b"LUDP")
    assert records(engine.process(b""), 48, 107) == (0, b"")


def test_an_image_is_a_symbols_bbo_status_and_depth_as_of_the_numbers_it_names() -> None:
    engine = BookEngine()
    engine.process(stream(
        itch.SystemEvent(0, 0, 1, "Q"), directory(5, "ZVZZT"),
        itch.StockTradingAction(5, 0, 2, "ZVZZT", "T", " ", "    "),
        itch.AddOrder(5, 0, 3, 1, "B", 100, "ZVZZT", 99_0000),
        itch.AddOrder(5, 0, 4, 2, "B", 50, "ZVZZT", 99_5000),
        itch.AddOrder(5, 0, 5, 3, "S", 70, "ZVZZT", 100_0000),
    ))  # fmt: skip
    out = decoded(images(engine, [5], 9, 6, depth=5))
    assert (out["flags"] == ev.IMAGE).all() and (out["sequence"] == 9).all()
    assert (out["source"] == 6).all()
    assert out["kind"].tolist() == [b"y", b"b", b"s", b"d", b"d", b"d", b"s", b"i"]
    imaged = ev.view(out, ev.IMAGED)  # the end: one symbol's images, up to 9
    assert imaged[["first", "count"]].tolist() == [(10, 1)]
    assert ev.view(out, ev.SYMBOL)["symbol"].tolist() == [b"ZVZZT   "]
    depth = ev.view(out, ev.DEPTH)
    assert depth[["side", "level", "price", "size", "orders"]].tolist() == [
        (ord("B"), 0, 99_5000, 50, 1), (ord("B"), 1, 99_0000, 100, 1),
        (ord("S"), 0, 100_0000, 70, 1)]
    status = ev.view(out, ev.STATUS)
    assert status[["locate", "status", "code"]].tolist() == [(5, ord("H"), ord("T")),
                                                            (0, ord("S"), ord("Q"))]


def test_images_of_many_symbols_are_each_ones_image_in_the_order_asked() -> None:
    """Built for all the locates at once: the same records as each locate's own image, in the
    order asked (an unknown locate: its symbol blank, no BBO, no depth), one market status,
    one end."""
    engine = BookEngine()
    engine.process(b"".join(SyntheticMarket(3, 40).chunks(30_000)))
    asked = [*sorted(engine.symbols())[::-3], 999, 2]  # the order asked, not the locates'
    for depth in (0, 3):
        whole = images(engine, asked, 77, 55, depth)
        alone = [images(engine, [locate], 77, 55, depth) for locate in asked]
        market = alone[0][-2 * ev.BLOCK_SIZE : -ev.BLOCK_SIZE]
        assert decoded(market)["kind"].tolist() == [b"s"]
        end = ev.view(decoded(whole[-ev.BLOCK_SIZE :]), ev.IMAGED)
        assert end[["kind", "first", "count"]].tolist() == [(b"i", 78, len(asked))]
        assert whole[: -ev.BLOCK_SIZE] == b"".join(a[: -2 * ev.BLOCK_SIZE] for a in alone) + market
    assert sum(decoded(whole)["kind"] == b"d") > len(asked)  # depth there to be ordered


# --- the fan-out on an events journal -----------------------------------------------------


def bbo(sequence: int, locate: int, bid: int) -> bytes:
    block = ev.blocks(ev.BBO, 1)
    block["sequence"], block["source"], block["locate"], block["bid_price"] = (
        sequence, 1000 + sequence, locate, bid)
    return block.tobytes()


def trade(sequence: int, locate: int, price: int, size: int = 0, broken: bool = False) -> bytes:
    block = ev.blocks(ev.TRADE, 1)
    block["sequence"], block["source"], block["locate"], block["price"] = (
        sequence, 1000 + sequence, locate, price)
    block["size"], block["trade"] = size, ev.BROKEN if broken else ord("E")
    return block.tobytes()


def status(sequence: int, locate: int) -> bytes:
    block = ev.blocks(ev.STATUS, 1)
    block["sequence"], block["source"], block["locate"] = sequence, 1000 + sequence, locate
    block["status"] = ord("H")
    return block.tobytes()


class Catalog:
    """The books as the fan-out asks for them, for three symbols: an image is a BBO."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.symbols = {b"AAA     ": 1, b"BBB     ": 2, b"CCC     ": 3}

    def locate(self, symbol: bytes) -> int | None:
        return self.symbols.get(symbol)

    def locates(self) -> list[int]:
        return sorted(self.symbols.values())

    def images(self, locates: list[int]) -> Callable[[], bytes]:
        out = b""
        for locate in locates:  # the state now: what the journal holds
            block = ev.blocks(ev.BBO, 1)
            block["flags"], block["locate"] = ev.IMAGE, locate
            block["sequence"] = len(self.journal)
            out += block.tobytes()
        return lambda: out


class EventLink(Link):
    """A client of an events fan-out: keeps every record it reads. Its catch-up turns are
    granted after each thing it does (as io's Turns does at the loop's next turn): these tests
    are of what it is sent, not of when."""

    def __init__(self, fanout: FanOut[Any], now: float, sequence: int = 0, **kw: Any) -> None:
        self.records: list[tuple[Any, ...]] = []
        self.hold_images = False  # io has not built them yet: build_images() does
        super().__init__(fanout, now, sequence, **kw)
        grant(fanout, now)

    def service(self, now: float) -> None:
        super().service(now)
        if not self.hold_images:
            self.build_images(now)

    def build_images(self, now: float) -> None:
        """What io does with BuildImages (off the loop, there): build, hand back, service."""
        asked = [e for e in self.events if isinstance(e, BuildImages)]
        self.events = [e for e in self.events if not isinstance(e, BuildImages)]
        for event in asked:
            self.sub.images_built(event.number, event.build())
        if asked:
            self.service(now)

    def request(self, message: bytes, now: float) -> None:
        self.sub.receive_data(encode(Request(message)), now)
        self.service(now)
        grant(self.sub.fanout, now)

    def read(self, now: float) -> None:
        for data in self.unread:
            self.client.receive_data(data, now)
        self.unread.clear()
        while (event := self.client.next_event()) is not None:
            if isinstance(event, Batch):
                out = decoded(event.blocks)
                self.records += out[["kind", "flags", "sequence", "locate"]].tolist()
                self.raw = out
            else:
                self.client_events.append(event)
        if self.sub.paused:
            self.sub.resume()
            self.service(now)
        grant(self.sub.fanout, now)

    def kinds(self) -> list[bytes]:
        return [r[0] for r in self.records]


def events_fanout(journal: Journal, **kw: Any) -> FanOut[EventLink]:
    return FanOut(journal, catalog=Catalog(journal), **kw)


def publish(fanout: FanOut[EventLink], journal: Journal, *blocks: bytes, now: float = 0.0) -> None:
    journal.append(b"".join(blocks))
    for subscriber in fanout.publish(now):
        subscriber.handle.service(now)
    grant(fanout, now)


def test_a_narrowed_client_gets_its_symbols_and_the_market_each_group_encoded_once() -> None:
    journal = Journal(SESSION)
    fanout = events_fanout(journal)
    every, narrow, twin = (EventLink(fanout, 0.0) for _ in range(3))
    for link in (narrow, twin):
        link.request(b"+AAA     CCC     ", 0.0)
    groups = [link.sub.subscription.group for link in (narrow, twin, every)]
    assert groups[0] == groups[1] != groups[2]
    notice = ev.notice(ev.LOST, 5, 77, 77, 3, 3)
    publish(fanout, journal, bbo(1, 1, 10), bbo(2, 2, 20), trade(3, 3, 30), bbo(4, 2, 21), notice)
    assert narrow.writes[-1] is twin.writes[-1]  # one encoding for the group
    for link in (every, narrow, twin):
        link.read(0.0)
    assert [r[2] for r in every.records[-5:]] == [1, 2, 3, 4, 5]
    # Images first (as of the journal then: empty), then the two symbols and the notice.
    assert narrow.records == [(b"b", 1, 0, 1), (b"b", 1, 0, 3), (b"b", 0, 1, 1),
                              (b"t", 0, 3, 3), (b"l", 0, 5, 0)]
    narrow.request(b"-AAA     ", 0.0)
    narrow.request(b"+BBB     ", 0.0)  # an image of BBB as of 5, then only its updates
    publish(fanout, journal, bbo(6, 1, 11), bbo(7, 2, 22), trade(8, 3, 31))
    narrow.read(0.0)
    assert narrow.records[5:] == [(b"b", 1, 5, 2), (b"b", 0, 7, 2), (b"t", 0, 8, 3)]
    narrow.request(b"*", 0.0)
    publish(fanout, journal, bbo(9, 1, 12))
    narrow.read(0.0)
    assert narrow.records[-1] == (b"b", 0, 9, 1)
    assert fanout.counters.subscriptions == 5


def test_every_symbol_asked_for_at_the_live_end_is_a_snapshot_of_those_not_had() -> None:
    """``*`` at the live end: the images of every symbol the client had not asked for by name
    (all, for one never narrowed; with the login too), then the updates; resuming: none."""
    journal = Journal(SESSION)
    fanout = events_fanout(journal)
    publish(fanout, journal, bbo(1, 1, 10), bbo(2, 2, 20))
    every, narrow = EventLink(fanout, 0.0), EventLink(fanout, 0.0)
    narrow.request(b"+BBB     ", 0.0)
    for link in (every, narrow):
        link.request(b"*", 0.0)
    with_login = EventLink(fanout, 0.0, with_login=encode(Request(b"*")))
    resuming = EventLink(fanout, 0.0, sequence=2, with_login=encode(Request(b"*")))
    publish(fanout, journal, bbo(3, 3, 30))
    for link in (every, narrow, with_login, resuming):
        link.read(0.0)
    images = [(b"b", 1, 2, locate) for locate in (1, 2, 3)]
    assert every.records == with_login.records == [*images, (b"b", 0, 3, 3)]
    assert narrow.records == [images[1], images[0], images[2], (b"b", 0, 3, 3)]
    assert resuming.records == [(b"b", 0, 2, 2), (b"b", 0, 3, 3)]


def test_images_built_off_the_loop_go_first_in_the_order_asked_and_nothing_passes_them() -> None:
    journal = Journal(SESSION)
    fanout = events_fanout(journal)
    link = EventLink(fanout, 0.0)
    link.hold_images = True
    link.request(b"+AAA     ", 0.0)
    publish(fanout, journal, bbo(1, 1, 10))  # meanwhile: it waits in the journal for the image
    link.request(b"+BBB     ", 0.0)
    publish(fanout, journal, bbo(2, 2, 20), bbo(3, 1, 11))
    fanout.end_session()
    link.read(0.0)
    assert link.records == [] and not link.sub.live and link.sub.imaging
    first, second = [e for e in link.events if isinstance(e, BuildImages)]
    link.events.clear()
    link.sub.images_built(second.number, second.build())  # the second is built first
    link.service(0.0)
    link.read(0.0)
    assert link.records == []  # it waits for the first
    link.sub.images_built(first.number, first.build())
    link.service(0.0)
    grant(fanout, 0.0)  # what was published meanwhile: in its turn
    link.read(0.0)
    # AAA's image as of nothing, BBB's as of 1; then AAA's update 1 (after its image) and
    # both updates since; then End of Session, only now.
    assert link.records == [(b"b", 1, 0, 1), (b"b", 1, 1, 2), (b"b", 0, 1, 1), (b"b", 0, 2, 2),
                            (b"b", 0, 3, 1)]
    assert not link.sub.imaging and link.sub.closed


def test_a_tick_is_bounded_for_a_client_whose_symbols_a_journal_lacks() -> None:
    """A client narrowed to a symbol with no records, from 1: each chunk is read and nothing
    sent. The tick is charged what was read, so one grant reads a few chunks, not the whole
    journal (a review found the tick charged only bytes sent: all 1,000 chunks in one)."""
    journal = Journal(SESSION)
    journal.append(b"".join(bbo(n, 1, n) for n in range(1, 10_001)))
    limits = FanOutLimits(chunk_messages=10, turn_bytes=1080, tick_bytes=2160)
    fanout = events_fanout(journal, limits=limits)
    Link(fanout, 0.0, sequence=1, with_login=encode(Request(b"+CCC     ")))
    chunks = fanout.counters.chunks
    for subscriber in fanout.handle_timer(0.0):
        subscriber.handle.service(0.0)
    assert fanout.counters.chunks - chunks <= 5  # 540 bytes read a chunk: a tick's 2,160


def test_a_client_resuming_narrowed_gets_its_symbols_from_its_number_without_images() -> None:
    journal = Journal(SESSION)
    journal.append(b"".join(bbo(n, 1 + n % 3, n) for n in range(1, 31)))
    fanout = events_fanout(journal, limits=FanOutLimits(chunk_messages=4))
    # The request goes with the login, before it is accepted: it narrows the replay.
    late = EventLink(fanout, 0.0, sequence=11, with_login=encode(Request(b"+BBB     ")))
    late.read(0.0)
    assert [r[2] for r in late.records] == [n for n in range(11, 31) if 1 + n % 3 == 2]
    assert all(r[1] == 0 for r in late.records)  # no image: it resumes, it has the state


def test_bad_requests_are_told_and_closed_unknown_symbols_only_told() -> None:
    journal = Journal(SESSION)
    fanout = events_fanout(journal)
    link = EventLink(fanout, 0.0)
    link.request(b"+ZZZ     ", 0.0)
    link.read(0.0)
    assert DebugReceived(b"unknown symbols (not in today's Stock Directory): ZZZ") in (
        link.client_events)
    assert link.sub.active
    for bad in (b"+AAA", b"?AAA     ", b"*AAA     "):
        other = EventLink(fanout, 0.0)
        other.request(bad, 0.0)
        other.read(0.0)
        assert other.sub.closed
        assert any(isinstance(e, DebugReceived) and b"subscription request" in e.text
                   for e in other.client_events)  # fmt: skip
    itch_fanout: FanOut[EventLink] = FanOut(Journal(SESSION))
    plain = EventLink(itch_fanout, 0.0)
    plain.request(b"+AAA     ", 0.0)
    assert plain.sub.closed  # the itch stream takes no requests
    assert fanout.counters.protocol_errors == 3
    # A request and a Logout in one read: the session is closed by the time the request is
    # seen, and nothing is answered (answering raised, from inside the connection's callback).
    for request in (b"+ZZZ     ", b"?AAA     "):
        leaving = EventLink(fanout, 0.0)
        leaving.sub.receive_data(encode(Request(request)) + encode(LogoutRequest()), 0.0)
        leaving.service(0.0)
        assert leaving.sub.closed
        assert Closed(CloseCause.LOGOUT, "the client logged out") in leaving.events
    assert fanout.counters.protocol_errors == 3


def test_conflate_keeps_each_symbols_latest_bbo_and_summarises_its_trades() -> None:
    data = b"".join([bbo(1, 1, 10), bbo(2, 2, 20), trade(3, 1, 11, 100), bbo(4, 1, 12),
                     trade(5, 2, 21, 5), status(6, 1), trade(7, 1, 13, 50), trade(8, 1, 9, 1),
                     trade(9, 1, 12, 0, broken=True), bbo(10, 1, 13), bbo(11, 2, 22)])
    count, kept, dropped = conflate(data)
    out = decoded(kept)
    # Symbol 1: its status, the broken trade and its last BBO as they were; its three trades
    # as one summary where the last was. Symbol 2: its lone trade as itself, its last BBO.
    assert out["kind"].tolist() == [b"t", b"s", b"T", b"t", b"b", b"b"]
    assert out["sequence"].tolist() == [5, 6, 8, 9, 10, 11]
    assert (count, dropped) == (6, 11 - 6)
    (summary,) = ev.view(out, ev.TRADES).tolist()
    # kind, flags, sequence, source, locate, timestamp, count, volume, last, high, low
    assert summary == (b"T", 0, 8, 1008, 1, 0, 3, 151, 9, 13, 9)
    assert conflate(bbo(1, 1, 10)) == (1, bbo(1, 1, 10), 0)
    plain = bbo(1, 1, 10) + trade(2, 1, 10, 1) + bbo(3, 2, 10)
    assert conflate(plain) == (3, plain, 0)  # nothing to conflate: the same bytes


def test_a_conflated_run_leaves_a_client_with_the_state_and_every_trade() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        kinds = rng.choice([ev.BBO, ev.TRADE, ev.STATUS], n, p=[0.6, 0.35, 0.05])
        locates = rng.integers(1, 6, n)
        data = b"".join(
            bbo(i, int(loc), int(rng.integers(1, 10**6))) if k == ev.BBO
            else trade(i, int(loc), int(rng.integers(1, 10**6)), int(rng.integers(1, 10**4)),
                       broken=rng.random() < 0.05) if k == ev.TRADE
            else status(i, int(loc))
            for i, (k, loc) in enumerate(zip(kinds, locates, strict=True), start=1))
        count, kept, dropped = conflate(data)
        assert count + dropped == n and len(kept) == count * ev.BLOCK_SIZE
        assert held(decoded(kept)) == held(decoded(data))


def held(out: npt.NDArray[np.void]) -> dict[str, dict[int, Any]]:
    """What a client holds after these records: each symbol's last BBO and last trade price, its
    trades' count and volume (summaries included), and its statuses and broken trades."""
    state: dict[str, dict[int, Any]] = {"bbo": {}, "last": {}, "count": {}, "volume": {},
                                        "other": {}}
    for row in out:
        kind, loc = bytes(row["kind"]), int(row["locate"])
        one = row.reshape(1)
        if kind == ev.BBO:
            state["bbo"][loc] = int(one.view(ev.RECORDS[ev.BBO])["bid_price"][0])
        elif kind == ev.TRADE and one.view(ev.RECORDS[ev.TRADE])["trade"][0] != ev.BROKEN:
            t = one.view(ev.RECORDS[ev.TRADE])[0]
            state["last"][loc] = int(t["price"])
            state["count"][loc] = state["count"].get(loc, 0) + 1
            state["volume"][loc] = state["volume"].get(loc, 0) + int(t["size"])
        elif kind == ev.TRADES:
            t = one.view(ev.RECORDS[ev.TRADES])[0]
            state["last"][loc] = int(t["last"])
            state["count"][loc] = state["count"].get(loc, 0) + int(t["count"])
            state["volume"][loc] = state["volume"].get(loc, 0) + int(t["volume"])
        else:
            state["other"].setdefault(loc, []).append(int(row["sequence"]))
    return state


def lagging(policy: Policy) -> tuple[FanOut[EventLink], Journal, EventLink, EventLink]:
    """A fan-out with a fast client and a slow one (user ``slow``, under ``policy``), the slow
    one just gone over the backlog cap."""
    journal = Journal(SESSION)
    fanout = events_fanout(journal, limits=FanOutLimits(max_backlog=3000),
                           policies={b"slow": policy})  # fmt: skip
    fast = EventLink(fanout, 0.0)
    slow = EventLink(fanout, 0.0, username=b"slow", high_water=1000)
    for n in range(0, 60, 20):  # 20 records a batch: 1,100 bytes
        publish(fanout, journal, *(bbo(n + i, 1 + i % 2, n + i) for i in range(1, 21)))
        fast.read(0.0)
    told = slow.events[-1]
    phase = Phase.CONFLATED if policy is Policy.CONFLATE else Phase.SKIPPING
    assert slow.sub.phase is phase and isinstance(told, Lagging) and told.policy is policy
    assert "over the 3000 cap" in told.reason
    return fanout, journal, fast, slow


def test_a_conflated_slow_consumer_gets_rounds_of_the_latest_until_an_interval_is_quiet() -> None:
    fanout, journal, fast, slow = lagging(Policy.CONFLATE)
    publish(fanout, journal, *(bbo(60 + i, 1 + i % 2, 60 + i) for i in range(1, 21)),
            trade(81, 1, 5, 10), trade(82, 1, 6, 20), bbo(83, 1, 83), now=1.0)  # fmt: skip
    fast.read(1.0)
    slow.read(1.2)  # takes what was queued; its socket drained, the round goes
    slow.read(1.2)
    kinds = slow.kinds()
    assert kinds.count(b"c") == 1
    at = kinds.index(b"c")
    notice = ev.view(slow.raw, ev.CONFLATED)[0]
    first, count, dropped = int(notice["first"]), int(notice["count"]), int(notice["dropped"])
    # Everything up to where it lagged, then the notice, then symbol 2's latest BBO, symbol
    # 1's two trades as one summary and its latest BBO.
    assert [r[2] for r in slow.records[:at]] == list(range(1, first))
    assert first + count == 84 and dropped == fanout.counters.conflated_updates
    assert [r[:3] for r in slow.records[at + 1 :]] == [(b"b", 0, 79), (b"T", 0, 82),
                                                       (b"b", 0, 83)]  # fmt: skip
    assert dropped == count - 3 and fanout.counters.conflating == 1
    # The picture it had before the round was 1.2 s old: its socket full, it was not pushed the
    # publish at 0.0 that took it over the cap.
    assert fanout.delivery.staleness.figures()["max"] == pytest.approx(1.2)
    # Still conflated: the next publish waits for the next round, an interval on.
    publish(fanout, journal, bbo(84, 2, 84), bbo(85, 2, 85), now=1.25)
    assert slow.sub.phase is Phase.CONFLATED and slow.sub.cursor == 84
    assert slow.sub.get_timer() == pytest.approx(1.2 + CONFLATE_INTERVAL)
    slow.sub.handle_timer(1.3)
    slow.service(1.3)
    slow.read(1.3)
    assert [r[:3] for r in slow.records[-2:]] == [(b"c", 0, 84), (b"b", 0, 85)]
    # An interval with nothing new: live again, and pushed what comes next.
    slow.sub.handle_timer(1.41)
    assert slow.sub.phase is Phase.LIVE and slow.sub.live
    publish(fanout, journal, bbo(86, 1, 86), now=1.45)
    slow.read(1.45)
    assert slow.records[-1][:3] == (b"b", 0, 86)
    assert fanout.counters.slow_consumers == 0 and fanout.counters.conflated_rounds == 2


def test_a_conflate_users_kernel_holds_little_unsent_and_more_held_makes_it_a_slow_one() -> None:
    journal = Journal(SESSION)
    fanout = events_fanout(journal, limits=FanOutLimits(conflate_unsent=2000),
                           policies={b"slow": Policy.CONFLATE})  # fmt: skip
    slow = EventLink(fanout, 0.0, username=b"slow")
    other = EventLink(fanout, 0.0)
    assert isinstance(slow.events[0], Subscribed) and slow.events[0].unsent == 2000
    assert isinstance(other.events[0], Subscribed) and other.events[0].unsent == UNSENT
    publish(fanout, journal, *(bbo(n, 1, n) for n in range(1, 31)))  # 1,620 bytes: kept up
    assert slow.sub.phase is Phase.LIVE
    publish(fanout, journal, *(bbo(n, 1, n) for n in range(31, 61)))  # 3,240 unread: too much
    assert slow.sub.phase is Phase.CONFLATED and other.sub.phase is Phase.LIVE
    assert "over the 2000 cap" in slow.events[-1].reason  # max_backlog is 16 MiB


def test_the_subscriber_library_takes_rounds_read_together_as_one_batch() -> None:
    rounds = b"".join([ev.notice(ev.CONFLATED, 10, 0, 10, 40, 38), bbo(48, 1, 1), bbo(49, 2, 2),
                       ev.notice(ev.CONFLATED, 50, 0, 50, 20, 19), bbo(69, 1, 3)])
    out = client_records(Batch(1, 5, rounds))
    assert out[:2] == [Conflated(10, 50, 38), Conflated(50, 70, 19)]
    assert len(out) == 3 and isinstance(out[2], Events)
    assert ev.view(out[2].records, ev.BBO)[["sequence", "bid_price"]].tolist() == [
        (48, 1), (49, 2), (69, 3)]  # whole records, bodies and all
    lost = b"".join([bbo(1, 1, 1), ev.notice(ev.LOST, 2, 0, 100, 5, 0), bbo(3, 1, 2)])
    kinds = [type(r).__name__ for r in client_records(Batch(1, 3, lost))]
    assert kinds == ["Events", "Lost", "Events"]  # a lost range stands where it was


def test_records_had_before_a_reconnect_are_dropped_and_the_rest_kept_whole() -> None:
    records = ev.from_blocks(bbo(5, 1, 50) + bbo(6, 1, 60) + bbo(7, 2, 70))
    item, wanted = resumed(Events(records), 6)
    assert isinstance(item, Events) and wanted == 8
    # Bodies and all: a boolean index of a structured array would have kept the header only.
    assert ev.view(item.records, ev.BBO)[["sequence", "bid_price"]].tolist() == [(6, 60),
                                                                                 (7, 70)]


def test_a_skipped_slow_consumer_is_told_the_exact_range_and_goes_on_live() -> None:
    fanout, journal, _, slow = lagging(Policy.SKIP)
    publish(fanout, journal, *(bbo(60 + i, 1, 60 + i) for i in range(1, 21)))
    slow.read(0.0)
    slow.read(0.0)
    skips = [r for r in slow.records if r[0] == b"k"]
    assert len(skips) == 1
    notice = ev.view(slow.raw, ev.SKIPPED)[0] if (slow.raw["kind"] == b"k").any() else None
    assert notice is not None
    first, count = int(notice["first"]), int(notice["count"])
    received = [r[2] for r in slow.records if r[0] == b"b"]
    # Everything before the skip, nothing of it, then everything after: no gap unannounced.
    assert received == list(range(1, first)) + list(range(first + count, 81))
    assert fanout.counters.skipped_messages == count and fanout.counters.skips == 1
    publish(fanout, journal, bbo(81, 1, 1))
    slow.read(0.0)
    assert slow.records[-1][2] == 81


def test_a_slow_consumer_that_takes_nothing_is_cut_whatever_its_policy() -> None:
    fanout, _, _, slow = lagging(Policy.CONFLATE)
    slow.sub.handle_timer(11.0)
    slow.service(11.0)
    assert slow.sub.closed and fanout.counters.slow_consumers == 1
    assert any(isinstance(e, Closed) for e in slow.events)


def raised(source: int, *locates: int, sequence: int = 1) -> bytes:
    """BBO records of ``locates`` raised by itch number ``source``, numbered from
    ``sequence``."""
    block = ev.blocks(ev.BBO, len(locates))
    block["sequence"] = np.arange(len(locates)) + sequence
    block["source"], block["locate"], block["bid_price"] = source, locates, source * 100
    return block.tobytes()


def journal_of(stream: EventStream) -> npt.NDArray[np.void]:
    assert stream.journal is not None
    return decoded(stream.journal.blocks(1, len(stream.journal))[1])


def test_the_event_stream_reopened_drops_what_the_rebuilt_books_raise_again() -> None:
    first = EventStream()
    journal = first.start(SESSION)
    first.append(3, raised(10, 1) + raised(11, 1, 2, sequence=2))
    again = EventStream(reopened=journal)
    assert again.start(SESSION) is journal
    again.append(2, raised(10, 1) + raised(11, 1))  # its source's records: below the end
    assert len(journal) == 3 and again.blocks_to_write() == []
    again.append(3, raised(11, 2) + raised(12, 3, 4))
    assert len(journal) == 5 and again.resume is None
    assert journal_of(again)["sequence"].tolist() == [1, 2, 3, 4, 5]
    assert journal_of(again)["source"].tolist() == [10, 11, 11, 12, 12]
    again.lose(100, 105)
    lost = ev.view(decoded(journal.blocks(6, 1)[1]), ev.LOST)[0]
    assert (lost["sequence"], lost["first"], lost["count"]) == (6, 100, 5)
    with pytest.raises(RuntimeError):
        EventStream().append(1, raised(1, 1))


def test_a_range_the_run_before_lost_and_this_one_repairs_is_not_numbered_twice() -> None:
    # The first run lost itch 12-19 (one notice), then journaled 20's record and stopped. The
    # restarted plant has the whole day: 12-19 raise records now, many more than one notice.
    first = EventStream()
    journal = first.start(SESSION)
    first.append(1, raised(10, 1))
    first.lose(12, 20)
    first.append(1, raised(20, 1, sequence=3))
    again = EventStream(reopened=journal)
    again.start(SESSION)
    # By count (what the books raised again) its end would fall inside the repaired range, and
    # 14's records would be journaled again after 20's: by source, none of them are.
    again.append(9, raised(10, 1) + b"".join(raised(s, 1, 2) for s in range(12, 16)))
    assert again.included(16) == 2 and again.included(20) == 2 and again.included(21) == 3
    again.append(8, b"".join(raised(s, 1, 2) for s in range(16, 20)))
    again.append(2, raised(20, 1) + raised(21, 7))
    assert len(journal) == 4 and again.included(22) == 4
    rows = journal_of(again)
    assert rows["sequence"].tolist() == [1, 2, 3, 4]
    assert rows["source"].tolist() == [10, 12, 20, 21] and rows["locate"][-1] == 7


def test_a_notice_the_run_before_gave_is_not_given_again_and_the_rest_of_a_loss_is() -> None:
    first = EventStream()
    journal = first.start(SESSION)
    first.append(1, raised(10, 1))
    first.lose(11, 15)
    again = EventStream(reopened=journal)
    again.start(SESSION)
    again.append(1, raised(10, 1))
    again.lose(11, 13)  # told already
    assert len(journal) == 2
    again.lose(13, 18)  # 15-17 were not: told from 15
    rows = journal_of(again)
    lost = ev.view(rows, ev.LOST)
    assert lost["first"].tolist() == [11, 15] and lost["count"].tolist() == [4, 3]
    assert rows["sequence"].tolist() == [1, 2, 3] and again.counters.lost_notices == 1


def test_a_journal_cut_among_one_messages_records_gets_the_rest_of_them() -> None:
    first = EventStream()
    journal = first.start(SESSION)
    # A cut: the second of 11's records never reached the file.
    first.append(2, raised(10, 1) + raised(11, 1, 2, sequence=2)[: ev.BLOCK_SIZE])
    again = EventStream(reopened=journal)
    again.start(SESSION)
    assert again.resume is not None and (again.resume.source, again.resume.owed) == (11, 1)
    again.append(3, raised(10, 1) + raised(11, 1, 2))
    rows = journal_of(again)
    assert rows["locate"].tolist() == [1, 1, 2] and rows["sequence"].tolist() == [1, 2, 3]
    assert ev.view(rows, ev.BBO)["bid_price"].tolist() == [1000, 1100, 1100]  # bodies whole


def test_conflate_users_past_the_publish_budget_share_one_conflated_chunk() -> None:
    journal = Journal(SESSION)
    fanout = events_fanout(journal, limits=FanOutLimits(publish_bytes=1),
                           policy=Policy.CONFLATE)  # fmt: skip
    links = [EventLink(fanout, 0.0) for _ in range(3)]
    publish(fanout, journal, *(bbo(n, 1 + n % 2, n) for n in range(1, 11)))
    pushed = [link for link in links if link.sub.cursor == 11]
    assert len(pushed) == 1
    chunks = fanout.counters.chunks
    for link in links:
        link.read(0.0)  # the login accepted: a round waits for what was written before it
        if link not in pushed:
            link.sub.handle_timer(0.0)
            link.service(0.0)
            link.read(0.0)
    assert fanout.counters.chunks == chunks + 1  # computed once for both, at the same place
    for link in links:
        if link in pushed:
            assert [r[2] for r in link.records] == list(range(1, 11))
        else:  # the latest BBO of each symbol, after a notice of the 8 not sent
            assert [r[:3] for r in link.records] == [(b"c", 0, 1), (b"b", 0, 9), (b"b", 0, 10)]
            assert link.sub.live
    assert fanout.counters.conflated_updates == 16
