"""``tickerplant run``'s itch stream: the journal it serves (scripted), and the whole plant on
loopback with the exchange in its own process and subscribers over real TCP."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness import (
    Collected,
    CollectedEvents,
    Ports,
    day_of_events,
    ports,
    source_stream,
    unnumbered,
    until,
)
from tickerplant.book import BookEngine
from tickerplant.capture.checksums import Checksums
from tickerplant.client import Lost, SubscribeError, subscribe
from tickerplant.client.subscribe import _split
from tickerplant.distribute.fanout import Policy
from tickerplant.distribute.stream import LOST, ItchStream
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.feed.handler import FeedConfig
from tickerplant.ops import passwords
from tickerplant.ops.config import example, load
from tickerplant.plant import EventsConfig, GlimpseConfig, Plant, PlantConfig, StreamConfig
from tickerplant.receive.events import Batch, GapLost, SessionEnded, SessionStarted, Source
from tickerplant.receive.recovery import RecoveryConfig
from tickerplant.wire.blocks import iter_messages, join_messages
from tickerplant.wire.events import RECORD, RECORD_SIZE, from_blocks

S1, S2 = b"SESSION001", b"SESSION002"
ANY_PORT = GlimpseConfig(Endpoint("127.0.0.1", 0))  # the snapshot service, out of the way
NO_EVENTS = EventsConfig(Endpoint("127.0.0.1", 0))  # the events stream, out of the way


# Resets each client of the cut test sees at the least: every round cuts each one, and 50-60
# rounds fit in its session on an idle two-core machine (22-50 with a process spinning on one
# core, 16 at the fewest with two).
CUT_AT_LEAST = 10


def msgs(first: int, count: int) -> bytes:
    return join_messages([b"m%d" % s for s in range(first, first + count)])


def test_a_lost_range_keeps_its_numbers_as_marks() -> None:
    stream = ItchStream()
    assert stream.deliver(SessionStarted(S1, None))
    stream.deliver(Batch(1, 3, msgs(1, 3)))
    stream.deliver(GapLost(4, 6, Source.LINE_A, 2.0))
    stream.deliver(Batch(6, 2, msgs(6, 2)))
    stream.deliver(SessionEnded(S1, 8))
    assert stream.journal is not None and stream.ended
    count, blocks = stream.journal.blocks(1, 100)
    assert count == 7
    assert list(iter_messages(blocks)) == [b"m1", b"m2", b"m3", b"\x00", b"\x00", b"m6", b"m7"]
    assert (stream.counters.messages, stream.counters.lost) == (7, 2)
    # A new session is a new journal, numbered from 1 again.
    assert stream.deliver(SessionStarted(S2, S1))
    stream.deliver(Batch(1, 1, msgs(1, 1)))
    assert stream.journal.session == S2 and len(stream.journal) == 1


def test_a_delivery_out_of_place_is_refused_not_renumbered() -> None:
    stream = ItchStream()
    stream.deliver(SessionStarted(S1, None))
    stream.deliver(Batch(1, 2, msgs(1, 2)))
    with pytest.raises(RuntimeError, match="at 5, the stream is at 3"):
        stream.deliver(Batch(5, 1, msgs(5, 1)))


def test_a_plant_that_starts_later_than_one_serves_the_numbers_before_as_lost() -> None:
    stream = ItchStream(first_sequence=10)
    stream.deliver(SessionStarted(S1, None))
    stream.deliver(Batch(10, 1, msgs(10, 1)))
    assert stream.journal is not None
    assert list(iter_messages(stream.journal.blocks(1, 10)[1])) == [b"\x00"] * 9 + [b"m10"]


def test_the_client_turns_marks_into_lost_notices_in_place() -> None:
    blocks = msgs(1, 2) + LOST * 3 + msgs(6, 1) + LOST
    assert _split(Batch(1, 7, blocks)) == [
        Batch(1, 2, msgs(1, 2)), Lost(3, 6), Batch(6, 1, msgs(6, 1)), Lost(7, 8)
    ]
    assert _split(Batch(1, 2, msgs(1, 2))) == [Batch(1, 2, msgs(1, 2))]
    one_byte = join_messages([b"x", b"y"])  # short messages that are not marks stay messages
    assert _split(Batch(1, 2, one_byte)) == [Batch(1, 2, one_byte)]


def test_the_example_config_holds_every_setting_and_loads_back_to_the_defaults() -> None:
    text = example(PlantConfig, (Endpoint,))
    table = tomllib.loads(text)
    assert load(PlantConfig, table, "", {Endpoint: Endpoint.parse}) == PlantConfig()
    assert "[feed.recovery]" in text and "[itch.limits]" in text
    assert "# capture =" in text  # unset by default: shown commented out


def test_users_log_in_with_their_password_checked_off_the_loop() -> None:
    config = PlantConfig(
        feed=FeedConfig(Endpoint("239.192.99.1", 40001), None),
        itch=StreamConfig(Endpoint("127.0.0.1", 0)),
        glimpse=ANY_PORT,
        events=NO_EVENTS,
        users={"alice": passwords.hash_password("s3cret")},
    )

    async def main() -> tuple[int, int]:
        plant = Plant(config)
        await plant.start()
        itch = Endpoint("127.0.0.1", plant.channels[0].itch.port)
        try:
            for name, word in (("alice", "wrong"), ("bob", "s3cret")):
                with pytest.raises(SubscribeError, match="not authorized"):
                    async for _ in subscribe(itch, username=name, password=word, retry=None):
                        pass
            good = asyncio.ensure_future(_collect(itch, Collected(), "alice", "s3cret"))
            # (the loop goes round meanwhile: the password check is not on it)
            counters = plant.channels[0].itch.counters
            await until(lambda: counters.logins, 10, "alice's login accepted")
            good.cancel()
            return counters.logins, counters.rejected
        finally:
            await plant.close()

    assert asyncio.run(main()) == (1, 2)


@pytest.mark.parametrize("channels", [1, 3])
def test_every_figure_the_plant_shows_is_registered(channels: int) -> None:
    from tickerplant.ops.figures import EXCHANGE, REGISTRY

    async def main() -> dict[str, object]:
        plant = Plant(PlantConfig(FeedConfig(Endpoint("239.192.99.1", 40001), None),
                                  StreamConfig(Endpoint("127.0.0.1", 0)), ANY_PORT,
                                  events=NO_EVENTS, channels=channels))
        return plant.figures()

    simulator = {f.name for f in EXCHANGE} - {"session"}  # the exchange's own
    several = {"channels"} if channels == 1 else set()  # the worst channels, by name
    assert sorted(asyncio.run(main())) == sorted(set(REGISTRY) - simulator - several)


def test_slow_consumer_policies_are_per_stream_and_itch_takes_only_disconnect() -> None:
    conflated = load(PlantConfig, {"events": {"slow_consumer": "conflate",
                                              "slow_consumers": {"bob": "skip"}}})
    assert conflated.events.slow_consumer == "conflate" and conflated.itch.slow_consumer == (
        "disconnect")
    assert conflated.events.policies() == {b"bob": Policy.SKIP}
    for key, value in (("slow_consumer", "conflate"), ("slow_consumers", {"bob": "skip"})):
        with pytest.raises(ConfigError) as err:  # told when the config loads, naming the field
            load(PlantConfig, {"itch": {key: value}})
        assert err.value.field.startswith(f"itch.{key}")
        assert "cannot be done on this stream" in str(err.value) and "disconnect" in str(err.value)
    for old in ("slow_consumer", "slow_consumers"):  # the plant-wide keys of before
        with pytest.raises(ConfigError, match=rf"^{old}: has moved; set \[events\] {old}"):
            load(PlantConfig, {old: "conflate" if old == "slow_consumer" else {"bob": "skip"}})


def test_a_config_with_a_password_in_the_clear_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"users\.alice: is not an scrypt hash"):
        PlantConfig(users={"alice": "s3cret"})
    with pytest.raises(ConfigError, match="SoupBinTCP user name"):
        PlantConfig(users={"much_too_long": passwords.hash_password("x")})
    with pytest.raises(ConfigError, match=r"slow_consumer: 'drop' is not a policy.*conflate"):
        EventsConfig(slow_consumer="drop")
    with pytest.raises(ConfigError, match=r"slow_consumers\.bob: 'nope' is not a policy"):
        EventsConfig(slow_consumers={"bob": "nope"})
    with pytest.raises(ConfigError, match="depth"):
        EventsConfig(depth=300)
    # A ring smaller than a publish would drop what the publish pushes (found by review).
    with pytest.raises(ConfigError, match=r"memory_bytes: 0 .* without a journal_dir"):
        StreamConfig(memory_bytes=0)
    assert StreamConfig(memory_bytes=0, journal_dir=Path("j")).memory_bytes == 0
    # One session kept would cut the clients of the one before, at its end.
    with pytest.raises(ConfigError, match=r"keep_sessions: 1 .* the one before"):
        StreamConfig(keep_sessions=1)
    stored = passwords.hash_password("s3cret")
    assert passwords.verify(stored, b"s3cret    ")  # as a login pads it
    assert not passwords.verify(stored, b"s3cret!")
    assert stored != passwords.hash_password("s3cret")  # salted


def _itch_plant(p: Ports, itch: StreamConfig) -> PlantConfig:
    """A plant of the exchange at ``p`` with its re-request and replay, serving ``itch``."""
    return PlantConfig(FeedConfig(p.line_a, p.line_b, rerequest=p.rerequest, replay=p.replay),
                       itch, ANY_PORT, events=NO_EVENTS)


async def _collect(
    itch: Endpoint, into: Collected, username: str = "", password: str = ""
) -> None:
    async for record in subscribe(itch, username=username, password=password, retry=0.05):
        into.receive(record)


async def _collect_events(events: Endpoint, into: CollectedEvents) -> None:
    async for record in subscribe(events, events=True, retry=0.05):
        into.receive(record)


async def _run(
    messages: int, *exchange_args: str, cuts: int = 0, recovery: bool = True,
) -> tuple[Plant, dict[str, Any], list[Collected]]:
    p = ports()
    feed = FeedConfig(
        p.line_a, p.line_b, rerequest=p.rerequest if recovery else None,
        replay=p.replay if recovery else None,
        recovery=RecoveryConfig() if recovery else RecoveryConfig(give_up_after=0.2),
    )  # fmt: skip
    plant = Plant(PlantConfig(feed, StreamConfig(Endpoint("127.0.0.1", 0)), ANY_PORT,
                                  events=NO_EVENTS))
    await plant.start()
    itch = Endpoint("127.0.0.1", plant.channels[0].itch.port)
    events = Endpoint("127.0.0.1", plant.channels[0].events.port)
    early, late = Collected(), Collected()
    clients = [asyncio.ensure_future(_collect(itch, early)),
               asyncio.ensure_future(_collect_events(events, early.events))]
    rng = random.Random(7)
    aborted: list[int] = []  # where each reset connection's subscriber was
    try:
        async with ExchangeProcess(
            p.line_a, p.line_b, p.rerequest, p.replay, "--messages", str(messages),
            "--eos-seconds", "1", *exchange_args,
        ) as exchange:  # fmt: skip
            await exchange.wait_published(messages // 3)
            clients.append(asyncio.ensure_future(_collect(itch, late)))  # joins mid-session
            clients.append(asyncio.ensure_future(_collect_events(events, late.events)))
            rounds = await _cut(plant, clients, cuts, rng, aborted)
            summary = await exchange.summary()
            await asyncio.wait_for(asyncio.gather(*clients), 30)
    finally:
        for client in clients:
            client.cancel()
        await plant.close()
    summary["aborted"] = aborted
    summary["rounds"] = rounds
    return plant, summary, [early, late]


async def _cut(plant: Plant, clients: list[asyncio.Future[None]], rounds: int,
               rng: random.Random, aborted: list[int]) -> int:  # fmt: skip
    """Up to ``rounds`` times, the server side resets every client's connection: once each
    client still in the session is logged in again (not on a timer: a client between
    connections would be passed over, the more so on a busy machine), at a random moment after
    (catching up or live). Ends early with the session: a client that has its End of Session is
    not cut again. ``clients`` alternate itch and events; returns the rounds done."""
    servers = ((plant.channels[0].itch, clients[0::2]), (plant.channels[0].events, clients[1::2]))
    cut: set[object] = set()  # reset already (closed at the loop's next turn)

    def connected(server: Any) -> list[Any]:
        # (not one whose session is over: it has what it needs and goes)
        return [s for s in server.fanout.subscribers
                if s.active and s.handle.transport is not None and s not in cut]  # fmt: skip

    def missing() -> str:
        return "; ".join(f"{name}: {len(connected(server))} of {sum(not c.done() for c in its)}"
                         " clients in the session logged in" for name, (server, its) in
                         zip(("itch", "events"), servers, strict=True))  # fmt: skip

    for made in range(rounds):
        await until(lambda: all(len(connected(server)) >= sum(not c.done() for c in its)
                                for server, its in servers), 10, missing)  # fmt: skip
        if all(c.done() for c in clients):
            return made
        await asyncio.sleep(rng.uniform(0.0, 0.03))
        for server, _ in servers:
            for subscriber in connected(server):
                subscriber.handle.transport.abort()
                aborted.append(subscriber.cursor)
                cut.add(subscriber)
    return rounds


@pytest.mark.slow
def test_subscribers_early_and_late_get_the_whole_day_exactly_once() -> None:
    messages = 200_000
    plant, summary, clients = asyncio.run(
        _run(messages, "--seed", "5", "--rate", "200000", "--drop-a", "0.05")
    )
    day = source_stream(5, 500, messages)
    source = list(iter_messages(day))
    assert summary["published"] == messages
    events = day_of_events(day)
    for client in clients:
        assert client.lost == [] and client.messages == source
        assert b"".join(client.events.records) == events
    figures = plant.figures()
    assert figures["logins"] == {"itch": 2, "events": 2}
    assert figures["slow_consumers"]["itch"]["disconnect"] == 0
    assert figures["sent_messages"]["itch"] == 2 * messages
    assert figures["sent_messages"]["events"] == 2 * len(events) // RECORD_SIZE


@pytest.mark.slow
def test_subscribers_cut_again_and_again_resume_with_every_message_once() -> None:
    messages = 1_000_000
    _, summary, clients = asyncio.run(
        _run(messages, "--seed", "6", "--rate", "100000", cuts=100)
    )
    day = source_stream(6, 500, messages)
    source = list(iter_messages(day))
    events = day_of_events(day)
    assert summary["published"] == messages
    for client in clients:
        assert client.messages == source and client.lost == []
        assert b"".join(client.events.records) == events and client.events.lost == []
    # Each reset was seen and resumed from, at the number after the last received.
    reconnects = sum(c.reconnects + c.events.reconnects for c in clients)
    assert reconnects == len(summary["aborted"])
    # Again and again: every client, in every round until the session ended.
    each = [n for c in clients for n in (c.reconnects, c.events.reconnects)]
    assert min(each) >= CUT_AT_LEAST, (each, summary["rounds"])


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[start, end) ranges with the adjacent ones joined."""
    out: list[tuple[int, int]] = []
    for start, end in ranges:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


