"""``make run``'s demo, end to end: the exchange, the plant and its three demo clients."""

from __future__ import annotations

import asyncio
import socket

import pytest

from harness import ports
from tickerplant.demo import DemoConfig, run_demo
from tickerplant.endpoint import Endpoint

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_demo_delivers_every_message_to_the_plant_and_to_each_reading_client() -> None:
    p = ports()
    cfg = DemoConfig(seconds=6, rate=200_000, line_a=p.line_a, line_b=p.line_b,
                     rerequest=p.rerequest, replay=p.replay,
                     itch=Endpoint("127.0.0.1", _free_port()),
                     glimpse=Endpoint("127.0.0.1", _free_port()),
                     events=Endpoint("127.0.0.1", _free_port()))
    result = asyncio.run(run_demo(cfg))
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
