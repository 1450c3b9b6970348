"""BookEngine on hand-built message streams: events, depth, anomalies, growth and memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import numpy.typing as npt

from test_book_model import ReferenceBook, rows
from tickerplant.book import (
    BBO_EVENT,
    LEVEL,
    STATUS_EVENT,
    TRADE_EVENT,
    BookEngine,
    EventBatch,
    EventBuffers,
)
from tickerplant.wire import itch
from tickerplant.wire.blocks import join_messages


def directory(locate: int, stock: str) -> itch.StockDirectory:
    return itch.StockDirectory(
        locate, 0, 1, stock, "Q", "N", 100, "N", "C", "Z", "P", "N", "N", "1", "N", 0, "N"
    )


def stream(*records: itch.Record) -> bytes:
    return join_messages([itch.encode(r) for r in records])


def test_records_have_the_documented_sizes() -> None:
    assert (BBO_EVENT.itemsize, TRADE_EVENT.itemsize, STATUS_EVENT.itemsize) == (38, 37, 20)
    assert LEVEL.itemsize == 16
    assert BBO_EVENT.fields["ask_size"][1] == 26
    assert TRADE_EVENT.fields["printable"][1] == 32
    assert STATUS_EVENT.fields["reason"][1] == 12


def test_order_lifecycle_events_and_depth() -> None:
    engine = BookEngine()
    batch = engine.process(
        stream(
            itch.SystemEvent(0, 0, 1, "O"),
            directory(5, "ZVZZT"),
            itch.StockTradingAction(5, 0, 2, "ZVZZT", "T", " ", "    "),
            itch.AddOrder(5, 0, 10, 1001, "B", 100, "ZVZZT", 99_5000),
            itch.AddOrderMpid(5, 0, 11, 1002, "B", 200, "ZVZZT", 99_6000, "GSCO"),
            itch.AddOrder(5, 0, 12, 1003, "S", 300, "ZVZZT", 99_8000),
            itch.AddOrder(5, 0, 13, 1004, "S", 50, "ZVZZT", 99_8000),
            itch.OrderExecuted(5, 0, 14, 1002, 20, 7001),
            itch.OrderExecutedWithPrice(5, 0, 15, 1003, 300, 7002, "N", 99_7000),
            itch.OrderCancel(5, 0, 16, 1001, 40),
            itch.OrderReplace(5, 0, 17, 1004, 1005, 80, 99_9000),
            itch.Trade(5, 0, 18, 0, "S", 25, "ZVZZT", 99_7000, 7003),
            itch.OrderDelete(5, 0, 19, 1002),
            itch.CrossTrade(5, 0, 20, 5000, "ZVZZT", 99_6500, 7004, "O"),
            itch.BrokenTrade(5, 0, 21, 7001),
            itch.RegShoRestriction(5, 0, 22, "ZVZZT", "1"),
        )
    )
    assert rows(batch.bbo) == [
        (5, 10, 99_5000, 100, 0, 0),
        (5, 11, 99_6000, 200, 0, 0),
        (5, 12, 99_6000, 200, 99_8000, 300),
        (5, 13, 99_6000, 200, 99_8000, 350),
        (5, 14, 99_6000, 180, 99_8000, 350),
        (5, 15, 99_6000, 180, 99_8000, 50),
        (5, 17, 99_6000, 180, 99_9000, 80),
        (5, 19, 99_5000, 60, 99_9000, 80),
    ]
    assert rows(batch.trades) == [
        (5, 14, 99_6000, 20, 7001, ord("B"), ord("E"), 1),
        (5, 15, 99_7000, 300, 7002, ord("S"), ord("C"), 0),
        (5, 18, 99_7000, 25, 7003, ord("S"), ord("P"), 1),
        (5, 20, 99_6500, 5000, 7004, 0, ord("Q"), 1),
        (5, 21, 0, 0, 7001, 0, ord("B"), 0),
    ]
    assert rows(batch.status) == [
        (0, 1, ord("S"), ord("O"), b"\0\0\0\0"),
        (5, 2, ord("H"), ord("T"), b"    "),
        (5, 22, ord("Y"), ord("1"), b"\0\0\0\0"),
    ]
    # Each event names the message that raised it: its index in the stream (the timestamps
    # above are chosen so that from the Add Orders on, index = timestamp - 7).
    assert batch.bbo["message"].tolist() == [t - 7 for t in batch.bbo["timestamp"].tolist()]
    assert batch.trades["message"].tolist() == [t - 7 for t in batch.trades["timestamp"].tolist()]
    assert batch.status["message"].tolist() == [0, 2, 15]
    other = BookEngine()
    other.process(stream(directory(5, "ZVZZT")))
    again = other.process(stream(itch.RegShoRestriction(5, 0, 30, "ZVZZT", "0")))
    assert again.status["message"].tolist() == [0]  # counted from each stream's start
    depth = engine.depth(5, 5)
    assert depth.bids.tolist() == [(99_5000, 60, 1)]
    assert depth.asks.tolist() == [(99_9000, 80, 1)]
    assert engine.bbo(5) == (99_5000, 60, 99_9000, 80)
    assert engine.symbol(5) == "ZVZZT" and engine.symbol(6) is None
    assert engine.trading_state(5) == "T" and engine.market_state == "O"
    assert engine.live_orders == 2 and engine.peak_live_orders == 4
    assert engine.messages == 16
    assert engine.messages_by_type["A"] == 3 and engine.messages_by_type["F"] == 1
    assert sum(engine.anomalies.values()) == 0


def test_depth_orders_levels_best_first_and_limits_n() -> None:
    engine = BookEngine()
    prices = [100, 300, 200, 500, 400]
    msgs: list[itch.Record] = [directory(1, "AA")]
    for i, px in enumerate(prices):
        msgs.append(itch.AddOrder(1, 0, 1, 10 + i, "B", 10 * (i + 1), "AA", px))
        msgs.append(itch.AddOrder(1, 0, 1, 20 + i, "S", 1, "AA", 1000 + px))
    msgs.append(itch.AddOrder(1, 0, 1, 30, "B", 5, "AA", 300))
    engine.process(stream(*msgs))
    depth = engine.depth(1, 3)
    assert depth.bids.tolist() == [(500, 40, 1), (400, 50, 1), (300, 25, 2)]
    assert depth.asks.tolist() == [(1100, 1, 1), (1200, 1, 1), (1300, 1, 1)]
    assert engine.depth(1, 0).bids.shape == (0,)
    assert engine.depth(999, 5).asks.shape == (0,)


def test_inconsistent_input_is_counted_and_books_stay_consistent() -> None:
    msgs: list[bytes] = [
        itch.encode(itch.AddOrder(9, 0, 1, 1, "B", 10, "X", 100)),  # locate never defined
        itch.encode(directory(9, "XX")),
        itch.encode(directory(8, "WW")),
        itch.encode(itch.AddOrder(9, 0, 2, 1, "B", 10, "XX", 100)),
        itch.encode(itch.AddOrder(9, 0, 3, 1, "S", 10, "XX", 200)),  # duplicate reference
        itch.encode(itch.OrderExecuted(9, 0, 4, 77, 5, 1)),  # unknown reference
        itch.encode(itch.OrderDelete(8, 0, 4, 1)),  # another locate's reference
        itch.encode(itch.AddOrder(9, 0, 5, 2, "X", 10, "XX", 100)),  # bad side
        itch.encode(itch.AddOrder(9, 0, 5, 3, "B", 0, "XX", 100)),  # zero shares
        itch.encode(itch.AddOrder(9, 0, 5, 1 << 47, "B", 5, "XX", 100)),  # reference too large
        itch.encode(itch.AddOrder(9, 0, 5, 4, "B", 5, "XX", 1 << 31)),  # price too large
        itch.encode(itch.AddOrder(9, 0, 6, 5, "S", 10, "XX", 300)),
        itch.encode(itch.OrderCancel(9, 0, 7, 5, 11)),  # over-cancel: removed
        itch.encode(itch.OrderExecuted(9, 0, 8, 1, 15, 2)),  # over-execution: removed
        itch.encode(directory(9, "YY")),  # redefined
        b"z" + bytes(11),  # not an ITCH type
        itch.encode(itch.OrderDelete(9, 0, 9, 1))[:-1],  # short
        b"",  # length 0
    ]
    blocks = join_messages(msgs)
    engine = BookEngine()
    batch = engine.process(blocks + b"\x00\x20abc")  # and a truncated tail
    ref = ReferenceBook()
    for m in msgs:
        if m:
            ref.apply(m)
    expected = ref.anomaly_counts()
    expected["bad_length"] += 1  # the empty block, which iter_messages cannot express
    expected["truncated"] = 1
    assert engine.anomalies == expected
    assert expected["over_execution"] == expected["over_cancel"] == 1
    assert expected["unknown_reference"] == 2 and expected["bad_value"] == 3
    assert expected["unknown_locate"] == 1 and expected["duplicate_reference"] == 1
    assert engine.live_orders == 0
    assert engine.depth(9, 5).bids.shape == (0,) and engine.depth(9, 5).asks.shape == (0,)
    assert rows(batch.bbo) == ref.bbo
    assert rows(batch.trades) == ref.trades
    assert engine.symbol(9) == "YY"


def test_tables_grow_and_state_stays_small_with_huge_references() -> None:
    """Order references spread into the hundreds of millions cost nothing per reference."""
    engine = BookEngine(max_symbols=4096)
    symbols = 3000  # past the first locate arrays, which start at 1024
    msgs = [directory(loc, f"S{loc}") for loc in range(1, symbols + 1)]
    rng = np.random.default_rng(7)
    live = 60_000
    refs = rng.choice(900_000_000, size=live, replace=False) + 100_000_000
    for i, ref in enumerate(refs.tolist()):
        loc = 1 + i % symbols
        side = "B" if i % 2 else "S"
        px = 10_0000 + (100 * (i % 97) if side == "S" else -100 * (i % 89))
        msgs.append(itch.AddOrder(loc, 0, i, ref, side, 100, f"S{loc}", px))
    engine.process(stream(*msgs))
    assert engine.live_orders == live == engine.peak_live_orders
    assert engine.symbol(symbols) == f"S{symbols}"
    assert engine.bytes_per_live_order <= 100, engine.bytes_per_live_order
    # Deleting half keeps every book and the order table consistent after the rehashes.
    engine.process(stream(*[itch.OrderDelete(1 + i % symbols, 0, 1, int(refs[i]))
                            for i in range(0, live, 2)]))  # fmt: skip
    assert engine.live_orders == live // 2
    assert engine.levels == sum(
        len(engine.depth(loc, 1000).bids) + len(engine.depth(loc, 1000).asks)
        for loc in range(1, symbols + 1)
    )
    bids = engine.depth(2, 1000).bids  # locate 2 holds orders 1, 3001, ...: odd, bids, all kept
    assert bids["orders"].sum() == len(range(1, live, symbols))


def test_churn_at_a_steady_live_count_keeps_the_state_size() -> None:
    """A day's churn (each add soon deleted): once the order table has its size for the live
    orders, adds and deletes reuse its slots and nothing grows: memory follows live orders,
    not references issued."""
    live, rounds = 3000, 60_000
    msgs: list[itch.Record] = [directory(1, "A")]
    for ref in range(1, live + rounds + 1):
        msgs.append(itch.AddOrder(1, 0, ref, ref, "B", 10, "A", 100_0000 - 100 * (ref % 50)))
        if ref > live:
            msgs.append(itch.OrderDelete(1, 0, ref, ref - live))
    engine = BookEngine()
    half = len(msgs) // 2
    engine.process(stream(*msgs[:half]))  # warmed up: the tables have their size
    size = engine.state_bytes
    engine.process(stream(*msgs[half:]))
    assert engine.live_orders == live and sum(engine.anomalies.values()) == 0
    assert engine.state_bytes == size
    assert engine.depth(1, 100).bids["orders"].sum() == live


def test_runs_of_consecutive_references_deleted_out_of_order() -> None:
    """Runs of consecutive references (as exchanges issue them), the same references on two
    locates (two orders), deleted, executed and replaced in shuffled order across the order
    table's growth: none is lost."""
    rng = np.random.default_rng(3)
    adds: list[itch.Record] = [directory(1, "A"), directory(2, "B")]
    starts = rng.choice(1 << 30, size=1000, replace=False) * 8 + 1_000_000
    refs = [int(start) + i for start in starts for i in range(6)]  # runs at random places
    for ref in refs:
        for loc in (1, 2):
            side = "B" if (ref + loc) % 2 else "S"
            px = 100_0000 + (-1 if side == "B" else 1) * 100 * (1 + ref % 13)
            adds.append(itch.AddOrder(loc, 0, ref, ref, side, 10, "AB"[loc - 1], px))
    changes: list[itch.Record] = []
    for i, ref in enumerate(rng.permutation(refs).tolist()):
        loc = 1 + i % 2
        if i % 3 == 0:
            changes.append(itch.OrderDelete(loc, 0, i, ref))
        elif i % 3 == 1:
            changes.append(itch.OrderExecuted(loc, 0, i, ref, 4, i))
        else:
            new_ref = ref + (1 << 40)
            changes.append(itch.OrderReplace(loc, 0, i, ref, new_ref, 7, 99_0000 + ref % 97))
    engine, ref_book = BookEngine(), ReferenceBook()
    bbo = []
    for part in (stream(*adds), stream(*changes)):
        bbo += rows(engine.process(part).bbo)
        ref_book.feed(part)
    assert sum(engine.anomalies.values()) == 0
    assert engine.live_orders == len(ref_book.orders) == 2 * 6000 - 2000
    assert bbo == ref_book.bbo
    for loc in (1, 2):
        depth = engine.depth(loc, 1 << 20)
        bids, asks = ref_book.depth(loc, 1 << 20)
        assert (depth.bids.tolist(), depth.asks.tolist()) == (bids, asks)


