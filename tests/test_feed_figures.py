"""The feed handler's own checks and figures, without sockets: continuity of what it delivers,
bounded latency records, and the dashboard showing what should stay zero."""

from __future__ import annotations

import asyncio

import pytest
from rich.console import Console

from tickerplant.feed.handler import FeedConfig, FeedHandler, Latencies
from tickerplant.io.multicast import Endpoint
from tickerplant.ops.dashboard import render
from tickerplant.session.events import Batch, GapLost, Source


def _feed() -> FeedHandler:
    return FeedHandler(FeedConfig(Endpoint("239.192.99.1", 40001), None))


def _text(feed: FeedHandler) -> str:
    console = Console(width=200, record=True)
    console.print(render(feed.figures(), None, 1.0))
    return console.export_text()


def test_a_hole_without_gap_lost_is_counted_and_shown() -> None:
    async def main() -> FeedHandler:
        feed = _feed()
        feed._deliver([Batch(1, 2, b"\x00\x01a\x00\x01b"), Batch(10, 1, b"\x00\x01c")])
        feed._deliver([GapLost(15, 20, Source.LINE_A, 0.1), Batch(20, 1, b"\x00\x01d")])
        return feed

    feed = asyncio.run(main())
    assert feed.skipped_unreported == 7 + 4  # [3, 10) and [11, 15)
    assert feed.duplicates_delivered == 0 and feed.delivered == 4
    assert feed.lost_ranges == [(15, 20)]
    assert "skipped unreported 11" in _text(feed)


def test_an_overlap_is_counted_as_duplicates_not_as_a_hole() -> None:
    async def main() -> FeedHandler:
        feed = _feed()
        feed._deliver([Batch(1, 5, b""), Batch(3, 4, b"")])
        return feed

    feed = asyncio.run(main())
    assert (feed.duplicates_delivered, feed.skipped_unreported) == (3, 0)
    assert "skipped" not in _text(feed)


def test_latencies_keep_every_count_and_the_max_but_only_recent_values() -> None:
    lat = Latencies()
    assert lat.figures() == {"count": 0}
    lat.add(5.0)  # an old, slow repair
    for _ in range(Latencies.RECENT):
        lat.add(0.001)
    figures = lat.figures()
    assert figures["count"] == Latencies.RECENT + 1
    assert figures["max"] == 5000.0  # ms, over all
    assert figures["p50"] == figures["p99"] == 1.0  # the 5 s one has left the window


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
    from tickerplant.feed.books import LiveBooks
    from tickerplant.session.events import SessionStarted

    books = LiveBooks()
    chunk = next(SyntheticMarket(2, 10).chunks(2000, 2000))
    books.on_batch(Batch(1, 2000, chunk))
    books.on_event(GapLost(2001, 2011, Source.LINE_A, 2.0))
    assert books.figures()["messages_missed"] == 10 and books.engine.live_orders > 0
    books.on_event(SessionStarted(b"S2", b"S1"))
    fresh = books.figures()
    assert fresh["messages_missed"] == 0 and fresh["live_orders"] == 0 == fresh["symbols"]
