"""Channels: a day's messages partitioned by stock over K sessions, each channel's name and
lines derived from the base ones (a pure function of the bytes), then published by one
publisher on each channel's own lines (real loopback multicast)."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest

from harness import source_stream
from test_publisher import data_packets, lines_config, receiver, run
from tickerplant.distribute.journal import Journal
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.exchange.publisher import Publisher, drop_mask
from tickerplant.io.multicast import Line
from tickerplant.wire.blocks import iter_messages, join_messages
from tickerplant.wire.channels import lines_of, session_of, split
from tickerplant.wire.moldudp64 import END_OF_SESSION, decode_packet, session_bytes


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
