"""Synthetic market: byte-for-byte determinism, and a day that a real book builder would accept.

Message counts stay small (a few thousand to 20k) so that the file also runs in a few seconds
under NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tickerplant.exchange.synthetic import ORDER_SLOTS, SyntheticMarket
from tickerplant.wire import itch
from tickerplant.wire.blocks import iter_messages

DAY = 20_000


def day(seed: int, symbols: int, messages: int, chunk_messages: int = 65536) -> bytes:
    return b"".join(SyntheticMarket(seed, symbols).chunks(messages, chunk_messages))


@pytest.fixture(scope="module")
def records() -> list[itch.Record]:
    return [itch.decode(m) for m in iter_messages(day(11, 40, DAY))]


# --- determinism ---


def test_same_seed_same_bytes() -> None:
    market = SyntheticMarket(3, 30)
    first = b"".join(market.chunks(5000))
    assert b"".join(market.chunks(5000)) == first  # a second pass starts the day afresh
    assert day(3, 30, 5000) == first


def test_other_seed_other_day() -> None:
    assert day(3, 30, 5000) != day(4, 30, 5000)


@pytest.mark.parametrize("chunk_messages", [1, 7, 999, 4096])
def test_chunking_does_not_change_a_byte(chunk_messages: int) -> None:
    whole = day(5, 25, 4000)
    chunks = list(SyntheticMarket(5, 25).chunks(4000, chunk_messages))
    assert b"".join(chunks) == whole
    counts = [sum(1 for _ in iter_messages(c)) for c in chunks]
    assert all(c == chunk_messages for c in counts[:-1])
    assert sum(counts) == 4000


def test_golden_day() -> None:
    # Pins the generator: the same digest with and without NUMBA_DISABLE_JIT shows that the
    # compiled and the interpreted kernel agree. A deliberate change of the flow updates it.
    digest = hashlib.sha256(day(2024, 12, 3000)).hexdigest()
    assert digest == "9baa819f9581e3180c30bf0c139cdbd5e69d4095a2f4a113cd2cb4ef03281195"


def test_too_few_messages_for_a_day() -> None:
    market = SyntheticMarket(1, 10)
    assert market.minimum_messages == 26
    with pytest.raises(ValueError, match="at least 26 are needed"):
        list(market.chunks(25))
    minimal = [itch.decode(m) for m in iter_messages(b"".join(market.chunks(26)))]
    assert [type(r).__name__ for r in minimal].count("AddOrder") == 0
    assert len(minimal) == 26


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="symbols"):
        SyntheticMarket(1, 0)
    with pytest.raises(ValueError, match="symbols"):
        SyntheticMarket(1, 70_000)
    with pytest.raises(ValueError, match="chunk_messages"):
        list(SyntheticMarket(1, 5).chunks(100, 0))


# --- the shape of the day ---


def test_day_opens_and_closes_like_nasdaq(records: list[itch.Record]) -> None:
    n = 40
    assert len(records) == DAY
    events = [r.event_code for r in records if isinstance(r, itch.SystemEvent)]
    assert events == ["O", "S", "Q", "M", "E", "C"]
    assert [type(r) for r in records[:2]] == [itch.SystemEvent, itch.SystemEvent]
    directory = records[2 : 2 + n]
    assert all(isinstance(r, itch.StockDirectory) for r in directory)
    assert [r.stock_locate for r in directory] == list(range(1, n + 1))
    actions = records[2 + n : 2 + 2 * n]
    assert all(isinstance(r, itch.StockTradingAction) and r.trading_state == "T" for r in actions)
    assert [r.stock_locate for r in actions] == list(range(1, n + 1))
    open_ = records[2 + 2 * n]
    assert isinstance(open_, itch.SystemEvent) and open_.event_code == "Q"
    assert open_.timestamp == (9 * 3600 + 30 * 60) * 1_000_000_000
    assert [r.event_code for r in records[-3:] if isinstance(r, itch.SystemEvent)] == list("MEC")


def test_tickers_are_unique_plausible_alpha(records: list[itch.Record]) -> None:
    stocks = [r.stock for r in records if isinstance(r, itch.StockDirectory)]
    assert len(set(stocks)) == len(stocks) == 40
    assert all(1 <= len(s) <= 5 and s.isalpha() and s.isupper() for s in stocks)
    assert tuple(stocks) == SyntheticMarket(11, 40).tickers


def test_every_order_message_type_occurs(records: list[itch.Record]) -> None:
    kinds = Counter(itch.message_type(r) for r in records)
    for letter in "AFECXDUPQB":
        assert kinds[letter] > 0, letter
    # Adds and deletes dominate, as on a real day; breaks are rare.
    assert kinds["A"] > kinds["E"] > kinds["B"]
    assert kinds["D"] > kinds["U"]


def test_timestamps_increase(records: list[itch.Record]) -> None:
    stamps = [r.timestamp for r in records]
    assert all(a < b for a, b in itertools.pairwise(stamps))


# --- lifecycle: a reference book built from the decoded messages ---


@dataclass
class Order:
    locate: int
    side: str
    shares: int
    price: int


@dataclass
class Book:
    orders: dict[int, Order] = field(default_factory=dict)
    by_locate: dict[int, set[int]] = field(default_factory=dict)

    def best(self, locate: int) -> tuple[int | None, int | None]:
        bids = [self.orders[r].price for r in self.by_locate[locate] if self.orders[r].side == "B"]
        asks = [self.orders[r].price for r in self.by_locate[locate] if self.orders[r].side == "S"]
        return (max(bids) if bids else None), (min(asks) if asks else None)

    def add(self, ref: int, order: Order) -> None:
        self.orders[ref] = order
        self.by_locate[order.locate].add(ref)

    def remove(self, ref: int) -> Order:
        order = self.orders.pop(ref)
        self.by_locate[order.locate].remove(ref)
        return order


def test_lifecycle_invariants(records: list[itch.Record]) -> None:
    book = Book()
    directory: dict[int, str] = {}
    issued: set[int] = set()
    last_ref = 0
    matches: dict[int, int] = {}  # match number -> locate
    broken: set[int] = set()

    def new_reference(ref: int) -> None:
        nonlocal last_ref
        assert ref not in issued, f"reference {ref} reused"
        assert ref > last_ref, "references increase"
        issued.add(ref)
        last_ref = ref

    def new_match(match: int, locate: int) -> None:
        assert match not in matches and match > max(matches, default=0)
        matches[match] = locate

    def uncrossed(locate: int) -> None:
        bid, ask = book.best(locate)
        assert bid is None or ask is None or bid < ask, (locate, bid, ask)

    for r in records:
        if isinstance(r, itch.StockDirectory):
            directory[r.stock_locate] = r.stock
            book.by_locate[r.stock_locate] = set()
            continue
        if not isinstance(r, itch.SystemEvent):
            assert r.stock_locate in directory, "directory before use"
        if isinstance(r, itch.AddOrder | itch.AddOrderMpid):
            new_reference(r.order_reference)
            assert r.stock == directory[r.stock_locate]
            assert r.side in "BS" and r.shares > 0 and r.price > 0
            book.add(r.order_reference, Order(r.stock_locate, r.side, r.shares, r.price))
            assert len(book.by_locate[r.stock_locate]) <= ORDER_SLOTS
            uncrossed(r.stock_locate)
        elif isinstance(r, itch.OrderExecuted | itch.OrderExecutedWithPrice):
            order = book.orders.get(r.order_reference)
            assert order is not None, "executions only on live orders"
            assert order.locate == r.stock_locate
            assert 0 < r.executed_shares <= order.shares, "no over-execution"
            bid, ask = book.best(order.locate)
            assert order.price == (bid if order.side == "B" else ask), "executions at the touch"
            new_match(r.match_number, r.stock_locate)
            order.shares -= r.executed_shares
            if order.shares == 0:
                book.remove(r.order_reference)
        elif isinstance(r, itch.OrderCancel):
            order = book.orders.get(r.order_reference)
            assert order is not None and order.locate == r.stock_locate
            assert 0 < r.cancelled_shares < order.shares, "a cancel is partial"
            order.shares -= r.cancelled_shares
        elif isinstance(r, itch.OrderDelete):
            assert r.order_reference in book.orders, "delete of a dead reference"
            assert book.remove(r.order_reference).locate == r.stock_locate
        elif isinstance(r, itch.OrderReplace):
            assert r.original_order_reference in book.orders, "replace of a dead reference"
            old = book.remove(r.original_order_reference)
            assert old.locate == r.stock_locate
            new_reference(r.new_order_reference)
            book.add(r.new_order_reference, Order(old.locate, old.side, r.shares, r.price))
            uncrossed(r.stock_locate)
        elif isinstance(r, itch.Trade):
            assert r.order_reference == 0 and r.stock == directory[r.stock_locate]
            bid, ask = book.best(r.stock_locate)
            assert (bid is None or bid <= r.price) and (ask is None or r.price <= ask)
            new_match(r.match_number, r.stock_locate)
        elif isinstance(r, itch.CrossTrade):
            assert r.shares > 0 and r.cross_type == "I"
            new_match(r.match_number, r.stock_locate)
        elif isinstance(r, itch.BrokenTrade):
            assert matches.get(r.match_number) == r.stock_locate, "break of a real trade"
            assert r.match_number not in broken, "a trade is broken once"
            broken.add(r.match_number)
    # The book was exercised, not empty: orders rest at the end of the day.
    assert len(book.orders) > 0 and len(issued) > 1000