def test_deep_books_move_and_compact_level_segments() -> None:
    engine = BookEngine()
    msgs: list[itch.Record] = [directory(1, "DEEP"), directory(2, "WIDE")]
    for i in range(3000):  # thousands of levels on one side: segments move, the pool compacts
        msgs.append(itch.AddOrder(1, 0, 1, 1 + i, "S", 1 + i, "DEEP", 1000 + 7 * i))
        msgs.append(itch.AddOrder(2, 0, 1, 100_000 + i, "B", 1, "WIDE", 50_000 - (i * 37) % 4999))
    engine.process(stream(*msgs))
    asks = engine.depth(1, 5000).asks
    assert asks["price"].tolist() == [1000 + 7 * i for i in range(3000)]
    assert asks["size"].tolist() == [1 + i for i in range(3000)]
    bids = engine.depth(2, 5000).bids
    assert np.all(np.diff(bids["price"].astype(np.int64)) < 0)
    assert int(bids["size"].sum()) == 3000


def test_batches_cut_anywhere_give_the_same_events() -> None:
    msgs = [
        directory(1, "A"),
        itch.AddOrder(1, 0, 1, 1, "B", 100, "A", 500),
        itch.AddOrder(1, 0, 2, 2, "S", 100, "A", 600),
        itch.OrderExecuted(1, 0, 3, 1, 30, 1),
        itch.OrderReplace(1, 0, 4, 2, 3, 50, 550),
        itch.OrderDelete(1, 0, 5, 1),
    ]
    whole = BookEngine().process(stream(*msgs))
    one_by_one = BookEngine()
    bbo = [one_by_one.process(stream(m)).bbo.copy() for m in msgs]
    for i, part in enumerate(bbo):
        part["message"] += i  # each stream counts its messages from 0
    assert np.concatenate(bbo).tobytes() == whole.bbo.tobytes()
    assert len(whole.bbo) == 5


