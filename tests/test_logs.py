"""Logs: one line per event that matters, bounded however hard the wire misbehaves."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from harness import ports, until
from tickerplant.feed.handler import FeedConfig, FeedHandler
from tickerplant.io.multicast import open_sender
from tickerplant.ops import logs
from tickerplant.receive.events import Source
from tickerplant.receive.recovery import RecoveryConfig
from tickerplant.wire import moldudp64 as mold

SESSION = mold.session_bytes("LOGTEST001")


# logs.setup configures the process: put back after each test (the fixture is conftest's).
pytestmark = pytest.mark.usefixtures("restore_logging")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_template_logs_its_burst_then_one_line_per_period_telling_what_it_held() -> None:
    clock = Clock()
    out = io.StringIO()
    limit = logs.RateLimit(burst=5, per=10.0, clock=clock)
    logs.setup("text", stream=out, limit=limit)
    log = logging.getLogger("tickerplant.test")
    for i in range(1000):
        log.warning("client %s cut", i)
    assert len(out.getvalue().splitlines()) == 5 and limit.held == 995
    log.warning("another template")  # its own budget
    clock.now = 10.0
    log.warning("client %s cut", "late")
    lines = out.getvalue().splitlines()
    assert len(lines) == 7 and lines[-1].endswith("client late cut [995 like this held back]")


def test_json_lines_carry_the_events_fields() -> None:
    out = io.StringIO()
    logs.setup("json", stream=out)
    logging.getLogger("tickerplant.test").warning(
        "gap lost", extra=logs.fields(event="gap_lost", start=5, end=9))
    line = json.loads(out.getvalue())
    assert line["level"] == "warning" and line["logger"] == "tickerplant.test"
    assert (line["event"], line["start"], line["end"]) == ("gap_lost", 5, 9)
    assert line["time"].endswith("+00:00") and line["message"] == "gap lost"


def test_a_flood_of_malformed_datagrams_is_counted_in_a_few_lines_and_delivery_goes_on() -> None:
    p = ports(group_base="239.192.81")
    out = io.StringIO()
    logs.setup("json", stream=out)
    flood = 100_000

    async def main() -> FeedHandler:
        feed = FeedHandler(FeedConfig(p.line_a, None, recovery=RecoveryConfig(give_up_after=0.2)))
        await feed.start()
        sender, _ = open_sender("127.0.0.1")
        sender.setblocking(True)
        seq = 1
        taken = feed.session.counters.sources[Source.LINE_A]
        try:
            for i in range(flood):
                sender.sendto(b"\x00" * 25, p.line_a.pair)  # no MoldUDP64 packet: a defect
                if i % 100 == 0:  # and the real stream, between
                    sender.sendto(mold.encode_packet(SESSION, seq, [b"m%07d" % seq]), p.line_a.pair)
                    seq += 1
                if i % 500 == 499:  # the reader drains on this loop: let it, before buffers fill
                    sent = i + 1 + seq - 1  # the bad ones and the real ones
                    await until(lambda n=sent: taken.packets >= n, 10,
                                f"the feed taking the {sent} datagrams sent")  # fmt: skip
            sender.sendto(mold.encode_end_of_session(SESSION, seq), p.line_a.pair)
            await until(feed.session_ended.is_set, 10, "the session's end delivered")
        finally:
            sender.close()
            await feed.close()
        assert feed.session.counters.delivered == seq - 1 == flood // 100
        return feed

    feed = asyncio.run(main())
    figures = feed.figures()
    assert sum(figures["defects"]["a"].values()) == flood  # every one counted
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) < 20, lines  # a few lines, not a hundred thousand
    events = [x.get("event") for x in lines]
    assert "datagrams_dropped" in events and "session_started" in events
    assert "session_ended" in events
    assert sum(x["dropped"] for x in lines if x.get("event") == "datagrams_dropped") == flood
