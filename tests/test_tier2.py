"""Tier-2: the plant's events streams republished as MoldUDP64 on its own groups, received by
the same feed machinery the plant uses for the exchange (real loopback multicast, a real
exchange process)."""

from __future__ import annotations

import asyncio

import pytest

from harness import ports, tier2_plant, until
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.feed.handler import FeedConfig, FeedHandler
from tickerplant.io.multicast import LineConfig
from tickerplant.plant import Plant, PlantConfig
from tickerplant.plant.tier2 import Tier2Config
from tickerplant.receive.events import Batch

ANY = Endpoint("127.0.0.1", 0)


def test_tier2_takes_both_lines_or_neither_and_groups_no_channel_shares() -> None:
    with pytest.raises(ConfigError, match="line_b: is missing"):
        Tier2Config(LineConfig("239.193.1.1", 32001))
    feed = FeedConfig(Endpoint("239.192.77.1", 31001), Endpoint("239.192.77.2", 31002))
    with pytest.raises(ConfigError, match=r"tier2\.line_a: channel 2's line A .* as is"):
        PlantConfig(feed, channels=2, tier2=Tier2Config(
            LineConfig("239.193.1.1", 32001), LineConfig("239.193.2.1", 32001)))  # fmt: skip
    assert not Tier2Config().on


@pytest.mark.slow
def test_a_receiver_of_tier2_gets_each_channels_events_journal_exactly_even_joining_late() -> None:
    """Two channels, 5 % loss on each tier-2 line; one receiver per channel joins tier-2 from
    the start, another after half the day (the records before it are repaired by replay from
    the plant's events service, a login naming the session): each delivers its channel's
    events journal, record for record; what both lines lost, the tier-2 re-request server
    answered."""
    k, messages = 2, 200_000
    config = tier2_plant("239.194.20", "239.194.30", k)
    p, tier2 = config.feed, config.tier2
    pairs = tier2.lines(k)
    got: dict[tuple[int, bool], list[bytes]] = {(n, late): [] for n in range(k)
                                                 for late in (False, True)}  # fmt: skip
    next_of = dict.fromkeys(got, 1)

    def receiver(n: int, late: bool, events: Endpoint) -> FeedHandler:
        a, b = pairs[n]

        def on_batch(batch: Batch) -> None:
            assert batch.first == next_of[n, late], "in order, once"
            next_of[n, late] = batch.end
            got[n, late].append(batch.blocks)

        return FeedHandler(FeedConfig(Endpoint(a.group, a.port), Endpoint(b.group, b.port),
                                      rerequest=tier2.rerequest, replay=events),
                           on_batch)  # fmt: skip

    replays: list[int] = []
    rerequests: list[int] = []

    async def main() -> Plant:
        plant = Plant(config)
        await plant.start()
        events = Endpoint("127.0.0.1", plant.routers["events"].port)
        early = [receiver(n, False, events) for n in range(k)]
        late = [receiver(n, True, events) for n in range(k)]
        try:
            for feed in early:
                await feed.start()
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--channels", str(k),
                "--messages", str(messages), "--seed", "13", "--rate", "100000",
                "--eos-seconds", "0.5",
            ) as exchange:  # fmt: skip
                await exchange.wait_published(messages // 2)
                for feed in late:
                    await feed.start()
                await exchange.summary()
                await until(lambda: all(c.stream.ended for c in plant.channels), 30,
                            "the plant's streams ended")  # fmt: skip
                await until(lambda: all(f.session_ended.is_set() for f in early + late), 30,
                            lambda: "every tier-2 receiver's session ended: " + ", ".join(
                                str(f.figures()["next_sequence"]) for f in early + late))
            replays.extend(f.figures()["replays_started"] for f in late)
            rerequests.extend(f.figures()["rerequests_sent"] for f in early)
        finally:
            for feed in early + late:
                await feed.close()
            await plant.close()
        return plant

    plant = asyncio.run(main())
    for n, channel in enumerate(plant.channels):
        journal = channel.event_stream.journal
        assert journal is not None and len(journal) > 1000
        _, whole = journal.blocks(1, len(journal))
        assert b"".join(got[n, False]) == whole, f"channel {n + 1}, from the start"
        assert b"".join(got[n, True]) == whole, f"channel {n + 1}, joined late"
    assert all(replays), replays  # the late ones' first half: replayed by the events service
    assert all(rerequests), rerequests
    assert plant.figures()["tier2_packets"] > 0


def test_what_a_reopened_journal_held_is_not_sent_again_only_what_comes_after() -> None:
    """A plant restarted on its journal files: tier-2 goes on from the journal's end (the
    heartbeats say where; a receiver lacking the rest repairs it), not from 1."""
    from tickerplant.distribute.journal import Journal
    from tickerplant.io.multicast import open_receiver
    from tickerplant.plant.tier2 import Tier2
    from tickerplant.wire import events as ev
    from tickerplant.wire.moldudp64 import decode_packet

    p = ports(group_base="239.194.31")
    config = Tier2Config(LineConfig(p.line_a.host, p.line_a.port),
                         LineConfig(p.line_b.host, p.line_b.port), rerequest=None)  # fmt: skip
    journal = Journal(b"REOPEN0001")
    journal.append(b"".join(ev.notice(ev.LOST, n, n, n, 1, 0) for n in range(1, 11)))
    receiver, _ = open_receiver(p.line_a, "127.0.0.1", 1 << 20)

    async def main() -> list[bytes]:
        tier2 = Tier2(config, 1)
        await tier2.start([journal])
        try:
            tier2.publish(0)  # nothing new: nothing sent
            journal.append(ev.notice(ev.LOST, 11, 11, 11, 1, 0))
            tier2.publish(0)
            heard = []
            receiver.setblocking(False)
            loop = asyncio.get_running_loop()
            heard.append(await asyncio.wait_for(loop.sock_recv(receiver, 2048), 5))
            assert tier2.figures()["tier2_packets"] == 1
            return heard
        finally:
            await tier2.close()

    try:
        (packet,) = asyncio.run(main())
    finally:
        receiver.close()
    decoded = decode_packet(packet)
    assert decoded.sequence == 11 and len(decoded.messages) == 1
