"""``tickerplant edge``: the plant's events streams served from another host that joined the
plant's tier-2 (real loopback multicast, a real exchange process, the plant and an edge in this
process)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from harness import CollectedEvents, tier2_plant, until
from tickerplant.client import Events, subscribe
from tickerplant.client.quotes import as_json
from tickerplant.edge import Edge, EdgeConfig
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.feed.handler import FeedConfig
from tickerplant.plant import EventsConfig, Plant
from tickerplant.plant.config import MIN_RING
from tickerplant.wire import events as ev

ANY = Endpoint("127.0.0.1", 0)


def test_an_edge_is_told_what_it_cannot_do() -> None:
    with pytest.raises(ConfigError, match="channels: 0"):
        EdgeConfig(channels=0)
    with pytest.raises(ConfigError, match=r"events\.memory_bytes: .* for each of 2 channels"):
        EdgeConfig(channels=2, events=EventsConfig(ANY, memory_bytes=MIN_RING))
    with pytest.raises(ConfigError, match=r"feed\.join: .* leave journal_dir out"):
        EdgeConfig(FeedConfig(Endpoint("239.193.1.1", 32001), None, join="snapshot"),
                   events=EventsConfig(ANY, journal_dir=Path("/tmp")))  # fmt: skip
    with pytest.raises(ConfigError, match=r"feed\.line_a: channel 2's line A .* as is"):
        EdgeConfig(FeedConfig(Endpoint("239.193.1.1", 32001), Endpoint("239.193.2.1", 32001)),
                   channels=2)  # fmt: skip


async def _read(endpoint: Endpoint, session: str, into: CollectedEvents, first: int = 1,
                until_number: int | None = None) -> None:  # fmt: skip
    async for record in subscribe(endpoint, first=first, session=session, events=True,
                                  retry=0.05):  # fmt: skip
        into.receive(record)
        if until_number is not None and into.next > until_number:
            return


async def _images(endpoint: Endpoint, session: str, symbol: str) -> npt.NDArray[np.void]:
    """What a client asking for ``symbol`` from now is sent first: its image."""
    async for record in subscribe(endpoint, first=0, session=session, events=True,
                                  symbols=[symbol], retry=None):  # fmt: skip
        if isinstance(record, Events):
            rows = record.records
            return ev.where(rows, (rows["flags"] & ev.IMAGE) != 0)
    raise AssertionError("no image")


@pytest.mark.slow
def test_an_edge_serves_the_plants_events_with_its_numbers_and_a_client_moves_over() -> None:
    """Two channels over tier-2 with 5 % loss on each line. A client of the edge reads channel
    2 whole; a client of the plant reads channel 1 to the middle, then resumes on the edge from
    the next number; at the end, both equal the plant's journals, every record once, and a
    symbol's image from the edge is the plant's (the plant's depth 0: the records carry none)."""
    k, messages = 2, 200_000
    config = tier2_plant("239.194.40", "239.194.50", k, depth=0)
    p, tier2 = config.feed, config.tier2
    a, b = tier2.line_a, tier2.line_b
    assert a is not None and b is not None
    whole, moved = CollectedEvents(), CollectedEvents()

    async def main() -> tuple[Plant, list[np.ndarray]]:
        plant = Plant(config)
        await plant.start()
        at_plant = Endpoint("127.0.0.1", plant.routers["events"].port)
        edge = Edge(EdgeConfig(
            FeedConfig(Endpoint(a.group, a.port), Endpoint(b.group, b.port),
                       rerequest=tier2.rerequest, replay=at_plant),
            channels=k, events=EventsConfig(ANY),
        ))  # fmt: skip
        await edge.start()
        at_edge = Endpoint("127.0.0.1", edge.port)
        sessions = []
        try:
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--channels", str(k),
                "--messages", str(messages), "--seed", "17", "--rate", "100000",
                "--eos-seconds", "0.5",
            ) as exchange:  # fmt: skip
                await until(lambda: all(c.stream.journal for c in plant.channels), 30,
                            "the plant heard every channel")  # fmt: skip
                sessions = [c.event_stream.journal.session.decode().strip()  # type: ignore
                            for c in plant.channels]  # fmt: skip
                reader = asyncio.ensure_future(_read(at_edge, sessions[1], whole))
                await exchange.wait_published(messages // 2)
                await asyncio.wait_for(_read(at_plant, sessions[0], moved, until_number=5000),
                                       30)  # fmt: skip
                mover = asyncio.ensure_future(_read(at_edge, sessions[0], moved, moved.next))
                await exchange.summary()
                await until(lambda: all(c.stream.ended for c in plant.channels), 30,
                            "the plant's streams ended")  # fmt: skip
                await asyncio.wait_for(asyncio.gather(reader, mover), 30)
                seen = np.frombuffer(b"".join(moved.records), dtype=ev.RECORD)
                name = ev.view(seen, ev.SYMBOL)["symbol"][0].decode().strip()
                images = [await _images(at, sessions[0], name) for at in (at_plant, at_edge)]
        finally:
            await edge.close()
            await plant.close()
        return plant, images

    plant, (from_plant, from_edge) = asyncio.run(main())
    for collected, channel in ((moved, plant.channels[0]), (whole, plant.channels[1])):
        journal = channel.event_stream.journal
        assert journal is not None and len(journal) > 1000
        rows = ev.from_blocks(journal.blocks(1, len(journal))[1])
        assert b"".join(collected.records) == rows.tobytes(), "every record once, in order"
    assert moved.reconnects == 0 and len(from_plant) >= 2
    # The same records but for the source number stamped (see edge/catalog.py).
    for image in (from_plant, from_edge):
        image["source"] = 0
    assert from_edge.tobytes() == from_plant.tobytes(), (as_json(from_plant, {}),
                                                         as_json(from_edge, {}))


async def _snapshot(endpoint: Endpoint, session: str) -> npt.NDArray[np.void]:
    """Every symbol's image from now, to the ``i`` notice that ends them."""
    images = []
    async for record in subscribe(endpoint, first=0, session=session, events=True,
                                  snapshot=True, retry=None):  # fmt: skip
        if isinstance(record, Events):
            rows = record.records
            images.append(ev.where(rows, (rows["flags"] & ev.IMAGE) != 0))
            if (images[-1]["kind"] == ev.IMAGED).any():
                break
    return np.concatenate(images)


@pytest.mark.slow
def test_an_edge_joining_after_a_million_records_takes_a_snapshot_then_the_stream() -> None:
    """An edge with ``join = "snapshot"`` started once the plant has journaled a million
    records: it holds none of them (no replay from 1), but the plant's images of every symbol
    and then the stream from the number they hold up to, record for record as the plant
    journaled it; at the end its images of every symbol are the plant's (depth 0: the records
    carry none)."""
    messages = 3_000_000
    config = tier2_plant("239.194.60", "239.194.70", 1, depth=0)
    p, tier2 = config.feed, config.tier2
    a, b = tier2.line_a, tier2.line_b
    assert a is not None and b is not None

    async def main() -> tuple[Plant, Edge, int, list[npt.NDArray[np.void]]]:
        plant = Plant(config)
        await plant.start()
        at_plant = Endpoint("127.0.0.1", plant.channels[0].events.port)
        edge = Edge(EdgeConfig(
            FeedConfig(Endpoint(a.group, a.port), Endpoint(b.group, b.port),
                       rerequest=tier2.rerequest, replay=at_plant, join="snapshot"),
            events=EventsConfig(ANY),
        ))  # fmt: skip
        channel = plant.channels[0]
        try:
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--messages", str(messages),
                "--seed", "19", "--rate", "1000000", "--eos-seconds", "0.5",
            ) as exchange:  # fmt: skip
                await until(lambda: len(channel.event_stream.journal or ()) > 1_000_000, 60,
                            lambda: f"a million records journaled: "
                                    f"{len(channel.event_stream.journal or ())}")  # fmt: skip
                await edge.start()
                await exchange.summary()
                await until(lambda: channel.stream.ended, 30, "the plant's stream ended")
                await until(lambda: edge.channels[0].feed.session_ended.is_set(), 30,
                            lambda: f"the edge's session ended: {edge.figures()}")  # fmt: skip
            journal = channel.event_stream.journal
            assert journal is not None
            name = journal.session.decode().strip()
            at_edge = Endpoint("127.0.0.1", edge.port)
            images = [await _snapshot(at, name) for at in (at_plant, at_edge)]
            return plant, edge, len(journal), images
        finally:
            await edge.close()
            await plant.close()

    plant, edge, records, (from_plant, from_edge) = asyncio.run(main())
    figures = edge.figures()
    held = edge.channels[0].stream.journal
    assert held is not None and len(held) == records
    joined = held.first_held
    assert 1_000_000 < joined <= records, (joined, records)
    assert figures["snapshots_taken"] == 1 and figures["lost_messages"] == 0
    assert figures["messages"]["replay"] + figures["messages"]["rerequest"] < joined
    plants = plant.channels[0].event_stream.journal
    assert plants is not None
    assert held.blocks(joined, records)[1] == plants.blocks(joined, records)[1]
    assert len(from_plant) > 100 and from_plant[-1]["kind"] == ev.IMAGED
    for image in (from_plant, from_edge):
        image["source"] = 0  # (see edge/catalog.py)
    assert from_edge.tobytes() == from_plant.tobytes(), (as_json(from_plant, {}),
                                                         as_json(from_edge, {}))


