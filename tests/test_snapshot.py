"""Snapshots: at any point of a day, the snapshot and then the rest of the stream give the books
of the whole day."""

from __future__ import annotations

import random

from tickerplant.book import BookEngine
from tickerplant.book.snapshot import Directory, snapshot
from tickerplant.exchange.synthetic import SyntheticMarket
from tickerplant.jit import PLAIN_PYTHON
from tickerplant.wire import itch
from tickerplant.wire.blocks import iter_messages, join_messages

MESSAGES = 20_000 if PLAIN_PYTHON else 200_000  # the kernels as plain Python: a smaller day


def _same_books(a: BookEngine, b: BookEngine) -> None:
    assert (a.live_orders, a.levels, a.symbols()) == (b.live_orders, b.levels, b.symbols())
    for locate in a.symbols():
        da, db = a.depth(locate, 1 << 20), b.depth(locate, 1 << 20)
        assert da.bids.tobytes() == db.bids.tobytes() and da.asks.tobytes() == db.asks.tobytes()
        assert a.trading_state(locate) == b.trading_state(locate)
    assert a.market_state == b.market_state


def test_a_snapshot_then_the_rest_of_the_stream_gives_the_whole_days_books() -> None:
    day = list(iter_messages(b"".join(SyntheticMarket(4, 100).chunks(MESSAGES))))
    whole = BookEngine()
    whole.process(join_messages(day))
    assert whole.live_orders > 100
    rng = random.Random(11)
    for cut in sorted(rng.sample(range(1_000, MESSAGES), 5)):
        engine, directory = BookEngine(), Directory()
        for lo in range(0, cut, 7_000):  # as the live books take batches
            blocks = join_messages(day[lo : min(lo + 7_000, cut)])
            engine.process(blocks)
            directory.apply(blocks)
        snap = list(iter_messages(snapshot(engine, directory, cut + 1)))
        end = snap.pop()
        assert end[:1] == b"G" and int(end[1:]) == cut + 1 and len(end) == 21
        adds = [itch.decode(m) for m in snap if m[:1] == b"A"]
        assert len(adds) == engine.live_orders
        assert [a.order_reference for a in adds] == sorted(a.order_reference for a in adds)
        fresh = BookEngine()
        fresh.process(join_messages(snap))
        assert sum(fresh.anomalies.values()) == 0
        fresh.process(join_messages(day[cut:]))  # the itch stream from G's number on
        _same_books(fresh, whole)


def test_a_snapshot_of_empty_books_is_the_end_marker_alone() -> None:
    snap = list(iter_messages(snapshot(BookEngine(), Directory(), 1)))
    assert snap == [b"G" + b"1".ljust(20)]
