"""Channels: a day's messages partitioned by stock over K sessions, each channel's name and
lines derived from the base ones (a pure function of the bytes), then published by one
publisher on each channel's own lines (real loopback multicast)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from pathlib import Path

import numpy as np
import pytest

from harness import ports, source_stream
from test_publisher import data_packets, drain, lines_config, receiver, run
from tickerplant.client import subscribe
from tickerplant.distribute.journal import Journal
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.exchange.publisher import Publisher
from tickerplant.exchange.simulator import ExchangeConfig, SyntheticSource, run_exchange
from tickerplant.exchange.summary import ExchangeSummary
from tickerplant.io.multicast import Line, LineConfig, drop_mask
from tickerplant.receive.events import Batch
from tickerplant.wire.blocks import iter_messages, join_messages
from tickerplant.wire.channels import lines_of, session_of, split
from tickerplant.wire.moldudp64 import (
    END_OF_SESSION,
    decode_packet,
    encode_request,
    session_bytes,
)


def locate(message: bytes) -> int:
    return int.from_bytes(message[1:3], "big")


@pytest.mark.parametrize("channels", [2, 3, 8])
def test_each_stock_goes_to_one_channel_and_messages_of_no_stock_to_every_one(
    channels: int,
) -> None:
    day = source_stream(3, 40, 20_000)
    parts = split(day, channels)
    assert len(parts) == channels
    messages = list(iter_messages(day))
    for k, part in enumerate(parts):  # in the day's order: what a Python filter keeps
        want = [m for m in messages if locate(m) == 0 or (locate(m) - 1) % channels == k]
        assert list(iter_messages(part)) == want
    market_wide = [m for m in messages if locate(m) == 0]
    assert market_wide and {m[:1] for m in market_wide} >= {b"S"}  # the day's system events
    assert sum(len(p) for p in parts) == len(day) + (channels - 1) * len(
        join_messages(market_wide))  # fmt: skip
    # Every stock's messages, its Stock Directory first, in one channel only.
    for k, part in enumerate(parts):
        stocks = {locate(m) for m in iter_messages(part)} - {0}
        assert stocks and all((s - 1) % channels == k for s in stocks)


def test_one_channel_is_the_day_itself_and_a_partial_block_is_refused() -> None:
    day = source_stream(3, 10, 2_000)
    assert split(day, 1) == [day]
    with pytest.raises(ValueError, match="partial block"):
        split(day[:-1], 2)


def test_channel_sessions_and_groups_are_derived_from_the_base_ones() -> None:
    assert [session_of("TP00000001", k, 3) for k in (1, 2, 3)] == [
        "TP00000001", "TP00000002", "TP00000003"]  # fmt: skip
    assert session_of("TP001", 1, 1) == "TP001"  # one channel: the base session as it is
    assert session_of("NSDQ", 12, 48) == "NSDQ012"
    a, b = Endpoint("239.192.77.1", 31001), Endpoint("239.192.77.2", 31002)
    assert lines_of(a, b, 3) == [
        (a, b),
        (Endpoint("239.192.78.1", 31001), Endpoint("239.192.78.2", 31002)),
        (Endpoint("239.192.79.1", 31001), Endpoint("239.192.79.2", 31002)),
    ]


def test_channels_that_would_share_a_group_or_leave_multicast_are_told() -> None:
    a, b = Endpoint("239.1.1.1", 30001), Endpoint("239.1.2.1", 30001)
    assert len(lines_of(a, b, 1)) == 1
    told = "channel 2's line A is 239.1.2.1:30001, as is channel 1's line B"
    with pytest.raises(ConfigError, match=re.escape(told)):
        lines_of(a, b, 2)
    with pytest.raises(ConfigError, match=re.escape("240.0.0.1 is not a multicast address")):
        lines_of(Endpoint("239.255.255.1", 30001), Endpoint("239.255.255.2", 30002), 2)
    for count in (0, 1000):
        with pytest.raises(ConfigError, match="give 1 to 999"):
            lines_of(a, Endpoint("239.9.1.1", 30002), count)
    for told, config in (
        ("channels: 0; give 1 to 999", dict(channels=0)),
    ):  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(told)):
            ExchangeConfig(**config)  # type: ignore[arg-type]


# (The sockets tests are not run again with the JIT off: the routing they rely on is checked
# both ways by the tests above, on the bytes alone.)
@pytest.mark.slow
def test_one_publisher_sends_each_channel_its_stocks_as_a_session_of_its_own() -> None:
    """K = 3 over six lines: each channel's session numbered from 1 without a gap, holding
    exactly its part of the day, with an End of Session of its own; loss injected on a
    channel's line A follows that line's own mask, not another channel's."""
    day = source_stream(5, 30, 30_000)
    k = 3
    sessions = [session_bytes(session_of("CHTEST0001", n, k)) for n in range(1, k + 1)]
    configs = [lines_config(60 + 2 * n, drop_a=0.2 if n < 2 else 0.0) for n in range(k)]
    receivers = [receiver(c) for pair in configs for c in pair]
    lines = [[Line("A", a), Line("B", b)] for a, b in configs]
    journals = [Journal(s) for s in sessions]
    more = list(zip(journals[1:], lines[1:], strict=True))
    publisher = Publisher(journals[0], iter([day]), lines[0], end_of_session_seconds=0.0,
                          more_channels=more)  # fmt: skip
    try:
        heard = run(publisher, receivers)
    finally:
        for pair in lines:
            for line in pair:
                line.close()
    parts = split(day, k)
    assert publisher.messages == len(list(iter_messages(day)))
    assert publisher.sha256 == hashlib.sha256(day).hexdigest()
    for n, channel in enumerate(publisher.channels):
        assert journals[n].blocks(1, len(journals[n]))[1] == parts[n]
        assert channel.next_sequence == len(list(iter_messages(parts[n]))) + 1
        for raw in heard[2 * n : 2 * n + 2]:
            assert {decode_packet(r).session for r in raw} == {sessions[n]}
            last = decode_packet(raw[-1])
            assert (last.count, last.sequence) == (END_OF_SESSION, channel.next_sequence)
        on_b = data_packets(heard[2 * n + 1])  # every packet, in order, from 1
        assert [p.sequence for p in on_b] == list(
            np.cumsum([1] + [p.count for p in on_b[:-1]]))  # fmt: skip
        assert b"".join(join_messages(p.messages) for p in on_b) == parts[n]
        firsts = np.array([p.sequence for p in on_b], dtype=np.int64)
        lost = set(firsts.tolist()) - {p.sequence for p in data_packets(heard[2 * n])}
        if n == 2:
            assert not lost
            continue
        mask = drop_mask(0, 2 * n, firsts, 0.2)  # this channel's line A: number 2n
        assert lost == {int(f) for f, m in zip(firsts, mask, strict=True) if m} and lost
        if n == 1:  # not channel 1's line A's pattern on these numbers
            assert lost != {int(f) for f, m in zip(firsts, drop_mask(0, 0, firsts, 0.2),
                                                   strict=True) if m}  # fmt: skip


