"""Between real hosts: the exchange and the feed handler in network namespaces joined by a veth.

Multicast leaves the exchange host's stack and arrives at the feed host's, where nftables drops
packets at prerouting as a lossy network would. The feed handler runs as the ``tickerplant feed``
command inside its host, capturing what it delivers to an ITCH file that is compared with the
stream the exchange published (regenerated from the same seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness import Ports, ports, source_stream, until
from netns import Host, TwoHosts, hosts_or_skip
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.io.multicast import INTERLEAVE
from tickerplant.ops.figures import summed
from tickerplant.wire.blocks import offsets_of

pytestmark = pytest.mark.netns

MESSAGES = 300_000
RATE = 250_000  # messages/s: ~1.2 s of publishing, with gaps at every turn
SYMBOLS = 500
FEED_SECONDS = 45.0  # the feed stops by itself after this, whatever happens
JOIN_TIMEOUT = 20.0  # a cold numba cache makes the feed's start slow


@pytest.fixture
def hosts() -> Iterator[TwoHosts]:
    with hosts_or_skip() as made:
        yield made


class Feed:
    """``tickerplant feed`` in a child process inside the feed host."""

    def __init__(self, host: Host, p: Ports, capture: Path, *args: str) -> None:
        cmd = host.command(
            sys.executable, "-m", "tickerplant", "feed", "--json", "--until-end",
            "--seconds", str(FEED_SECONDS), "--capture", str(capture),
            "--line-a", str(p.line_a), "--line-b", str(p.line_b), "--interface", host.address,
            "--rerequest", str(p.rerequest), "--replay", str(p.replay), *args,
        )  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def figures(self, timeout: float) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"feed failed: {err[-2000:]}"
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def kill(self) -> str:
        """Stop the feed if it still runs; returns the end of what it said on stderr."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(Exception):
            return self.proc.communicate(timeout=10)[1][-2000:]
        return ""


@contextlib.contextmanager
def feed_joined(hosts: TwoHosts, p: Ports, capture: Path, *args: str) -> Iterator[Feed]:
    """A feed that has joined both lines (so it hears the session from its first packet)."""
    feed = Feed(hosts.feed, p, capture, *args)
    try:
        try:
            hosts.feed.wait_joined([p.line_a.host, p.line_b.host], JOIN_TIMEOUT, feed.proc)
        except (RuntimeError, TimeoutError) as err:
            raise AssertionError(f"feed did not join: {err}; it said: {feed.kill()}") from None
        yield feed
    finally:
        feed.kill()


def exchange_on(hosts: TwoHosts, p: Ports, seed: int, *args: str) -> ExchangeProcess:
    return ExchangeProcess(
        p.line_a, p.line_b, p.rerequest, p.replay,
        "--interface", hosts.exchange.address, "--ttl", "1", "--messages", str(MESSAGES),
        "--seed", str(seed), "--symbols", str(SYMBOLS), "--rate", str(RATE),
        "--eos-seconds", "1", *args, netns=hosts.exchange.netns,
    )  # fmt: skip


def without(stream: bytes, lost: list[tuple[int, int]]) -> bytes:
    """``stream`` with the messages of each [start, end) range (sequences from 1) cut out."""
    offsets, consumed = offsets_of(stream)
    assert consumed == len(stream)
    bounds = np.append(offsets, consumed).tolist()
    kept, pos = [], 0
    for start, end in sorted(lost):
        kept.append(stream[pos : bounds[start - 1]])
        pos = bounds[end - 1]
    kept.append(stream[pos:])
    return b"".join(kept)


LOSS = {
    "20pct-line-a": {"a": 20, "b": 0},
    "2pct-both-lines": {"a": 2, "b": 2},
}


