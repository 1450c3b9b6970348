"""Property tests: random valid order lifecycles, cut into random batches, match the reference."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from test_book_model import ReferenceBook, rows
from tickerplant.book import BookEngine
from tickerplant.wire import itch
from tickerplant.wire.blocks import join_messages

_SYMBOLS = 3


def _directory(locate: int) -> bytes:
    return itch.encode(
        itch.StockDirectory(locate, 0, 0, f"S{locate}", "Q", "N", 100, "N", "C", "Z", "P", "N",
                            "N", "1", "N", 0, "N")
    )


@st.composite
def lifecycles(draw: st.DrawFn) -> list[bytes]:
    """A day of adds, executions, cancels, replaces and deletes that only touch live orders."""
    msgs = [_directory(loc) for loc in range(1, _SYMBOLS + 1)]
    live: dict[int, tuple[int, int]] = {}  # reference -> (locate, shares left)
    next_ref = draw(st.integers(1, 1 << 40))
    for ts in range(1, 1 + draw(st.integers(1, 120))):
        op = draw(st.sampled_from("AAAFECXDUP" if live else "AF"))
        if op in "AF":
            loc = draw(st.integers(1, _SYMBOLS))
            side = draw(st.sampled_from("BS"))
            shares = draw(st.integers(1, 1000))
            price = draw(st.integers(1, 12)) * 100
            stock = f"S{loc}"
            rec: itch.Record = (
                itch.AddOrder(loc, 0, ts, next_ref, side, shares, stock, price)
                if op == "A"
                else itch.AddOrderMpid(loc, 0, ts, next_ref, side, shares, stock, price, "MPID")
            )
            live[next_ref] = (loc, shares)
            next_ref += draw(st.integers(1, 1 << 20))
        elif op == "P":
            loc = draw(st.integers(1, _SYMBOLS))
            rec = itch.Trade(loc, 0, ts, 0, "B", 100, f"S{loc}", 500, ts)
        else:
            ref = draw(st.sampled_from(sorted(live)))
            loc, left = live[ref]
            if op in "ECX":
                qty = draw(st.integers(1, left))
                if op == "E":
                    rec = itch.OrderExecuted(loc, 0, ts, ref, qty, ts)
                elif op == "C":
                    rec = itch.OrderExecutedWithPrice(loc, 0, ts, ref, qty, ts, "Y", 999)
                else:
                    rec = itch.OrderCancel(loc, 0, ts, ref, qty)
                if qty == left:
                    del live[ref]
                else:
                    live[ref] = (loc, left - qty)
            elif op == "D":
                rec = itch.OrderDelete(loc, 0, ts, ref)
                del live[ref]
            else:
                shares = draw(st.integers(1, 1000))
                price = draw(st.integers(1, 12)) * 100
                rec = itch.OrderReplace(loc, 0, ts, ref, next_ref, shares, price)
                del live[ref]
                live[next_ref] = (loc, shares)
                next_ref += draw(st.integers(1, 1 << 20))
        msgs.append(itch.encode(rec))
    return msgs


@settings(max_examples=150)
@given(msgs=lifecycles(), cuts=st.lists(st.integers(0, 200), max_size=6))
def test_random_lifecycles_match_the_reference(msgs: list[bytes], cuts: list[int]) -> None:
    ref = ReferenceBook()
    for m in msgs:
        ref.apply(m)
    engine = BookEngine()
    bbo: list[tuple[object, ...]] = []
    trades: list[tuple[object, ...]] = []
    edges = sorted({0, len(msgs), *(c for c in cuts if c < len(msgs))})
    for lo, hi in itertools.pairwise(edges):
        batch = engine.process(join_messages(msgs[lo:hi]))
        bbo += rows(batch.bbo)
        trades += rows(batch.trades)
    assert bbo == ref.bbo
    assert trades == ref.trades
    assert sum(engine.anomalies.values()) == 0
    assert engine.live_orders == len(ref.orders)
    for loc in range(1, _SYMBOLS + 1):
        depth = engine.depth(loc, 50)
        bids, asks = ref.depth(loc, 50)
        assert (depth.bids.tolist(), depth.asks.tolist()) == (bids, asks)


@settings(max_examples=100)
@given(msgs=lifecycles(), data=st.data())
def test_damaged_lifecycles_never_corrupt_the_book(msgs: list[bytes], data: st.DataObject) -> None:
    """Drop and duplicate messages: anomalies are counted, books still equal the reference's."""
    damaged = []
    for m in msgs:
        fate = data.draw(st.sampled_from(["keep", "keep", "keep", "keep", "drop", "twice"]))
        damaged += [] if fate == "drop" else [m, m] if fate == "twice" else [m]
    ref = ReferenceBook()
    for m in damaged:
        ref.apply(m)
    engine = BookEngine()
    batch = engine.process(join_messages(damaged))
    assert rows(batch.bbo) == ref.bbo
    assert engine.anomalies == ref.anomaly_counts()
    assert engine.live_orders == len(ref.orders)
    for loc in range(1, _SYMBOLS + 1):
        depth = engine.depth(loc, 50)
        assert (depth.bids.tolist(), depth.asks.tolist()) == ref.depth(loc, 50)