@pytest.mark.slow
def test_the_exchange_publishes_k_channels_each_repaired_and_replayed_by_its_session(
    tmp_path: Path,
) -> None:
    """``channels = 3``: each channel's lines carry its part of the day; the one re-request
    server answers a request naming channel 2's session with channel 2's messages; channel 3's
    replay port serves a login naming channel 3's session that session whole; each journal file is
    its channel's part."""
    k, messages = 3, 20_000
    config_a, config_b = lines_config(80)
    pairs = lines_of(Endpoint(config_a.group, config_a.port),
                     Endpoint(config_b.group, config_b.port), k)  # fmt: skip
    receivers = [receiver(LineConfig(e.host, e.port)) for pair in pairs for e in pair]
    p = ports()
    config = ExchangeConfig(
        session="CHSIM", channels=k, source=SyntheticSource(seed=3, symbols=20,
                                                            messages=messages),
        line_a=config_a, line_b=config_b, rerequest=p.rerequest, replay=p.replay,
        end_of_session_seconds=10, heartbeat_interval=0.2, journal_dir=str(tmp_path),
        sent_log=str(tmp_path / "sent.npy"),
    )  # fmt: skip
    parts = split(source_stream(3, 20, messages), k)
    sessions = [session_of("CHSIM", n, k) for n in (1, 2, 3)]
    assert sessions == ["CHSIM001", "CHSIM002", "CHSIM003"]
    second = list(iter_messages(parts[1]))
    replayed: list[bytes] = []
    answers: list[bytes] = []
    stop = asyncio.Event()

    async def replay(session: str) -> None:
        async for record in subscribe(p.replay, first=1, session=session, retry=None):
            if isinstance(record, Batch):
                replayed.extend(iter_messages(record.blocks))

    async def rerequest() -> None:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            client.connect(p.rerequest.pair)
            client.send(encode_request(session_bytes(sessions[1]), len(second) - 9, 10))
            answers.append(await asyncio.wait_for(loop.sock_recv(client, 2048), 5.0))

    async def main() -> ExchangeSummary:
        tasks: list[asyncio.Future[None]] = []

        def progress(summary: ExchangeSummary) -> None:
            if summary.end_of_session_packets and not tasks:
                tasks.append(asyncio.ensure_future(replay(sessions[2])))
                tasks.append(asyncio.ensure_future(rerequest()))
                tasks[0].add_done_callback(lambda _: stop.set())

        summary = await run_exchange(config, stop=stop, on_progress=progress)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return summary

    try:
        summary = asyncio.run(main())
        heard: list[list[bytes]] = [[] for _ in receivers]
        for sock, into in zip(receivers, heard, strict=True):
            sock.setblocking(False)
            drain(sock, into)
    finally:
        for sock in receivers:
            sock.close()
    assert summary.published == messages and summary.error is None
    assert summary.replay_port == p.replay.port
    assert [c.session for c in summary.channels] == sessions
    for n, channel in enumerate(summary.channels):
        assert channel.sha256 == hashlib.sha256(parts[n]).hexdigest()
        assert channel.published == len(list(iter_messages(parts[n])))
        assert (channel.line_a, channel.line_b) == tuple(str(e) for e in pairs[n])
        assert (tmp_path / f"{sessions[n]}.journal").read_bytes() == parts[n]
        for raw in heard[2 * n : 2 * n + 2]:  # each line: its channel's session, whole
            data = data_packets(raw)
            assert {p.session for p in data} == {session_bytes(sessions[n])}
            assert b"".join(join_messages(p.messages) for p in data) == parts[n]
    sent = np.load(tmp_path / "sent.npy")
    for n, channel in enumerate(summary.channels, start=1):  # each line's packets, by channel
        for line in (b"A", b"B"):
            ours = sent[(sent["channel"] == n) & (sent["line"] == line)]
            assert int(ours["count"].sum()) == channel.published
            assert ours["first"].tolist() == sorted(ours["first"].tolist())
    packet = decode_packet(answers[0])
    assert packet.session == session_bytes(sessions[1])
    assert packet.messages == second[-10:]
    assert replayed == list(iter_messages(parts[2]))
