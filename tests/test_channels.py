"""Channels: a day's messages partitioned by stock over K sessions, each channel's name and
lines derived from the base ones (no sockets: the routing is a pure function of the bytes)."""

from __future__ import annotations

import re

import pytest

from harness import source_stream
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.wire.blocks import iter_messages, join_messages
from tickerplant.wire.channels import lines_of, session_of, split


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
