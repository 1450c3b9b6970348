"""The feed handler on real loopback multicast, fed by hand-made packets."""

from __future__ import annotations

import asyncio

import pytest

from harness import ports, until
from tickerplant.distribute.fanout import FanOut
from tickerplant.distribute.journal import Journal
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.feed.handler import FeedConfig, FeedHandler
from tickerplant.io.multicast import open_sender
from tickerplant.io.soupbin import SoupServer
from tickerplant.receive.events import Batch, Event, GapLost, SessionEnded, Source
from tickerplant.receive.recovery import RecoveryConfig
from tickerplant.wire import moldudp64 as mold
from tickerplant.wire import soupbintcp as soup
from tickerplant.wire.blocks import iter_messages, join_messages

SESSION = mold.session_bytes("LOOPTEST01")


def _lines() -> tuple[Endpoint, Endpoint]:
    """Two multicast lines of this test's own (harness.ports: no two tests share one)."""
    p = ports(group_base="239.192.80")
    return p.line_a, p.line_b


async def _settle(feed: FeedHandler, last: int, timeout: float = 5.0) -> None:
    """Until every message up to ``last`` is delivered or reported lost."""
    counters, lost = feed.session.counters, feed.session.sequencer.counters

    def settled() -> int:
        return counters.delivered + lost.lost

    await until(lambda: settled() >= last, timeout,
                lambda: f"{settled()} of {last} messages delivered or reported lost")


def _received(feed: FeedHandler, source: Source) -> int:
    """Datagrams the feed has taken from ``source``'s socket, good or bad."""
    return feed.session.counters.sources[source].packets


def test_loss_on_one_line_repaired_by_the_other_and_bad_datagrams_counted() -> None:
    line_a, line_b = _lines()
    got: list[bytes] = []
    events: list[Event] = []

    def on_batch(batch: Batch) -> None:
        got.extend(iter_messages(batch.blocks))

    async def main() -> None:
        feed = FeedHandler(FeedConfig(line_a, line_b), on_batch, events.append)
        await feed.start()
        sender, _ = open_sender("127.0.0.1")
        sender.setblocking(True)
        try:
            bad = [
                b"",
                b"tiny",
                mold.encode_packet(SESSION, 1, [b"x" * 10])[:-3],  # truncated block
                mold.encode_heartbeat(SESSION, 1) + b"zz",  # count mismatch
                b"\xff" * 3000,  # longer than a receive row: truncated datagram
                mold.encode_packet(SESSION, 0, [b"x"]),  # sequence numbers start at 1
                mold.encode_packet(SESSION, 2**63 + 5, [b"x"]),  # no session gets that far
            ]
            first = mold.encode_packet(SESSION, 1, [b"msg-000001"])
            sender.sendto(first, (line_a.host, line_a.port))  # the session we follow
            await until(lambda: feed.session.counters.delivered == 1, 5, "the first packet taken")
            bad.append(mold.encode_packet(mold.session_bytes("SOMEONEELS"), 1, [b"x"]))
            for raw in bad:
                sender.sendto(raw, (line_a.host, line_a.port))
            seq = 1
            sent_a = 1 + len(bad)
            for i in range(2000):
                msgs = [b"msg-%06d" % (seq + k) for k in range(5)]
                packet = mold.encode_packet(SESSION, seq, msgs)
                if i % 10 != 3:  # line A loses a tenth of its packets
                    sender.sendto(packet, (line_a.host, line_a.port))
                    sent_a += 1
                sender.sendto(packet, (line_b.host, line_b.port))
                seq += 5
                if i % 100 == 99:  # the feed reads on this loop: let it, before buffers fill
                    await until(lambda a=sent_a, b=i + 1: _received(feed, Source.LINE_A) >= a
                                and _received(feed, Source.LINE_B) >= b, 5,
                                f"the feed taking the {i + 1} packets sent")  # fmt: skip
            sender.sendto(mold.encode_end_of_session(SESSION, seq), (line_a.host, line_a.port))
            await _settle(feed, seq - 1)
            await asyncio.wait_for(feed.session_ended.wait(), 5)
        finally:
            sender.close()
            await feed.close()
        figures = feed.figures()
        assert figures["defects"]["a"] == {
            "short_header": 2,
            "truncated_block": 1,
            "count_mismatch": 1,
            "truncated_datagram": 1,
            "bad_sequence": 2,
        }
        assert figures["foreign_packets"]["a"] == 1
        assert figures["duplicates_delivered"] == 0 == figures["lost_messages"]
        assert figures["rcvbuf_bytes"]["a"] >= 65536
        assert figures["line_state"] == {"a": "up", "b": "up"}

    asyncio.run(main())
    assert got == [b"msg-%06d" % s for s in range(1, 10001)]
    assert any(isinstance(e, SessionEnded) for e in events)
    assert not any(isinstance(e, GapLost) for e in events)