@pytest.mark.slow
def test_an_edge_keeps_its_journal_as_the_plant_does_and_a_restarted_one_goes_on(
        tmp_path: Path) -> None:  # fmt: skip
    """An edge with ``[events] journal_dir`` and the least ``memory_bytes``: its journal spills
    to the file (memory bounded); stopped mid-day and started again on the same directory, it
    reopens the file and goes on (what the replay from 1 brings again is not journaled
    twice). A byte the disk then changes mid-file is fetched again from the plant's events
    service: a client reading it from 1 is told of the bad block, resumes, and gets the plant's
    journal, record for record."""
    messages = 200_000
    config = tier2_plant("239.194.80", "239.194.90", 1, depth=0)
    p, tier2 = config.feed, config.tier2
    a, b = tier2.line_a, tier2.line_b
    assert a is not None and b is not None
    reader = CollectedEvents()

    async def main() -> tuple[Plant, list[dict[str, Any]]]:
        plant = Plant(config)
        await plant.start()
        at_plant = Endpoint("127.0.0.1", plant.channels[0].events.port)
        edge_config = EdgeConfig(
            FeedConfig(Endpoint(a.group, a.port), Endpoint(b.group, b.port),
                       rerequest=tier2.rerequest, replay=at_plant),
            events=EventsConfig(ANY, journal_dir=tmp_path, memory_bytes=MIN_RING),
        )  # fmt: skip
        figures = []
        edge = Edge(edge_config)
        try:
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--messages", str(messages),
                "--seed", "23", "--rate", "100000", "--eos-seconds", "0.5",
            ) as exchange:  # fmt: skip
                await edge.start()
                await exchange.wait_published(messages // 2)
                await until(lambda: len(edge.channels[0].stream.journal or ()) > 10_000, 30,
                            "the first edge journaled 10,000 records")  # fmt: skip
                figures.append(edge.figures())
                await edge.close()
                edge = Edge(edge_config)
                await edge.start()
                await exchange.summary()
                await until(lambda: plant.channels[0].stream.ended, 30, "the plant's stream ended")
                await until(lambda: edge.channels[0].feed.session_ended.is_set(), 30,
                            lambda: f"the edge's session ended: {edge.figures()}")  # fmt: skip
            journal = plant.channels[0].event_stream.journal
            assert journal is not None
            (path,) = tmp_path.glob("*.events")
            await until(lambda: path.stat().st_size == len(journal) * ev.BLOCK_SIZE, 30,
                        "the edge's file holding the whole session")  # fmt: skip
            fd = os.open(path, os.O_RDWR)  # the disk changes a byte mid-file
            at = path.stat().st_size // 2
            os.pwrite(fd, bytes([os.pread(fd, 1, at)[0] ^ 0x01]), at)
            os.close(fd)
            await asyncio.wait_for(_read(Endpoint("127.0.0.1", edge.port),
                                         journal.session.decode().strip(), reader,
                                         until_number=len(journal)), 30)  # fmt: skip
            figures.append(edge.figures())
        finally:
            await edge.close()
            await plant.close()
        return plant, figures

    plant, (first, second) = asyncio.run(main())
    journal = plant.channels[0].event_stream.journal
    assert journal is not None and len(journal) > 20_000
    rows = ev.from_blocks(journal.blocks(1, len(journal))[1])
    assert b"".join(reader.records) == rows.tobytes(), "every record once, in order"
    assert reader.reconnects >= 1  # told the block was bad, it resumed by number
    (file,) = tmp_path.glob("*.events")
    assert file.read_bytes() == journal.blocks(1, len(journal))[1]  # mended
    assert second["journal_mended_blocks"]["events"] == 1
    assert second["journal_unmended_blocks"]["events"] == 0
    for figures in (first, second):
        assert figures["journal_memory_bytes"]["events"] <= 2 * MIN_RING, figures
        assert figures["journal_write_errors"]["events"] == 0
    assert second["stream_messages"]["events"] == len(journal)


def test_the_edge_example_config_loads_back_to_the_defaults() -> None:
    import tomllib

    from tickerplant.ops.config import example, load

    table = tomllib.loads(example(EdgeConfig, (Endpoint,)))
    assert load(EdgeConfig, table, "", {Endpoint: Endpoint.parse}) == EdgeConfig()


def test_a_snapshots_state_is_the_edges_only_once_the_session_is_joined_where_it_ends() -> None:
    """A snapshot that comes back after its session was joined another way (heard from its
    first number, or a new session) is not the edge's state: the day starts empty."""
    from tickerplant.edge.catalog import Latest
    from tickerplant.edge.core import EdgeChannel
    from tickerplant.io.loop import LoopLag
    from tickerplant.receive.events import SessionStarted

    def imaged() -> Latest:
        state = Latest()
        symbol = ev.blocks(ev.SYMBOL, 1)
        symbol["locate"], symbol["symbol"], symbol["sequence"] = 7, b"ZVZZT   ", 4
        state.apply(ev.from_blocks(symbol.tobytes()))
        return state

    async def main() -> list[list[int]]:
        config = EdgeConfig(events=EventsConfig(ANY))
        channel = EdgeChannel(0, config, LoopLag())
        seen = []
        for event in (SessionStarted(b"EDGE000001", None, 5), SessionStarted(b"EDGE000001", None),
                      SessionStarted(b"EDGE000002", None, 5)):  # fmt: skip
            channel._imaged = (b"EDGE000001", 5, imaged())
            channel._on_event(event)
            seen.append(channel.latest.locates())
        return seen

    assert asyncio.run(main()) == [[7], [], []]


def test_a_range_an_edge_cannot_repair_keeps_its_numbers_as_notices_and_is_counted() -> None:
    """Each lost number a ``k`` notice naming the whole range, in place (one array, however
    long the range), and the range counted lost."""
    from tickerplant.edge.core import EdgeChannel
    from tickerplant.io.loop import LoopLag
    from tickerplant.receive.events import GapLost, SessionStarted, Source

    async def main() -> tuple[bytes, int]:
        config = EdgeConfig(events=EventsConfig(ANY))
        channel = EdgeChannel(0, config, LoopLag())
        channel._on_event(SessionStarted(b"EDGE000001", None))
        channel._on_event(GapLost(1, 4, Source.LINE_A, 0.1))
        journal = channel.stream.journal
        assert journal is not None
        return journal.blocks(1, len(journal))[1], channel.stream.counters.lost

    blocks, lost = asyncio.run(main())
    rows = ev.view(ev.from_blocks(blocks), ev.SKIPPED)
    assert rows["sequence"].tolist() == [1, 2, 3] and lost == 3
    assert set(rows["first"].tolist()) == {1} and set(rows["count"].tolist()) == {3}
