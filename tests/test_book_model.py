"""A pure-Python reference book (dicts, decoded records) and checks of the reference itself.

The engine's tests import :class:`ReferenceBook` from here and require identical events, depth
and anomaly counts. It follows the rules documented in tickerplant.book.records, written the
plain way: one dict of orders, one dict of price -> [shares, orders] per (locate, side).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import numpy.typing as npt

from tickerplant.book.records import ANOMALIES
from tickerplant.wire import itch
from tickerplant.wire.blocks import iter_messages

MAX_VALUE = 1 << 31
MAX_REFERENCE = 1 << 47

Bbo = tuple[int, int, int, int, int, int]  # locate, timestamp, bid px, bid size, ask px, ask size
TradeRow = tuple[int, int, int, int, int, int, int, int]  # as TRADE_EVENT's fields
StatusRow = tuple[int, int, int, int, bytes]


class ReferenceBook:
    def __init__(self) -> None:
        self.symbols: dict[int, str] = {}
        self.orders: dict[tuple[int, int], list[int]] = {}  # (locate, ref) -> [ask, price, shares]
        self.levels: dict[tuple[int, int], dict[int, list[int]]] = {}
        self.last: dict[int, tuple[int, int, int, int]] = {}
        self.bbo: list[Bbo] = []
        self.trades: list[TradeRow] = []
        self.status: list[StatusRow] = []
        self.anomalies: Counter[str] = Counter()
        self.by_type: Counter[str] = Counter()
        self.peak = 0

    def feed(self, blocks: bytes) -> None:
        for msg in iter_messages(blocks):
            self.apply(msg)

    def apply(self, msg: bytes) -> None:
        letter = chr(msg[0])
        self.by_type[letter] += 1
        if letter not in itch.MESSAGE_TYPES:
            self.anomalies["unknown_type"] += 1
            return
        if len(msg) != itch.LENGTHS[letter]:
            self.anomalies["bad_length"] += 1
            return
        rec = itch.decode(msg)
        loc = rec.stock_locate
        if isinstance(rec, itch.StockDirectory):
            if loc == 0:
                self.anomalies["unknown_locate"] += 1
            else:
                if loc in self.symbols and self.symbols[loc] != rec.stock:
                    self.anomalies["locate_redefined"] += 1
                self.symbols[loc] = rec.stock
            return
        if isinstance(rec, itch.SystemEvent):
            self.status.append((loc, rec.timestamp, ord("S"), ord(rec.event_code), b"\0" * 4))
            return
        handled = (
            itch.AddOrder, itch.AddOrderMpid, itch.OrderExecuted, itch.OrderExecutedWithPrice,
            itch.OrderCancel, itch.OrderDelete, itch.OrderReplace, itch.Trade, itch.CrossTrade,
            itch.BrokenTrade, itch.StockTradingAction, itch.RegShoRestriction,
        )  # fmt: skip
        if not isinstance(rec, handled):
            return
        if loc not in self.symbols:
            self.anomalies["unknown_locate"] += 1
            return
        ts = rec.timestamp
        if isinstance(rec, itch.StockTradingAction):
            reason = rec.reason.encode().ljust(4)
            self.status.append((loc, ts, ord("H"), ord(rec.trading_state), reason))
        elif isinstance(rec, itch.RegShoRestriction):
            self.status.append((loc, ts, ord("Y"), ord(rec.reg_sho_action), b"\0" * 4))
        elif isinstance(rec, itch.Trade):
            side = ord(rec.side)
            self.trades.append((loc, ts, rec.price, rec.shares, rec.match_number, side, 80, 1))
        elif isinstance(rec, itch.CrossTrade):
            self.trades.append((loc, ts, rec.cross_price, rec.shares, rec.match_number, 0, 81, 1))
        elif isinstance(rec, itch.BrokenTrade):
            self.trades.append((loc, ts, 0, 0, rec.match_number, 0, 66, 0))
        elif isinstance(rec, itch.AddOrder | itch.AddOrderMpid):
            if rec.side not in ("B", "S"):
                self.anomalies["bad_side"] += 1
                return
            self._add(loc, rec.order_reference, int(rec.side == "S"), rec.price, rec.shares)
            self._check_bbo(loc, ts)
        elif isinstance(rec, itch.OrderReplace):
            old = self.orders.get((loc, rec.original_order_reference))
            if old is None:
                self.anomalies["unknown_reference"] += 1
                return
            ask = old[0]
            self._remove(loc, rec.original_order_reference, old[2])
            self._add(loc, rec.new_order_reference, ask, rec.price, rec.shares)
            self._check_bbo(loc, ts)
        else:
            order = self.orders.get((loc, rec.order_reference))
            if order is None:
                self.anomalies["unknown_reference"] += 1
                return
            ask, price, left = order
            if isinstance(rec, itch.OrderDelete):
                take = left
            elif isinstance(rec, itch.OrderCancel):
                take = rec.cancelled_shares
                if take > left:
                    self.anomalies["over_cancel"] += 1
            else:
                side = ord("S") if ask else ord("B")
                if isinstance(rec, itch.OrderExecuted):
                    row = (loc, ts, price, rec.executed_shares, rec.match_number, side, 69, 1)
                else:
                    printable = int(rec.printable == "Y")
                    row = (loc, ts, rec.execution_price, rec.executed_shares, rec.match_number,
                           side, 67, printable)  # fmt: skip
                self.trades.append(row)
                take = rec.executed_shares
                if take > left:
                    self.anomalies["over_execution"] += 1
            self._remove(loc, rec.order_reference, min(take, left))
            self._check_bbo(loc, ts)

    def _add(self, loc: int, ref: int, ask: int, price: int, shares: int) -> None:
        if not (0 < shares < MAX_VALUE and price < MAX_VALUE and ref < MAX_REFERENCE):
            self.anomalies["bad_value"] += 1
            return
        if (loc, ref) in self.orders:
            self.anomalies["duplicate_reference"] += 1
            return
        self.orders[loc, ref] = [ask, price, shares]
        self.peak = max(self.peak, len(self.orders))
        level = self.levels.setdefault((loc, ask), {}).setdefault(price, [0, 0])
        level[0] += shares
        level[1] += 1

    def _remove(self, loc: int, ref: int, shares: int) -> None:
        order = self.orders[loc, ref]
        ask, price, _ = order
        order[2] -= shares
        levels = self.levels[loc, ask]
        levels[price][0] -= shares
        if order[2] == 0:
            del self.orders[loc, ref]
            levels[price][1] -= 1
            if levels[price][1] == 0:
                del levels[price]

    def top(self, loc: int) -> tuple[int, int, int, int]:
        bids = self.levels.get((loc, 0)) or {}
        asks = self.levels.get((loc, 1)) or {}
        bid = max(bids) if bids else None
        ask = min(asks) if asks else None
        return (
            bid or 0, bids[bid][0] if bid is not None else 0,
            ask or 0, asks[ask][0] if ask is not None else 0,
        )  # fmt: skip

    def _check_bbo(self, loc: int, ts: int) -> None:
        now = self.top(loc)
        if now != self.last.get(loc, (0, 0, 0, 0)):
            self.last[loc] = now
            self.bbo.append((loc, ts, *now))

    def depth(self, loc: int, n: int) -> tuple[list[tuple[int, int, int]], ...]:
        """Best ``n`` (price, shares, orders) per side, best first."""
        bids = self.levels.get((loc, 0)) or {}
        asks = self.levels.get((loc, 1)) or {}
        return (
            [(p, *bids[p]) for p in sorted(bids, reverse=True)[:n]],
            [(p, *asks[p]) for p in sorted(asks)[:n]],
        )

    def anomaly_counts(self) -> dict[str, int]:
        return {name: self.anomalies[name] for name in ANOMALIES}


def rows(events: npt.NDArray[np.void]) -> list[tuple[object, ...]]:
    """Structured events as plain tuples (status reasons as bytes) for comparison, without the
    ``message`` index (the reference book does not number messages)."""
    names = [n for n in events.dtype.names or () if n != "message"]
    out = []
    for e in events[names].tolist():
        out.append(tuple(bytes(v) if isinstance(v, np.ndarray) else v for v in e))
    return out


def test_reference_add_execute_replace_delete() -> None:
    ref = ReferenceBook()
    stock = itch.encode(
        itch.StockDirectory(7, 0, 1, "ZVZZT", "Q", "N", 100, "N", "C", "Z", "P", "N", "N", "1",
                            "N", 0, "N")
    )
    ref.apply(stock)
    ref.apply(itch.encode(itch.AddOrder(7, 0, 2, 11, "B", 100, "ZVZZT", 100_0000)))
    ref.apply(itch.encode(itch.AddOrder(7, 0, 3, 12, "B", 50, "ZVZZT", 100_0000)))
    ref.apply(itch.encode(itch.AddOrder(7, 0, 4, 13, "S", 30, "ZVZZT", 101_0000)))
    ref.apply(itch.encode(itch.OrderExecuted(7, 0, 5, 11, 40, 900)))
    ref.apply(itch.encode(itch.OrderReplace(7, 0, 6, 12, 14, 70, 100_5000)))
    assert ref.depth(7, 5) == ([(100_5000, 70, 1), (100_0000, 60, 1)], [(101_0000, 30, 1)])
    ref.apply(itch.encode(itch.OrderDelete(7, 0, 7, 14)))
    assert ref.bbo == [
        (7, 2, 100_0000, 100, 0, 0),
        (7, 3, 100_0000, 150, 0, 0),
        (7, 4, 100_0000, 150, 101_0000, 30),
        (7, 5, 100_0000, 110, 101_0000, 30),
        (7, 6, 100_5000, 70, 101_0000, 30),
        (7, 7, 100_0000, 60, 101_0000, 30),
    ]
    assert ref.trades == [(7, 5, 100_0000, 40, 900, ord("B"), ord("E"), 1)]


def test_reference_counts_inconsistent_input() -> None:
    ref = ReferenceBook()
    ref.apply(itch.encode(itch.OrderDelete(3, 0, 1, 99)))  # locate never defined
    ref.apply(
        itch.encode(
            itch.StockDirectory(3, 0, 1, "AB", "Q", "N", 100, "N", "C", "Z", "P", "N", "N", "1",
                                "N", 0, "N")
        )
    )
    ref.apply(itch.encode(itch.OrderDelete(3, 0, 2, 99)))
    ref.apply(itch.encode(itch.AddOrder(3, 0, 3, 5, "B", 10, "AB", 1)))
    ref.apply(itch.encode(itch.OrderExecuted(3, 0, 4, 5, 11, 1)))
    assert ref.anomalies == {"unknown_locate": 1, "unknown_reference": 1, "over_execution": 1}
    assert ref.orders == {}
    assert ref.levels[3, 0] == {}