def test_loss_on_both_lines_without_repair_services_is_reported_lost() -> None:
    line_a, line_b = _lines()
    got: list[int] = []
    lost: list[tuple[int, int]] = []

    def on_batch(batch: Batch) -> None:
        got.extend(range(batch.first, batch.end))

    def on_event(event: Event) -> None:
        if isinstance(event, GapLost):
            lost.append((event.start, event.end))

    async def main() -> None:
        cfg = FeedConfig(line_a, line_b, recovery=RecoveryConfig(give_up_after=0.2))
        feed = FeedHandler(cfg, on_batch, on_event)
        await feed.start()
        sender, _ = open_sender("127.0.0.1")
        sender.setblocking(True)
        try:
            for first in range(1, 100, 3):
                packet = mold.encode_packet(SESSION, first, [b"a", b"b", b"c"])
                if first != 31:  # cut on both lines
                    for line in (line_a, line_b):
                        sender.sendto(packet, (line.host, line.port))
            await _settle(feed, 99, timeout=3)
        finally:
            sender.close()
            await feed.close()

    asyncio.run(main())
    assert lost == [(31, 34)]
    assert got == [s for s in range(1, 100) if not 31 <= s < 34]


def test_bad_config_names_the_field() -> None:
    with pytest.raises(ConfigError, match="line_a"):
        Endpoint.parse("239.1.1.1", "line_a")
    with pytest.raises(ConfigError, match="rcvbuf"):
        FeedConfig(Endpoint("239.1.1.1", 1), None, rcvbuf=10)


def test_a_replay_server_that_refuses_us_ends_in_a_reported_loss_not_a_stuck_gap() -> None:
    line_a, line_b = _lines()
    lost: list[tuple[int, int]] = []

    def on_event(event: Event) -> None:
        if isinstance(event, GapLost):
            lost.append((event.start, event.end))

    async def main() -> FeedHandler:
        journal = Journal(SESSION)
        journal.append(join_messages([b"m%d" % i for i in range(1, 1001)]))
        server = SoupServer(FanOut(journal, (b"user", b"secret")), "127.0.0.1", 0)
        port = await server.start()
        cfg = FeedConfig(
            line_a, line_b, replay=Endpoint("127.0.0.1", port), replay_username="user",
            replay_password="wrong", rerequest=None,
            recovery=RecoveryConfig(replay_threshold=10, replay_retry=0.1, give_up_after=0.5),
        )  # fmt: skip
        feed = FeedHandler(cfg, on_event=on_event)
        await feed.start()
        sender, _ = open_sender("127.0.0.1")
        try:
            # Joined late: the lines are at 1001; 1..1000 must come from the replay, which says no.
            sender.sendto(mold.encode_packet(SESSION, 1001, [b"m1001"]), (line_a.host, line_a.port))
            await _settle(feed, 1001, timeout=5)
        finally:
            sender.close()
            await feed.close()
            await server.close()
        return feed

    feed = asyncio.run(main())
    assert lost == [(1, 1001)]
    assert feed.session.counters.delivered == 1
    failures = feed.figures()["replay_failures"]
    assert any("ReplayError" in reason for reason in failures), failures