def test_a_batch_kept_without_scratch_is_never_overwritten() -> None:
    from tickerplant.exchange.synthetic import SyntheticMarket

    chunks = list(SyntheticMarket(5, 20).chunks(8000, 2000))
    reference = BookEngine()
    expected = [reference.process(c).bbo.tobytes() for c in chunks]
    assert all(expected)
    engine = BookEngine()
    scratch = EventBuffers()
    # Calls with scratch in between: they must not write where a kept batch lives either.
    batches = [engine.process(c, scratch=scratch if i % 2 else None) for i, c in enumerate(chunks)]
    kept = batches[::2]
    assert [b.bbo.tobytes() for b in kept] == expected[::2]
    for i, a in enumerate(kept):
        for b in batches[2 * i + 1 :]:
            for x, y in zip((a.bbo, a.trades, a.status), (b.bbo, b.trades, b.status), strict=True):
                assert not np.shares_memory(x, y)


def test_a_batch_in_scratch_reuses_its_buffers_and_the_next_call_overwrites_it() -> None:
    from tickerplant.exchange.synthetic import SyntheticMarket

    chunks = list(SyntheticMarket(5, 20).chunks(8000, 2000))
    reference = BookEngine()
    expected = [reference.process(c).bbo.tobytes() for c in chunks]
    scratch = EventBuffers()
    # Sized by the largest chunk (on any engine: buffers hold no book state), so that no later
    # call has to grow them.
    BookEngine().process(max(chunks, key=len), scratch=scratch)
    engine = BookEngine()
    first = engine.process(chunks[0], scratch=scratch)
    assert first.bbo.tobytes() == expected[0]

    def parts(batch: EventBatch) -> tuple[npt.NDArray[np.void], ...]:
        return batch.bbo, batch.trades, batch.status

    bases = [a.base for a in parts(first)]
    pointers = [a.ctypes.data for a in parts(first)]
    for c, want in zip(chunks[1:], expected[1:], strict=True):
        batch = engine.process(c, scratch=scratch)
        assert batch.bbo.tobytes() == want
        # No new allocation: the same buffers, written from their start.
        assert all(a.base is base for a, base in zip(parts(batch), bases, strict=True))
        assert [a.ctypes.data for a in parts(batch)] == pointers
    # The contract: a scratch batch lives until the next call given that scratch, no longer.
    n = min(len(first.bbo), len(batch.bbo))
    assert first.bbo[:n].tobytes() == batch.bbo[:n].tobytes()
    assert first.bbo[:n].tobytes() != expected[0][: n * BBO_EVENT.itemsize]
    # Other buffers are other memory: a second scratch leaves the first one's batch alone.
    other = engine.process(chunks[0], scratch=EventBuffers())
    assert not np.shares_memory(other.bbo, batch.bbo)
    assert batch.bbo.tobytes() == expected[-1]


_SUBPROCESS = """
import json, sys
from tickerplant.book import BookEngine
from tickerplant.exchange.synthetic import SyntheticMarket
engine = BookEngine()
out = {"bbo": "", "trades": ""}
for chunk in SyntheticMarket(3, 20).chunks(3000, 700):
    batch = engine.process(chunk)
    out["bbo"] += batch.bbo.tobytes().hex()
    out["trades"] += batch.trades.tobytes().hex()
out["anomalies"] = engine.anomalies
json.dump(out, sys.stdout)
"""


def test_same_results_with_and_without_the_jit() -> None:
    results = []
    for disable in ("0", "1"):
        env = {**os.environ, "NUMBA_DISABLE_JIT": disable}
        proc = subprocess.run(
            [sys.executable, "-c", _SUBPROCESS], env=env, capture_output=True, text=True,
            timeout=300, check=True,
        )  # fmt: skip
        results.append(json.loads(proc.stdout))
    assert results[0] == results[1]
    assert len(results[0]["bbo"]) > 1000
