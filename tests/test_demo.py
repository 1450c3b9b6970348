"""``make run``'s demo, end to end: the exchange, the plant and its three demo clients."""

from __future__ import annotations

import asyncio
import socket

import pytest

from harness import ports
from tickerplant import demo, verdict
from tickerplant.demo import DemoConfig, run_demo
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess

pytestmark = pytest.mark.slow

# A fresh clone's first run: the exchange compiles its kernels (~20 s on two cores) before its
# first packet, while the plant and the demo's clients are up and logged in. More than a
# SoupBinTCP link's dead_after (15 s): a client that does not heartbeat is closed meanwhile.
LATE = 20.0


class LateExchange(ExchangeProcess):
    """The exchange, started ``LATE`` seconds after the plant and its clients (as on a cold
    numba cache, whatever the cache holds on this machine)."""

    async def start(self) -> ExchangeProcess:
        await asyncio.sleep(LATE)
        return await super().start()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_demo_delivers_every_message_to_the_plant_and_to_each_reading_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the exchange starting late, as on a fresh clone: nothing may depend on the first
    packet coming soon after the clients log in."""
    monkeypatch.setattr(demo, "ExchangeProcess", LateExchange)
    p = ports()
    cfg = DemoConfig(seconds=6, rate=200_000, line_a=p.line_a, line_b=p.line_b,
                     rerequest=p.rerequest, replay=p.replay,
                     itch=Endpoint("127.0.0.1", _free_port()),
                     glimpse=Endpoint("127.0.0.1", _free_port()),
                     events=Endpoint("127.0.0.1", _free_port()),
                     metrics=Endpoint("127.0.0.1", _free_port()))  # not 9464: a demo may run
    result = asyncio.run(run_demo(cfg))
    assert result["seconds"] >= LATE  # the clients were in LATE seconds before any data
    assert result["published"] == 1_200_000 == result["delivered"]
    assert result["identical"] and result["duplicates_delivered"] == 0
    reader, dropper = result["clients"]["reader"], result["clients"]["dropper"]
    assert reader["identical"] and reader["reconnects"] == 0
    assert dropper["identical"] and dropper["reconnects"] >= 1  # it dropped, and resumed
    assert result["slow_consumers_cut"] == 1  # the client that never reads
    events = result["events"]
    assert events["records"] > 0 and events["events"]["identical"]
    conflated, skipper = events["conflated"], events["skipper"]
    # The slow readers were handled by their policies, not cut, and lost nothing unannounced.
    assert conflated["conflated"] > 0 and conflated["last_bbo_identical"]
    assert skipper["skipped"] > 0 and skipper["unannounced"] == 0
    assert conflated["unannounced"] == 0
    # What a conflated client holds is exact and current: every symbol's trades are counted
    # (trades plus summaries), and its picture was never far behind the reader's.
    assert conflated["trades_identical"]
    staleness = conflated["staleness_seconds"]
    assert staleness["samples"] > 100 and staleness["p99"] <= verdict.STALENESS_P99, staleness
    assert events["ok"] and result["verdict"]


def test_the_demo_of_several_channels_and_an_edge_checks_each_against_the_plant() -> None:
    """``--channels 3 --edges 1``: the plant takes every channel, each identical to what the
    exchange published on it; the demo's clients read channel 1, one of them on the edge."""
    p = ports(channels=3)
    tier2 = ports(group_base="239.194.60")
    cfg = DemoConfig(seconds=2, rate=150_000, line_a=p.line_a, line_b=p.line_b,
                     rerequest=p.rerequest, replay=p.replay, channels=3, edges=1,
                     tier2_a=tier2.line_a, tier2_b=tier2.line_b, tier2_rerequest=tier2.rerequest,
                     edge_events=tier2.replay,
                     itch=Endpoint("127.0.0.1", _free_port()),
                     glimpse=Endpoint("127.0.0.1", _free_port()),
                     events=Endpoint("127.0.0.1", _free_port()), metrics=None)  # fmt: skip
    result = asyncio.run(run_demo(cfg))
    channels = result["channels"]
    assert [c["session"] for c in channels] == ["TP00000001", "TP00000002", "TP00000003"]
    assert all(c["identical"] for c in channels)
    # Every stock in one channel, every System Event in all three.
    assert sum(c["published"] for c in channels) > result["published"] == 300_000
    assert result["clients"]["reader"]["messages"] == channels[0]["published"]
    assert result["events"]["edge1"]["identical"]
    assert result["identical"] and result["verdict"]