def test_a_replay_that_logs_in_and_then_says_nothing_does_not_hold_the_gap_open() -> None:
    line_a, line_b = _lines()
    lost: list[tuple[int, int]] = []

    def on_event(event: Event) -> None:
        if isinstance(event, GapLost):
            lost.append((event.start, event.end))

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(49)  # the Login Request
        writer.write(soup.encode(soup.LoginAccepted(SESSION, 1)))
        for _ in range(100):  # heartbeats only: alive, and useless
            writer.write(soup.encode(soup.ServerHeartbeat()))
            await asyncio.sleep(0.1)
        writer.close()

    async def main() -> FeedHandler:
        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = FeedConfig(
            line_a, line_b, replay=Endpoint("127.0.0.1", port), rerequest=None,
            recovery=RecoveryConfig(replay_threshold=10, give_up_after=0.5, replay_stall=0.5),
        )  # fmt: skip
        feed = FeedHandler(cfg, on_event=on_event)
        await feed.start()
        sender, _ = open_sender("127.0.0.1")
        started = asyncio.get_running_loop().time()
        try:
            sender.sendto(mold.encode_packet(SESSION, 1001, [b"m1001"]), (line_a.host, line_a.port))
            await _settle(feed, 1001, timeout=8)
        finally:
            sender.close()
            await feed.close()
            server.close()
        assert asyncio.get_running_loop().time() - started < 4  # not the 60 s replay timeout
        return feed

    feed = asyncio.run(main())
    assert lost == [(1, 1001)]
    failures = feed.figures()["replay_failures"]
    assert any("stalled" in reason for reason in failures), failures


def test_a_new_session_cancels_the_old_sessions_replay() -> None:
    line_a, line_b = _lines()
    got: list[tuple[int, bytes]] = []

    def on_batch(batch: Batch) -> None:
        got.extend(zip(range(batch.first, batch.end), iter_messages(batch.blocks), strict=True))

    logins: list[bytes] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        logins.append(await reader.read(49))
        writer.write(soup.encode(soup.LoginAccepted(SESSION, 1)))
        await asyncio.sleep(5)  # logged in, and sends nothing
        writer.close()

    async def main() -> FeedHandler:
        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = FeedConfig(line_a, line_b, replay=Endpoint("127.0.0.1", port), rerequest=None,
                         recovery=RecoveryConfig(replay_threshold=10, give_up_after=30))
        feed = FeedHandler(cfg, on_batch)
        await feed.start()
        sender, _ = open_sender("127.0.0.1")
        a = (line_a.host, line_a.port)
        try:
            sender.sendto(mold.encode_packet(SESSION, 1001, [b"old"]), a)  # late join: replay
            await until(lambda: logins and feed.session.recovery.replaying is not None, 5,
                        "the replay of 1..1000 under way, logged in")  # fmt: skip
            sender.sendto(mold.encode_end_of_session(SESSION, 1002), a)
            await until(lambda: feed.session.counters.sources[Source.LINE_A].end_of_session, 5,
                        "the old session's End of Session taken")  # fmt: skip
            new = mold.session_bytes("LOOPTEST02")
            sender.sendto(mold.encode_packet(new, 1, [b"new-1", b"new-2"]), a)
            await until(lambda: len(got) >= 3, 5, lambda: f"the new session delivered: {got}")
        finally:
            sender.close()
            await feed.close()
            server.close()
        return feed

    feed = asyncio.run(main())
    assert feed.session.recovery.replaying is None
    # The old session's gap is reported lost at the change, its 1001 follows; then the new one.
    assert got == [(1001, b"old"), (1, b"new-1"), (2, b"new-2")]
    assert feed.session.lost_ranges == [(1, 1001)]
    assert feed.session.counters.duplicates_delivered == 0


def test_a_consumer_that_raises_loses_nothing_else_and_is_counted() -> None:
    line_a, _ = _lines()
    got: list[int] = []
    refused: list[int] = []

    def flaky(batch: Batch) -> None:
        if batch.first == 1:
            refused.extend(range(batch.first, batch.end))
            raise RuntimeError("consumer bug")
        got.extend(range(batch.first, batch.end))

    async def main() -> FeedHandler:
        feed = FeedHandler(FeedConfig(line_a, None), flaky)
        await feed.start()
        sender, _ = open_sender("127.0.0.1")
        try:
            for sent, first in enumerate(range(1, 30, 3), 1):
                sender.sendto(mold.encode_packet(SESSION, first, [b"a", b"b", b"c"]),
                              (line_a.host, line_a.port))
                # one batch per packet: the next is sent once the feed has taken this one
                await until(lambda n=sent: _received(feed, Source.LINE_A) >= n, 5,
                            f"packet {sent} taken")  # fmt: skip
            await _settle(feed, 30)
        finally:
            sender.close()
            await feed.close()
        return feed

    feed = asyncio.run(main())
    assert feed.consumer_errors == 1
    assert refused and refused + got == list(range(1, 31))
