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
from tickerplant.plant.books import LiveBooks
from tickerplant.receive.events import Batch, SessionStarted
from tickerplant.wire.blocks import iter_messages, join_messages
from tickerplant.wire.channels import channel_of, session_of, split
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


def _batch(part: bytes) -> Batch:
    return Batch(1, len(list(iter_messages(part))), part)


def test_one_engine_books_every_channel_and_a_new_day_begins_with_the_first_channel_in_it() -> None:
    """Channel 1's new session starts the books over; channel 2's messages of the day before,
    still arriving, are not applied to them; once channel 2 is in the new day too, they are."""
    day = source_stream(8, 40, 20_000)
    first, second = split(day, 2)
    books = LiveBooks(channels=2)
    books.on_batch(_batch(first), 0)
    books.on_batch(_batch(second), 1)
    whole = BookEngine()
    whole.process(day)
    assert books.engine.live_orders == whole.live_orders > 0
    assert books.at == [_batch(first).end, _batch(second).end]
    books.on_event(SessionStarted(b"NEW001", b"OLD001"), 0)
    assert books.engine.live_orders == 0 and books.at[0] == 1
    assert books.on_batch(_batch(second), 1).bbo.shape[0] == 0  # the day before's: not applied
    assert books.engine.live_orders == 0
    books.on_event(SessionStarted(b"NEW002", b"OLD002"), 1)  # channel 2 in the new day too
    assert books.engine.live_orders == 0  # (the books are the new day's already)
    assert books.on_batch(_batch(second), 1).bbo.shape[0] > 0
    alone = BookEngine()
    alone.process(second)
    assert books.engine.live_orders == alone.live_orders > 0


def test_a_channels_snapshot_holds_its_stocks_only_and_continues_from_its_number() -> None:
    day = source_stream(9, 40, 20_000)
    parts = split(day, 3)
    books = LiveBooks(channels=3)
    for n, part in enumerate(parts):
        books.on_batch(_batch(part), n)
    for n, part in enumerate(parts):
        snap = list(iter_messages(books.picture(n).encode()))
        assert snap[-1][:1] == b"G" and int(snap[-1][1:]) == _batch(part).end
        stocks = {int.from_bytes(m[1:3], "big") for m in snap[:-1]} - {0}
        assert stocks and all(channel_of(s, 3) == n for s in stocks)
        alone, rebuilt = BookEngine(), BookEngine()
        alone.process(part)
        rebuilt.process(join_messages(snap[:-1]))
        assert rebuilt.live_orders == alone.live_orders > 0


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


@pytest.mark.slow
def test_a_channel_never_heard_is_counted_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """The plant takes 3 channels, the exchange publishes 2: channel 3 is counted unheard, and
    said once, naming its group, a few seconds after channel 1 is heard."""
    p = ports(group_base="239.194.70", channels=3)
    config = PlantConfig(FeedConfig(p.line_a, p.line_b, rerequest=p.rerequest, replay=p.replay),
                         StreamConfig(ANY), GlimpseConfig(ANY, refresh=0.1),
                         events=EventsConfig(ANY), channels=3)  # fmt: skip

    async def main() -> int:
        plant = Plant(config)
        await plant.start()
        try:
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--channels", "2",
                "--messages", "1000000", "--rate", "100000", "--eos-seconds", "0.5",
            ):  # fmt: skip
                await until(lambda: "not heard" in caplog.text, 30, "channel 3 said unheard")
                return int(plant.figures()["channels_unheard"])
        finally:
            await plant.close()

    with caplog.at_level("WARNING", logger="tickerplant.plant.core"):
        assert asyncio.run(main()) == 1
    said = [r.getMessage() for r in caplog.records if "not heard" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("channels 3 not heard")
    assert str(config.of_channel(2).feed.line_a) in said[0]