@pytest.mark.slow
def test_what_the_plant_lost_reaches_subscribers_in_place_with_the_numbers_after_kept() -> None:
    messages = 100_000
    plant, _, clients = asyncio.run(
        _run(messages, "--seed", "8", "--rate", "200000", "--drop-a", "0.1", "--drop-b", "0.1",
             "--no-rerequest", "--no-replay", recovery=False)
    )
    source = list(iter_messages(source_stream(8, 500, messages)))
    lost = plant.channels[0].feed.session.lost_ranges
    assert lost, "10 % loss on each line without repair lost nothing"
    for client in clients:
        # On itch a lost range is a run of marks, one per number, which the client tells as
        # one Lost per run it read at once: a run cut by a read boundary is told in two.
        assert merged(client.lost) == merged(lost)
        assert client.events.lost == lost  # told in place on the events stream: one notice each
        assert len(client.messages) == messages
        lost_numbers = {s for a, b in lost for s in range(a, b)}
        for number, (got, want) in enumerate(zip(client.messages, source, strict=True), 1):
            assert got == (LOST[2:] if number in lost_numbers else want), number
    assert plant.figures()["stream_lost_messages"]["itch"] == sum(b - a for a, b in lost)


@pytest.mark.slow
def test_a_restarted_plant_reopens_its_journal_and_clients_resume_across_it(
    tmp_path: Path,
) -> None:
    messages = 300_000
    p = ports()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        itch = Endpoint("127.0.0.1", s.getsockname()[1])
    # A ring of 256 KiB: a client from 1 reads most of the day back through the file.
    config = _itch_plant(p, StreamConfig(itch, journal_dir=tmp_path, memory_bytes=256 << 10))
    client, late = Collected(), Collected()

    async def main() -> tuple[int, int]:
        plant = Plant(config)
        await plant.start()
        reader = asyncio.ensure_future(_collect(itch, client))
        try:
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--messages", str(messages),
                "--seed", "9", "--rate", "100000", "--eos-seconds", "1",
            ) as exchange:  # fmt: skip
                await exchange.wait_published(messages // 3)
                await plant.close()  # the plant stops mid-session...
                stopped_at = len(plant.channels[0].stream.journal or ())
                await asyncio.sleep(0.3)  # ...is down a while, the exchange publishing on...
                plant = Plant(config)  # ...and starts again: the same journal, the same numbers
                reopened = len(plant.channels[0].itch.journal)
                await plant.start()
                await exchange.summary()
                await asyncio.wait_for(reader, 30)
            assert plant.figures()["journal_memory_bytes"]["itch"] < 1 << 20
            await asyncio.wait_for(_collect(itch, late), 30)  # from 1, at the session's end
        finally:
            reader.cancel()
            await plant.close()
        return stopped_at, reopened

    stopped_at, reopened = asyncio.run(main())
    source = source_stream(9, 500, messages)
    assert 0 < stopped_at == reopened < messages
    assert client.messages == list(iter_messages(source)) and client.lost == []
    assert client.reconnects >= 1  # it saw the plant go and resumed by number
    assert late.messages == client.messages and late.reconnects == 0
    assert (tmp_path / "TP00000001.journal").read_bytes() == source  # the file: the day, once


@pytest.mark.slow
def test_a_spilled_block_the_disk_changed_is_fetched_again_from_the_exchange_then_served(
    tmp_path: Path,
) -> None:
    messages = 100_000
    p = ports()
    config = _itch_plant(p, StreamConfig(Endpoint("127.0.0.1", 0), journal_dir=tmp_path,
                                         memory_bytes=0))
    source = source_stream(5, 500, messages)
    path = tmp_path / "TP00000001.journal"
    client = Collected()

    async def read(itch: Endpoint) -> None:
        async for record in subscribe(itch, retry=0.05):
            client.receive(record)
            if len(client.messages) >= messages:
                return

    async def main() -> dict[str, Any]:
        plant = Plant(config)
        await plant.start()
        try:
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--messages", str(messages),
                "--seed", "5", "--eos-seconds", "60",
            ):  # the exchange stays up after its last message: its replay answers
                await until(lambda: path.exists() and path.stat().st_size == len(source), 30,
                            "the plant's journal file holding the whole session")  # fmt: skip
                fd = os.open(path, os.O_RDWR)  # the disk changes a byte mid-file
                at = len(source) // 2
                os.pwrite(fd, bytes([os.pread(fd, 1, at)[0] ^ 0x01]), at)
                os.close(fd)
                await asyncio.wait_for(read(Endpoint("127.0.0.1", plant.channels[0].itch.port)), 30)
                return plant.figures()
        finally:
            await plant.close()

    figures = asyncio.run(main())
    assert client.messages == list(iter_messages(source)) and client.lost == []
    assert client.reconnects >= 1  # told the block was bad, it resumed by number
    assert figures["journal_unreadable"]["itch"] >= 1
    assert figures["journal_mended_blocks"]["itch"] == 1
    assert figures["journal_unmended_blocks"]["itch"] == 0
    assert path.read_bytes() == source  # written back