@pytest.mark.parametrize("loss", LOSS.values(), ids=list(LOSS))
def test_nftables_loss_is_repaired_byte_identical(
    hosts: TwoHosts, tmp_path: Path, loss: dict[str, int]
) -> None:
    p = ports(hosts.exchange.address)
    capture = tmp_path / "feed.itch"
    rules = "".join(
        f"add rule inet loss pre udp dport {port} numgen random mod 100 < {pct} counter drop"
        f' comment "line {name}"\n'
        for name, port, pct in (("a", p.line_a.port, loss["a"]), ("b", p.line_b.port, loss["b"]))
        if pct
    )
    hosts.feed.nft(
        "add table inet loss\n"
        "add chain inet loss pre { type filter hook prerouting priority 0; }\n" + rules
    )
    udp_before = hosts.feed.udp_counters()

    async def publish() -> dict[str, Any]:
        async with exchange_on(hosts, p, 11) as exchange:
            return await exchange.summary(timeout=40)

    with feed_joined(hosts, p, capture) as feed:
        summary = asyncio.run(publish())
        figures = feed.figures(timeout=20)
    dropped = hosts.feed.nft_counters("loss")
    udp = {k: v - udp_before[k] for k, v in hosts.feed.udp_counters().items()}
    print(
        json.dumps(
            {
                "loss": loss,
                "nft_dropped": dropped,
                "udp": udp,
                "gaps_seen": figures["gaps_seen"],
                "gaps_repaired": figures["gaps_repaired"],
                "rerequests_sent": figures["rerequests_sent"],
                "replays_started": figures["replays_started"],
                "replay_failures": figures["replay_failures"],
            }
        )
    )

    assert summary["published"] == MESSAGES == figures["delivered_messages"]
    assert capture.read_bytes() == source_stream(11, SYMBOLS, MESSAGES)
    assert figures["duplicates_delivered"] == 0
    assert sum(figures["gaps_lost"].values()) == 0
    assert figures["lost_messages"] == 0 and figures["lost_ranges"] == []
    # The loss really happened on the way in, and the feed saw and repaired it.
    for name in ("a", "b"):
        if loss[name]:
            assert dropped[f"line {name}"] > 0
    repaired = summed(figures["gaps_repaired"])
    seen = sum(figures["gaps_seen"].values())
    assert seen > 0 and repaired["line"] > 0
    assert seen == sum(repaired.values())


def test_both_lines_cut_without_recovery_services_reports_exactly_the_lost_range(
    hosts: TwoHosts, tmp_path: Path
) -> None:
    p = ports(hosts.exchange.address)
    capture = tmp_path / "feed.itch"
    cut = (
        "add table inet cut\n"
        "add chain inet cut pre { type filter hook prerouting priority 0; }\n"
        f"add rule inet cut pre udp dport {{ {p.line_a.port}, {p.line_b.port} }} counter drop"
        ' comment "both lines"\n'
    )

    async def publish() -> tuple[int, int, dict[str, Any]]:
        # (at 100k msgs/s: two seconds to put the rule in after 100,000, on a busy machine)
        async with exchange_on(hosts, p, 12, "--no-rerequest", "--no-replay",
                               "--rate", "100000") as exchange:  # fmt: skip
            await exchange.wait_published(100_000, timeout=20)
            before = exchange.published
            hosts.feed.nft(cut)
            # Out again once it has dropped a packet on both lines: the lines take turns every
            # INTERLEAVE packets, so that many twice and one more in a row hold both copies of
            # one packet, whenever the rule went in.
            both = 2 * INTERLEAVE + 1
            await until(lambda: hosts.feed.nft_counters("cut")["both lines"] >= both, 20,
                        f"the cut dropping {both} datagrams")  # fmt: skip
            hosts.feed.drop_table("cut")
            await exchange.wait_published(min(exchange.published + 1, MESSAGES), timeout=20)
            return before, exchange.published, await exchange.summary(timeout=40)

    # The feed still asks: its re-requests and replay logins meet closed ports.
    with feed_joined(hosts, p, capture, "--give-up-after", "1.0") as feed:
        before, after, summary = asyncio.run(publish())
        figures = feed.figures(timeout=20)
    print(
        json.dumps(
            {
                "cut_after": before,
                "restored_by": after,
                "gaps_seen": figures["gaps_seen"],
                "lost_messages": figures["lost_messages"],
                "rerequests_sent": figures["rerequests_sent"],
                "replay_failures": figures["replay_failures"],
            }
        )
    )

    lost = [(start, end) for start, end in figures["lost_ranges"]]
    assert lost, "the cut lost nothing: the rule went in too late or came out too early"
    assert sum(end - start for start, end in lost) == figures["lost_messages"]
    # Only what was published while the rule was in place can be lost.
    assert all(before < start < end <= after + 1 for start, end in lost), (lost, before, after)
    assert summary["published"] == MESSAGES
    assert figures["delivered_messages"] + figures["lost_messages"] == MESSAGES
    assert figures["duplicates_delivered"] == 0
    assert capture.read_bytes() == without(source_stream(12, SYMBOLS, MESSAGES), lost)
