"""A plant of K channels: every channel's lines drained in one loop, one feed session each, one
book engine for all of them, and each stream served on one port, the login's session naming the
channel (real loopback multicast, a real exchange process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from harness import Collected, day_of_events, ports, source_stream, until
from tickerplant.book.engine import BookEngine
from tickerplant.client import subscribe
from tickerplant.client.subscribe import SubscribeError
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.feed.handler import FeedConfig
from tickerplant.plant import EventsConfig, GlimpseConfig, Plant, PlantConfig, StreamConfig
from tickerplant.wire.blocks import iter_messages
from tickerplant.wire.channels import session_of, split
from tickerplant.wire.events import from_blocks

ANY = Endpoint("127.0.0.1", 0)


def test_a_plant_of_channels_is_told_what_it_cannot_do() -> None:
    feed = FeedConfig(Endpoint("239.192.77.1", 31001), Endpoint("239.192.77.2", 31002))
    with pytest.raises(ConfigError, match="channels"):
        PlantConfig(feed, channels=0)
    meets = r"feed\.line_a: channel 2's line A .* as is channel 1's line B"
    with pytest.raises(ConfigError, match=meets):
        PlantConfig(FeedConfig(Endpoint("239.192.77.1", 31001),
                               Endpoint("239.192.78.1", 31001)), channels=2)  # fmt: skip
    with pytest.raises(ConfigError, match=r"feed\.capture"):
        PlantConfig(FeedConfig(feed.line_a, feed.line_b, capture=Path("day.itch")), channels=2)
    with pytest.raises(ConfigError, match=r"itch\.memory_bytes"):
        PlantConfig(feed, StreamConfig(memory_bytes=4 << 20), channels=8)
    config = PlantConfig(feed, channels=3)
    second = config.of_channel(1)
    assert (second.feed.line_a, second.feed.line_b) == (
        Endpoint("239.192.78.1", 31001), Endpoint("239.192.78.2", 31002))  # fmt: skip
    assert second.itch.memory_bytes == config.itch.memory_bytes // 3


@pytest.mark.slow
def test_k_channels_with_loss_on_every_a_line_are_each_served_whole_and_book_as_one_day() -> None:
    """K = 8, 5 % loss on each A line: each channel's itch stream is what the exchange published
    on it, each channel's events are what its stocks raise, the one engine's books are the
    books of the whole day read on one channel; a client names its channel in its login, on
    one port, and a login naming no channel of the plant's is rejected."""
    k, messages, seed = 8, 200_000, 6
    p = ports(group_base="239.194.10", channels=k)
    config = PlantConfig(
        FeedConfig(p.line_a, p.line_b, rerequest=p.rerequest, replay=p.replay),
        StreamConfig(ANY), GlimpseConfig(ANY), events=EventsConfig(ANY), channels=k,
    )  # fmt: skip
    day = source_stream(seed, 500, messages)
    parts = split(day, k)
    sessions = [session_of("KCHAN", n, k).encode() for n in range(1, k + 1)]
    third = Collected()

    async def read(endpoint: Endpoint, session: str) -> None:
        async for record in subscribe(endpoint, session=session, retry=0.05):
            third.receive(record)

    async def main() -> tuple[Plant, list[str]]:
        plant = Plant(config)
        await plant.start()
        itch = Endpoint("127.0.0.1", plant.routers["itch"].port)
        rejected: list[str] = []
        try:
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--channels", str(k),
                "--session", "KCHAN", "--messages", str(messages), "--seed", str(seed),
                "--rate", "100000", "--drop-a", "0.05", "--eos-seconds", "0.5",
            ) as exchange:  # fmt: skip
                await until(lambda: all(c.stream.journal is not None for c in plant.channels),
                            30, "every channel's session heard")  # fmt: skip
                reader = asyncio.ensure_future(read(itch, sessions[2].decode()))
                try:
                    async for _ in subscribe(itch, session="NOSUCH", retry=None):
                        pass
                except SubscribeError as err:
                    rejected.append(str(err))
                await exchange.summary()
                await until(lambda: all(c.stream.ended for c in plant.channels), 60,
                            lambda: "every channel's stream ended: " + ", ".join(
                                f"{c.number + 1}: {c.feed.figures()['next_sequence']}"
                                for c in plant.channels))  # fmt: skip
                await asyncio.wait_for(reader, 30)
        finally:
            await plant.close()
        return plant, rejected

    plant, rejected = asyncio.run(main())
    assert rejected == ["login rejected: session not available"]
    figures = plant.figures()
    assert figures["lost_messages"] == 0 and figures["gaps_seen"]["a"] > k  # every A line lost
    for n, channel in enumerate(plant.channels):
        journal = channel.stream.journal
        assert journal is not None and journal.session.strip() == sessions[n]
        assert journal.blocks(1, len(journal))[1] == parts[n], f"channel {n + 1}'s itch"
        events = channel.event_stream.journal
        assert events is not None
        rows = from_blocks(events.blocks(1, len(events))[1])
        assert rows.tobytes() == day_of_events(parts[n]), f"channel {n + 1}'s events"
        assert np.all(rows["source"] >= 1)
    assert third.messages == list(iter_messages(parts[2]))
    whole = BookEngine()
    whole.process(day)
    books = plant.books.engine
    assert books.live_orders == whole.live_orders > 0
    assert sum(books.anomalies.values()) == sum(whole.anomalies.values()) == 0
    for locate in whole.symbols():
        a, b = whole.depth(locate, 1 << 20), books.depth(locate, 1 << 20)
        assert a.bids.tobytes() == b.bids.tobytes() and a.asks.tobytes() == b.asks.tobytes()