@pytest.mark.slow
def test_a_restarted_plant_that_repairs_what_the_first_run_lost_numbers_events_by_source(
    tmp_path: Path,
) -> None:
    """The first run has no recovery and loses ranges (one notice each on the events stream);
    the second replays the whole day from the exchange and so raises records for them. The
    journal goes on past the first run's end with the records the books raise after it, each
    once, numbered on: not by counting what the rebuilt books raise again."""
    messages = 200_000
    p = ports()
    events = EventsConfig(Endpoint("127.0.0.1", 0), journal_dir=tmp_path)
    repairing = FeedConfig(p.line_a, p.line_b, rerequest=p.rerequest, replay=p.replay)
    losing = FeedConfig(p.line_a, p.line_b, recovery=RecoveryConfig(give_up_after=0.2))
    itch = StreamConfig(Endpoint("127.0.0.1", 0))

    async def main() -> tuple[list[tuple[int, int]], int, bytes]:
        plant = Plant(PlantConfig(losing, itch, ANY_PORT, events=events))
        await plant.start()
        try:
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--messages", str(messages),
                "--seed", "11", "--rate", "100000", "--eos-seconds", "1",
                "--drop-a", "0.1", "--drop-b", "0.1",
            ) as exchange:  # fmt: skip
                await exchange.wait_published(messages // 2)
                await until(lambda: plant.channels[0].feed.session.lost_ranges, 10,
                            lambda: "10 % loss on each line without repair lost nothing")
                await plant.close()
                lost = list(plant.channels[0].feed.session.lost_ranges)
                first_run = len(plant.channels[0].event_stream.journal or ())
                plant = Plant(PlantConfig(repairing, itch, ANY_PORT, events=events))
                await plant.start()
                await exchange.summary()
                await until(lambda: plant.channels[0].stream.ended, 30,
                            lambda: f"the restarted plant at {plant.books.at[0]} of {messages}")
            assert plant.channels[0].feed.session.lost_ranges == []
            journal = plant.channels[0].event_stream.journal
            assert journal is not None
            served = journal.blocks(1, len(journal))[1]
        finally:
            await plant.close()
        return lost, first_run, served

    lost, first_run, served = asyncio.run(main())
    rows = from_blocks(served)
    assert rows["sequence"].tolist() == list(range(1, len(rows) + 1))
    sources = rows["source"].astype(np.int64)
    assert (np.diff(sources) >= 0).all(), "records journaled again after the first run's end"
    # The losses the first run told, in place, each once; the second run lost nothing.
    notices = rows[rows["kind"] == b"l"]
    assert len(notices) and notices["source"].max() < sources[first_run - 1]
    assert {int(s) for s in notices["source"]} <= {start for start, _ in lost}
    # After the first run's end: the day's records from books that had it all, as they are.
    day = np.frombuffer(day_of_events(source_stream(11, 500, messages)), dtype=RECORD)
    after = unnumbered(rows, np.arange(len(rows)) >= first_run)
    since = unnumbered(day, day["source"] > sources[first_run - 1])
    assert len(after) > 0 and after == since


def test_a_journal_cut_by_a_crash_is_reopened_up_to_its_last_whole_message(
    tmp_path: Path,
) -> None:
    data = msgs(1, 5) + b"\x00\x09par"
    (tmp_path / "SESSION001.journal").write_bytes(data)
    (tmp_path / "SESSION001.journal.crc").write_bytes(Checksums.of(data).encode())
    plant = Plant(PlantConfig(itch=StreamConfig(Endpoint("127.0.0.1", 0), journal_dir=tmp_path),
                              glimpse=ANY_PORT, events=NO_EVENTS))
    assert len(plant.channels[0].itch.journal) == 5 and plant.channels[0].itch.journal.session == S1
    assert (tmp_path / "SESSION001.journal").read_bytes() == msgs(1, 5)
    assert (tmp_path / "SESSION001.journal.crc").read_bytes() == Checksums.of(msgs(1, 5)).encode()


@pytest.mark.slow
def test_a_glimpse_snapshot_then_itch_from_its_number_gives_the_whole_days_books() -> None:
    messages = 300_000
    p = ports()
    config = PlantConfig(
        FeedConfig(p.line_a, p.line_b, rerequest=p.rerequest, replay=p.replay),
        StreamConfig(Endpoint("127.0.0.1", 0)),
        GlimpseConfig(Endpoint("127.0.0.1", 0), refresh=0.1),
        events=NO_EVENTS,
    )

    async def main() -> tuple[list[bytes], int, list[bytes]]:
        plant = Plant(config)
        await plant.start()
        itch = Endpoint("127.0.0.1", plant.channels[0].itch.port)
        glimpse = Endpoint("127.0.0.1", plant.channels[0].glimpse.port)
        try:
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--messages", str(messages),
                "--seed", "12", "--rate", "150000", "--eos-seconds", "1",
            ) as exchange:  # fmt: skip
                await exchange.wait_published(messages // 2)
                snap: list[bytes] = []

                async def snapshot() -> None:
                    async for record in subscribe(glimpse, retry=None):  # to End of Session
                        assert isinstance(record, Batch)
                        snap.extend(iter_messages(record.blocks))

                await asyncio.wait_for(snapshot(), 30)  # (none made: the plant's refresh failed)
                assert snap[-1][:1] == b"G"
                resume = int(snap[-1][1:])
                rest: list[bytes] = []
                async for record in subscribe(itch, first=resume, retry=None):
                    assert isinstance(record, Batch)
                    assert record.first == resume + len(rest)
                    rest += iter_messages(record.blocks)
                await exchange.summary()
        finally:
            await plant.close()
        return snap[:-1], resume, rest

    snap, resume, rest = asyncio.run(main())
    source = list(iter_messages(source_stream(12, 500, messages)))
    assert 1 < resume < messages and len(rest) == messages - resume + 1
    assert rest == source[resume - 1 :]
    whole, late = BookEngine(), BookEngine()
    whole.process(join_messages(source))
    late.process(join_messages(snap))  # the snapshot, then the stream from its number
    late.process(join_messages(rest))
    assert late.live_orders == whole.live_orders > 0 and sum(late.anomalies.values()) == 0
    for locate in whole.symbols():
        a, b = whole.depth(locate, 1 << 20), late.depth(locate, 1 << 20)
        assert a.bids.tobytes() == b.bids.tobytes() and a.asks.tobytes() == b.asks.tobytes()


@pytest.mark.slow
def test_the_subscribe_command_writes_the_events_stream_as_parquet_and_json(
    tmp_path: Path,
) -> None:
    import json
    import sys

    import pyarrow.parquet as pq

    messages = 100_000
    p = ports()
    config = _itch_plant(p, StreamConfig(Endpoint("127.0.0.1", 0)))
    parquet = tmp_path / "day.parquet"

    async def command(*args: str) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tickerplant", "subscribe", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err
        return out

    async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        plant = Plant(config)
        await plant.start()
        events = f"127.0.0.1:{plant.channels[0].events.port}"
        try:
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--messages", str(messages),
                "--seed", "4", "--rate", "200000", "--eos-seconds", "0.5",
            ) as exchange:  # fmt: skip
                await exchange.summary()
                await until(lambda: plant.channels[0].stream.ended, 30,
                            "the plant's itch stream ended")
            # Both end at the End of Session, after the whole day from 1.
            await command(events, "--events", "--parquet", str(parquet))
            rows = pq.read_table(parquet).to_pylist()
            name = next(r["symbol"] for r in rows if r["kind"] == "symbol")
            out = await command(events, "--symbols", name, "--json")
            return rows, [json.loads(line) for line in out.splitlines()]
        finally:
            await plant.close()

    rows, narrowed = asyncio.run(main())
    day = np.frombuffer(day_of_events(source_stream(4, 500, messages)), dtype=RECORD)
    assert [r["sequence"] for r in rows] == day["sequence"].tolist()
    assert [r["source"] for r in rows] == day["source"].tolist()
    trades = [r for r in rows if r["kind"] == "trade"]
    assert len(trades) == int((day["kind"] == b"t").sum()) and trades[0]["price"] > 0
    assert not list(tmp_path.glob("*.partial"))
    name = next(r["symbol"] for r in rows if r["kind"] == "symbol")
    assert {r.get("symbol") for r in narrowed if r["locate"]} == {name}
    assert {r["kind"] for r in narrowed} >= {"symbol", "bbo", "trade"}
