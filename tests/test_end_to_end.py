"""The exchange process and the feed handler over loopback multicast: a million messages."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from harness import ports, source_stream
from tickerplant.book import BookEngine
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.feed.handler import FeedConfig, FeedHandler
from tickerplant.ops.figures import summed
from tickerplant.plant.books import LiveBooks

pytestmark = pytest.mark.slow

MESSAGES = 1_000_000


def test_million_messages_with_simulated_loss_arrive_byte_identical(tmp_path: Path) -> None:
    p = ports()
    capture = tmp_path / "feed.itch"

    books = LiveBooks()

    async def main() -> tuple[FeedHandler, dict[str, object]]:
        feed = FeedHandler(FeedConfig(p.line_a, p.line_b, rerequest=p.rerequest,
                                      replay=p.replay, capture=capture, digest=True),
                           on_batch=books.on_batch)
        await feed.start()
        try:
            async with ExchangeProcess(p.line_a, p.line_b, p.rerequest, p.replay,
                                       "--messages", str(MESSAGES), "--seed", "7",
                                       "--rate", "400000", "--drop-a", "0.05",
                                       "--drop-b", "0.02", "--eos-seconds", "2") as exchange:
                summary = await exchange.summary()
                await asyncio.wait_for(feed.session_ended.wait(), 20)
        finally:
            await feed.close()
        return feed, summary

    feed, summary = asyncio.run(main())
    data = capture.read_bytes()
    assert summary["published"] == MESSAGES == feed.session.counters.delivered
    assert hashlib.sha256(data).hexdigest() == summary["sha256"] == feed.session.digest
    assert data == source_stream(7, 500, MESSAGES)
    # The live books, built batch by batch as repairs came in, equal books built from the file.
    reference = BookEngine()
    reference.process(data)
    assert books.engine.live_orders == reference.live_orders > 0
    for locate in range(1, 501):
        assert books.engine.bbo(locate) == reference.bbo(locate)
    figures = feed.figures()
    assert figures["duplicates_delivered"] == 0
    repaired = summed(figures["gaps_repaired"])
    # 5 % and 2 % independent loss: most gaps close from the other line, some need re-requests.
    assert sum(figures["gaps_lost"].values()) == 0 and repaired["line"] > 100
    assert repaired["rerequest"] > 0
    assert sum(figures["gaps_seen"].values()) == sum(repaired.values())


def test_late_join_catches_up_by_replay_from_sequence_one() -> None:
    p = ports()
    total = 1_400_000

    async def main() -> tuple[FeedHandler, dict[str, object]]:
        async with ExchangeProcess(p.line_a, p.line_b, p.rerequest, p.replay,
                                   "--messages", str(total), "--seed", "3", "--rate", "500000",
                                   "--eos-seconds", "4") as exchange:
            await exchange.wait_published(MESSAGES)
            feed = FeedHandler(FeedConfig(p.line_a, p.line_b, rerequest=p.rerequest,
                                          replay=p.replay, digest=True))
            await feed.start()
            try:
                summary = await exchange.summary()
                await asyncio.wait_for(feed.session_ended.wait(), 30)
            finally:
                await feed.close()
        return feed, summary

    feed, summary = asyncio.run(main())
    figures = feed.figures()
    assert figures["delivered_messages"] == total == summary["published"], figures
    assert feed.session.digest == summary["sha256"]
    assert summed(figures["gaps_repaired"])["replay"] >= 1
    assert figures["messages"]["replay"] >= MESSAGES
    assert figures["duplicates_delivered"] == 0 and sum(figures["gaps_lost"].values()) == 0
