"""The figures: every name the plant shows is registered, the live books' own, and a dead
exchange reported at once."""

from __future__ import annotations

import asyncio
import gc

import pytest

from tickerplant.endpoint import Endpoint
from tickerplant.feed.handler import FeedConfig, FeedHandler
from tickerplant.ops.figures import EXCHANGE, REGISTRY, STREAMS, Kind
from tickerplant.plant.books import LiveBooks
from tickerplant.receive.events import Batch, GapLost, Source


def test_an_exchange_that_dies_at_once_is_reported_at_once() -> None:
    from harness import ports
    from tickerplant.exchange.child import ExchangeProcess

    p = ports()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        exchange = await ExchangeProcess(p.line_a, p.line_b, None, None, "--no-such-flag").start()
        t0 = loop.time()
        with pytest.raises(RuntimeError, match="exited early"):
            await exchange.wait_published(1, timeout=30)
        return loop.time() - t0

    assert asyncio.run(main()) < 20  # not the whole timeout


def test_live_books_count_what_the_feed_lost_and_start_over_on_a_new_session() -> None:
    from tickerplant.exchange.synthetic import SyntheticMarket
    from tickerplant.receive.events import SessionStarted

    books = LiveBooks()
    chunk = next(SyntheticMarket(2, 10).chunks(2000, 2000))
    books.on_batch(Batch(1, 2000, chunk))
    books.on_event(GapLost(2001, 2011, Source.LINE_A, 2.0))
    assert books.figures()["messages_missed"] == 10 and books.engine.live_orders > 0
    books.on_event(SessionStarted(b"S2", b"S1"))
    fresh = books.figures()
    assert fresh["messages_missed"] == 0 and fresh["live_orders"] == 0 == fresh["book_symbols"]


def _depth(value: object, labels: int) -> int:
    """How many label levels a figure's value nests (a summary's own dict is its leaf)."""
    depth = 0
    while depth < labels and isinstance(value, dict):
        if not value:
            return labels  # nothing counted under this label yet
        value = next(iter(value.values()))
        depth += 1
    return depth


def test_every_figure_the_plant_shows_is_registered_with_its_labels() -> None:
    async def main() -> dict[str, object]:
        feed = FeedHandler(FeedConfig(Endpoint("239.192.99.1", 40001), None))
        return feed.figures() | LiveBooks().figures()

    figures = asyncio.run(main())
    others = {f.name for f in (*STREAMS, *EXCHANGE)}  # the plant's streams, the simulator
    assert sorted(figures) == sorted(set(REGISTRY) - others)  # nothing unnamed or unshown
    for name, value in figures.items():
        figure = REGISTRY[name]
        assert _depth(value, len(figure.labels)) == len(figure.labels), name
        if figure.kind in (Kind.COUNTER, Kind.GAUGE) and not figure.labels:
            assert isinstance(value, int | float | str), name
    sources = {s.label for s in Source}
    for name in ("packets", "messages", "gaps_seen", "gaps_lost", "defects"):
        assert set(figures[name]) == sources, name  # type: ignore[call-overload]
    assert set(figures["line_state"]) == {"a"}  # type: ignore[call-overload]


def test_full_collections_are_counted() -> None:
    async def main() -> tuple[dict[str, int], dict[str, int]]:
        feed = FeedHandler(FeedConfig(Endpoint("239.192.99.1", 40001), None))
        before = feed.figures()["gc_collections"]
        gc.collect()
        return before, feed.figures()["gc_collections"]

    before, after = asyncio.run(main())
    assert sorted(after) == ["0", "1", "2"] and after["2"] == before["2"] + 1
