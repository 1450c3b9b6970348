"""The engine against the reference book on generated markets: every event and every book."""

from __future__ import annotations

import numba
import pytest

from test_book_model import ReferenceBook, rows
from tickerplant.book import BookEngine
from tickerplant.exchange.synthetic import SyntheticMarket

# Without the JIT the kernels run as Python: the same test on a small day.
_MESSAGES, _SYMBOLS = (20_000, 30) if numba.config.DISABLE_JIT else (1_000_000, 300)


@pytest.mark.slow
def test_generated_day_matches_the_reference_book() -> None:
    engine = BookEngine()
    ref = ReferenceBook()
    bbo: list[tuple[object, ...]] = []
    trades: list[tuple[object, ...]] = []
    status: list[tuple[object, ...]] = []
    for chunk in SyntheticMarket(11, _SYMBOLS).chunks(_MESSAGES, 50_000):
        batch = engine.process(chunk)
        bbo += rows(batch.bbo)
        trades += rows(batch.trades)
        status += rows(batch.status)
        ref.feed(chunk)
    assert len(bbo) > _MESSAGES // 10
    assert bbo == ref.bbo
    assert trades == ref.trades
    assert status == ref.status
    assert engine.anomalies == ref.anomaly_counts()
    assert sum(engine.anomalies.values()) == 0
    assert engine.messages_by_type == dict(ref.by_type)
    assert engine.live_orders == len(ref.orders)
    assert engine.peak_live_orders == ref.peak
    assert engine.symbols() == ref.symbols
    for locate in range(1, _SYMBOLS + 1):
        depth = engine.depth(locate, 1 << 20)
        bids, asks = ref.depth(locate, 1 << 20)
        assert depth.bids.tolist() == bids, locate
        assert depth.asks.tolist() == asks, locate
