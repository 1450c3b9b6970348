"""The loss matrix: what the feed delivers when the network between two hosts misbehaves.

One cell is one session published by the exchange on one host and received by ``tickerplant
feed`` on another (network namespaces, :mod:`netns`), with loss on line A, on line B, on the
re-request answers or on the replay's TCP segments (nftables, at the feed host's prerouting), or
reordering and duplication on the lines (:mod:`relay`, in user space on the feed host); recovery
(re-request and replay) on or off. Both lines at 100 % is a cut: everything dropped for four
seconds mid-session (the lines must be reported down), then the network comes back.

The judge: what the feed wrote is the published stream with some ranges missing, found by
walking both; those ranges must be exactly the ones it reported lost (every one, with its
bounds), nothing delivered twice or out of place; with recovery on, nothing may be missing
unless a way to repair was cut off entirely.
Used by ``tests/test_loss_matrix.py`` (some cells) and ``bench/loss_matrix.py`` (all of them:
the README's table).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness import Ports, ports, source_stream
from netns import TwoHosts
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.ops.figures import summed
from tickerplant.wire.blocks import iter_messages

RELAY = Path(__file__).resolve().parent / "relay.py"
SYMBOLS = 500
MESSAGES = 200_000
RATE = 200_000  # messages/s: one second of publishing
CUT_RATE = 50_000  # a cut cell publishes slower: the cut lasts CUT_SECONDS inside the session
CUT_MESSAGES = 300_000
CUT_AFTER = 50_000  # messages published before the cut
CUT_SECONDS = 4.0  # longer than the three heartbeat intervals a line is reported down after
# With the replay blocked, the exchange stays up past the replay's stall (5 s) after its last
# message, as a real one does for the day: the feed falls back to re-requests for the cut.
REPLAY_BLOCKED_EOS = 15.0
FEED_SECONDS = 60.0
JOIN_TIMEOUT = 20.0
DOWN = re.compile(r"line (\w)(?: of \S+)?: \w+ -> down")  # (the session named once heard)


@dataclass(frozen=True)
class Cell:
    a: int = 0  # percent of line A's datagrams dropped (100 with b 100: the cut)
    b: int = 0
    recovery: bool = True
    rerequest: int = 0  # percent of re-request answers dropped
    replay: int = 0  # percent of the replay's TCP segments (server to feed) dropped
    dup: int = 0  # percent of line datagrams sent twice (relay)
    reorder: int = 0  # percent sent after the next of their line (relay)

    @property
    def cut(self) -> bool:
        return self.a == 100 and self.b == 100

    @property
    def name(self) -> str:
        parts = [f"a{self.a}", f"b{self.b}", "recovery" if self.recovery else "no-recovery"]
        parts += [f"{k}{v}" for k, v in (("rerequest", self.rerequest), ("replay", self.replay),
                                         ("dup", self.dup), ("reorder", self.reorder)) if v]
        return "-".join(parts)


@dataclass
class Outcome:
    cell: Cell
    published: int
    delivered: int
    lost_messages: int
    lost_ranges: list[tuple[int, int]]  # as the feed reported them (its first 100)
    missing: list[tuple[int, int]]  # as found by walking what it wrote against the source
    in_order: bool  # what it wrote is the source with ranges missing, nothing else
    duplicates: int
    lines_down: list[str]
    dropped: dict[str, int] = field(default_factory=dict)  # nftables' counters, by rule
    relay: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def exact(self) -> bool:
        """Every range missing was reported, with its bounds, and nothing else was."""
        reported = self.lost_ranges
        return (self.in_order and self.lost_messages == sum(e - s for s, e in self.missing)
                and self.missing[: len(reported)] == reported
                and (len(reported) == len(self.missing) or len(reported) == 100))  # fmt: skip

    @property
    def ok(self) -> bool:
        whole = (self.exact and self.duplicates == 0
                 and self.delivered + self.lost_messages == self.published)  # fmt: skip
        # Each way to repair falls back on the other: only both gone may leave ranges missing.
        blocked = self.cell.rerequest >= 100 and self.cell.replay >= 100
        if self.cell.recovery and self.missing and not blocked:
            return False
        if self.cell.cut and sorted(self.lines_down) != ["a", "b"]:
            return False
        return whole

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(cell=self.cell.name, exact=self.exact, ok=self.ok,
                   lost_ranges=len(self.lost_ranges), missing=len(self.missing))
        return out


def missing_ranges(source: bytes, written: bytes) -> tuple[list[tuple[int, int]], bool]:
    """The [start, end) ranges (numbers from 1) of ``source``'s messages that ``written`` lacks,
    and whether ``written`` is ``source`` with those cut out and nothing else (no message
    twice, out of place or changed)."""
    want = list(iter_messages(source))
    got = list(iter_messages(written))
    ranges: list[tuple[int, int]] = []
    i = 0
    for message in got:
        start = i
        while i < len(want) and want[i] != message:
            i += 1
        if i == len(want):
            return ranges, False
        if i > start:
            ranges.append((start + 1, i + 1))
        i += 1
    if i < len(want):
        ranges.append((i + 1, len(want) + 1))
    return ranges, True


def nft_script(cell: Cell, p: Ports) -> str:
    """The cell's drops at the feed host's prerouting, each counted under its comment."""
    lines = ["add table inet loss",
             "add chain inet loss pre { type filter hook prerouting priority 0; }"]  # fmt: skip
    matches = []
    if not cell.cut:
        matches += [(f"udp dport {p.line_a.port}", cell.a, "line a"),
                    (f"udp dport {p.line_b.port}", cell.b, "line b")]  # fmt: skip
    matches += [(f"udp sport {p.rerequest.port}", cell.rerequest, "rerequest"),
                (f"tcp sport {p.replay.port}", cell.replay, "replay")]  # fmt: skip
    for match, pct, name in matches:
        if pct:
            chance = "" if pct >= 100 else f"numgen random mod 100 < {pct} "
            lines.append(f'add rule inet loss pre {match} {chance}counter drop comment "{name}"')
    return "\n".join(lines) + "\n"


def cut_script(p: Ports) -> str:
    return ("add table inet cut\n"
            "add chain inet cut pre { type filter hook prerouting priority 0; }\n"
            f"add rule inet cut pre udp dport {{ {p.line_a.port}, {p.line_b.port} }} counter drop"
            ' comment "both lines"\n')  # fmt: skip


def run_cell(hosts: TwoHosts, cell: Cell, workdir: Path, seed: int = 21) -> Outcome:
    """One session through ``cell``'s network; the feed's figures judged against the source."""
    started = time.monotonic()
    p = ports(hosts.exchange.address)
    heard = (p.line_a, p.line_b)
    relay: subprocess.Popen[str] | None = None
    feed_host = hosts.feed
    interface = feed_host.address
    if cell.dup or cell.reorder:  # the feed hears the relay, on its host's loopback
        heard = (Endpoint("239.193.90.1", p.line_a.port), Endpoint("239.193.90.2", p.line_b.port))
        relay = subprocess.Popen(feed_host.command(
            sys.executable, str(RELAY), "--interface", feed_host.address,
            "--line", f"{p.line_a}={heard[0]}", "--line", f"{p.line_b}={heard[1]}",
            "--dup", str(cell.dup), "--reorder", str(cell.reorder), "--seed", str(seed),
        ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert relay.stdout is not None and "ready" in relay.stdout.readline(), "relay failed"
        interface = "127.0.0.1"
    feed_host.nft(nft_script(cell, p))
    try:
        return _run(hosts, cell, p, heard, interface, relay, workdir, seed, started)
    finally:
        feed_host.drop_table("loss")
        if relay is not None and relay.poll() is None:
            relay.kill()


def _run(hosts: TwoHosts, cell: Cell, p: Ports, heard: tuple[Endpoint, Endpoint],
         interface: str, relay: subprocess.Popen[str] | None, workdir: Path, seed: int,
         started: float) -> Outcome:  # fmt: skip
    feed_host = hosts.feed
    recovery = ([] if cell.recovery
                else ["--no-rerequest", "--no-replay", "--give-up-after", "0.5"])  # fmt: skip
    capture = workdir / f"{cell.name}.itch"
    feed = subprocess.Popen(feed_host.command(
        sys.executable, "-m", "tickerplant", "feed", "--json", "--until-end",
        "--seconds", str(FEED_SECONDS), "--capture", str(capture),
        "--line-a", str(heard[0]), "--line-b", str(heard[1]), "--interface", interface,
        "--rerequest", str(p.rerequest), "--replay", str(p.replay), *recovery,
    ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        groups = [e.host for e in (p.line_a, p.line_b)]
        feed_host.wait_joined(groups, JOIN_TIMEOUT, relay or feed)
        if relay is not None:
            time.sleep(0.5)  # (the feed's joins are on loopback: not listed on the veth)
        messages, rate = (CUT_MESSAGES, CUT_RATE) if cell.cut else (MESSAGES, RATE)
        summary = asyncio.run(_publish(hosts, p, cell, seed, messages, rate))
        out, err = feed.communicate(timeout=FEED_SECONDS + 10)
        assert feed.returncode == 0, f"feed failed: {err[-2000:]}"
        figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    finally:
        for process in (feed, relay):
            if process is not None and process.poll() is None:
                process.kill() if process is feed else process.terminate()
    relayed: dict[str, int] = {}
    if relay is not None:
        relay_out, _ = relay.communicate(timeout=10)
        relayed = json.loads(relay_out.strip().splitlines()[-1])
    dropped = feed_host.nft_counters("loss")
    missing, in_order = missing_ranges(source_stream(seed, SYMBOLS, messages),
                                       capture.read_bytes())  # fmt: skip
    capture.unlink()
    return Outcome(
        cell, summary["published"], figures["delivered_messages"], figures["lost_messages"],
        [(s, e) for s, e in figures["lost_ranges"]], missing, in_order,
        figures["duplicates_delivered"], sorted(set(DOWN.findall(err))),
        dropped, relayed, summed(figures["gaps_repaired"]), round(time.monotonic() - started, 1),
    )  # fmt: skip


def _eos(cell: Cell) -> float:
    """How long the exchange says End of Session (one a second, and once more at the end).
    With loss on both lines, long enough that some copy gets through: at 1 s (two copies), A
    cut and B losing 20 % lost both and the last data packet in 0.8 % of runs, and a feed that
    never hears the tail cannot report it lost (a loss-matrix run in CI did just that)."""
    return 4.0 if cell.a and cell.b and not cell.cut else 1.0


async def _publish(hosts: TwoHosts, p: Ports, cell: Cell, seed: int, messages: int,
                   rate: int) -> dict[str, Any]:  # fmt: skip
    async with ExchangeProcess(
        p.line_a, p.line_b, p.rerequest, p.replay,
        "--interface", hosts.exchange.address, "--ttl", "1", "--messages", str(messages),
        "--seed", str(seed), "--symbols", str(SYMBOLS), "--rate", str(rate),
        "--eos-seconds", str(REPLAY_BLOCKED_EOS if cell.replay >= 100 else _eos(cell)),
        netns=hosts.exchange.netns,
    ) as exchange:  # fmt: skip
        if cell.cut:
            await exchange.wait_published(CUT_AFTER, timeout=20)
            hosts.feed.nft(cut_script(p))
            await asyncio.sleep(CUT_SECONDS)
            hosts.feed.drop_table("cut")
        summary: dict[str, Any] = await exchange.summary(timeout=60)
        return summary
