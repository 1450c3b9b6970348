"""Tier-2: what edges cost the plant, and the latency from the exchange to an edge's clients.

Each run: ``tickerplant run`` with tier-2 on (a process on core 0), ``--edges`` edges
(``tickerplant edge``, a process each, core 1), ``--clients`` events clients per edge reading
every symbol (in this process, core 1), and the exchange (core 1) publishing ``--rate`` msgs/s
with its sent log. Rows per run:

- the plant's CPU-seconds per million messages published (target: flat within 5 % from 0 to 3
  edges, which is what multicast is for: the plant sends each packet once whoever listens);
- latency from the exchange's send call to an edge client's read, p50 and p99, over every
  client's batches (the batch's last record, by its source: the itch number that raised it);
- each edge's peak resident memory.

Runs with 0, 1 and 3 edges are interleaved, ``--rounds`` times. ``--idle-edges`` runs the edges
under SCHED_IDLE, so that sharing core 1 they do not make the exchange's sends burstier (and the
plant's wakeups fewer and fuller, which is cheaper per message).

    .venv/bin/python bench/tier2.py [--edges 0,1,3] [--clients 0] [--rate 100000]
        [--seconds 8] [--rounds 3] [--idle-edges] [--netns] [--no-tier2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plant_run import cpu_parts, emitter, endpoints

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netns import Host, bridge
from tickerplant.client import Events, subscribe
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.io.loop import run_loop

row = emitter("tier2")
TIER2 = (Endpoint("239.196.1.1", 33001), Endpoint("239.196.1.2", 33002))


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _listening(port: int, proc: asyncio.subprocess.Process, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if proc.returncode is not None or time.monotonic() > end:
                raise RuntimeError(f"nothing listens on {port} (rc {proc.returncode})") from None
            await asyncio.sleep(0.1)


def _tier2(rerequest: int, address: str) -> str:
    return f"""[tier2]
rerequest = "{address}:{rerequest}"
[tier2.line_a]
group = "{TIER2[0].host}"
port = {TIER2[0].port}
interface = "{address}"
[tier2.line_b]
group = "{TIER2[1].host}"
port = {TIER2[1].port}
interface = "{address}"
"""


def _peak(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


async def _client(port: int, into: list[tuple[int, int]]) -> None:
    """Every symbol's records from now on, each batch noted: (its last source, when read)."""
    async for record in subscribe(Endpoint("127.0.0.1", port), first=1, events=True,
                                  retry=0.2):  # fmt: skip
        if isinstance(record, Events) and record.records.shape[0]:
            into.append((int(record.records["source"].max()), time.monotonic_ns()))


@dataclass(frozen=True)
class Place:
    """Where a process runs: a command prefix (a host's namespace, or none) and its address."""

    prefix: tuple[str, ...] = ()
    address: str = "127.0.0.1"
    host: Host | None = None

    def joined(self, groups: list[str], proc: asyncio.subprocess.Process) -> None:
        """In a namespace, until ``proc`` has joined ``groups`` there."""
        if self.host is not None:
            self.host.wait_joined(groups, 60, _Alive(proc))


@dataclass(frozen=True)
class _Alive:
    """An asyncio child as ``wait_joined`` asks of one (a ``Popen``'s poll and return code)."""

    proc: asyncio.subprocess.Process

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.returncode


async def run(edges: int, clients: int, rate: int, seconds: float, offset: int,
              work: Path, tier2: bool = True, places: dict[str, Place] | None = None,
              idle_edges: bool = False) -> list[tuple[str, float, str]]:  # fmt: skip
    """One run; ``places``: the exchange's, the plant's and each edge's (edge0, edge1, ...);
    by default all on loopback."""
    where = places or {}
    ex, pl = where.get("exchange", Place()), where.get("plant", Place())
    line_a, line_b, rerequest, replay = endpoints(offset)
    rerequest, replay = (Endpoint(ex.address, e.port) for e in (rerequest, replay))
    events, tier2_rerequest = _free(), _free()
    (work / "plant.toml").write_text(f"""
[feed]
line_a = "{line_a}"
line_b = "{line_b}"
rerequest = "{rerequest}"
replay = "{replay}"
interface = "{pl.address}"
[itch]
listen = "{pl.address}:{_free()}"
[glimpse]
listen = "{pl.address}:{_free()}"
[events]
listen = "{pl.address}:{events}"
{_tier2(tier2_rerequest, pl.address) if tier2 else ""}""")
    started: list[asyncio.subprocess.Process] = []

    async def start(*cmd: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        started.append(proc)
        return proc

    reads: list[list[tuple[int, int]]] = []
    tasks: list[asyncio.Future[None]] = []
    try:
        plant = await start(*pl.prefix, "taskset", "-c", "0", sys.executable, "-m",
                            "tickerplant", "run", str(work / "plant.toml"), "--json")
        if pl.host is None:
            await _listening(events, plant)
        pl.joined([line_a.host, line_b.host], plant)
        edge_procs = []
        for n in range(edges):
            port = _free()
            at = where.get(f"edge{n}", Place())
            (work / f"edge{n}.toml").write_text(f"""
[feed]
line_a = "{TIER2[0]}"
line_b = "{TIER2[1]}"
rerequest = "{pl.address}:{tier2_rerequest}"
replay = "{pl.address}:{events}"
interface = "{at.address}"
[events]
listen = "{at.address}:{port}"
""")
            # Under SCHED_IDLE, with --idle-edges: they take core 1 only when the exchange
            # leaves it, so its sends, and the plant's wakeups, are what they are without them.
            idle = ("chrt", "--idle", "0") if idle_edges else ()
            edge_procs.append(await start(*at.prefix, *idle, "taskset", "-c", "1", sys.executable,
                                          "-m", "tickerplant", "edge",
                                          str(work / f"edge{n}.toml")))  # fmt: skip
            if at.host is None:
                await _listening(port, edge_procs[-1])
            at.joined([TIER2[0].host, TIER2[1].host], edge_procs[-1])
            for _ in range(clients):
                reads.append([])
                tasks.append(asyncio.ensure_future(_client(port, reads[-1])))
        sent_log = work / "sent.npy"
        child = ExchangeProcess(line_a, line_b, rerequest, replay, "--rate", str(rate),
                                "--messages", str(int(rate * seconds)), "--eos-seconds", "1",
                                "--sent-log", str(sent_log), "--interface", ex.address,
                                "--ttl", "1")  # fmt: skip
        child.command = [*ex.prefix, "taskset", "-c", "1", *child.command]
        before = cpu_parts(plant.pid)
        async with child as exchange:
            summary = await exchange.summary()
        user, system = (after - was for after, was in zip(cpu_parts(plant.pid), before,
                                                           strict=True))  # fmt: skip
        cpu = user + system
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        peaks = [_peak(proc.pid) for proc in edge_procs]
    finally:
        for task in tasks:
            task.cancel()
        for proc in started:
            if proc.returncode is None:
                proc.terminate()
        said = []
        for proc in started:
            with contextlib.suppress(TimeoutError):
                said.append((await asyncio.wait_for(proc.communicate(), 15))[0])
            if proc.returncode is None:
                proc.kill()
    # The plant's wakeups (a socket drained): its cost is mostly per wakeup, and fewer, fuller
    # ones (a loop slowed by anything) cost less per message.
    figures = json.loads(said[0].strip().splitlines()[-1])
    wakeups = sum(figures["wakeups"].values())
    out = [("plant_cpu_per_million", cpu / summary["published"] * 1e6, "s"),
           # The kernel's part grows with the receivers on the host or bridge (each one's copy
           # of a datagram made in the sender's softirq): the plant's own code is the user part.
           ("plant_user_cpu_per_million", user / summary["published"] * 1e6, "s"),
           ("plant_system_cpu_per_million", system / summary["published"] * 1e6, "s"),
           ("plant_cpu_per_wakeup", cpu / wakeups * 1e6, "us"),
           ("plant_wakeups", float(wakeups), "wakeups"),
           ("published", float(summary["published"]), "msgs")]  # fmt: skip
    if reads and any(reads):
        sent = np.load(sent_log)
        a = sent[sent["line"] == b"A"]
        latencies = []
        for got in reads:
            rows = np.array(got, dtype=np.int64)
            i = np.searchsorted(a["first"], rows[:, 0], side="right") - 1
            latencies.append((rows[:, 1] - a["ns"][i]) / 1e9)
        every = np.concatenate(latencies)
        out += [("latency_p50", float(np.percentile(every, 50)) * 1e3, "ms"),
                ("latency_p99", float(np.percentile(every, 99)) * 1e3, "ms")]  # fmt: skip
    out += [("edge_peak_rss", peak / 2**20, "MiB") for peak in peaks]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edges", default="0,1,3")
    parser.add_argument("--clients", type=int, default=0, help="events clients per edge")
    parser.add_argument("--rate", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-tier2", action="store_true",
                        help="the plant without tier-2 (a baseline: no edge can join)")
    parser.add_argument("--idle-edges", action="store_true",
                        help="the edges under SCHED_IDLE: on core 1 only when the exchange "
                             "leaves it, so that they do not change how it sends")  # fmt: skip
    parser.add_argument("--netns", action="store_true",
                        help="each process a host of its own (network namespaces on a bridge, "
                             "as root): the copies of a tier-2 datagram are the bridge's, not "
                             "the plant's sends'")  # fmt: skip
    args = parser.parse_args()
    # Core 0 is the plant's alone: the exchange, the edges and their clients share core 1 (on
    # two cores, edges beside the plant took its time and made its batches bigger, and its CPU
    # per message smaller: 9.6 s a million with none, 5.0 with three).
    os.sched_setaffinity(0, {1})
    counts = [int(e) for e in args.edges.split(",")]
    if args.netns and args.clients:
        parser.error("--netns runs no clients: they would be in this process, on no host's net")
    with contextlib.ExitStack() as stack:
        places: dict[str, Place] | None = None
        if args.netns:
            names = ["exchange", "plant", *(f"edge{n}" for n in range(max(counts)))]
            hosts = stack.enter_context(bridge(names))
            places = {name: Place(tuple(host.command()), host.address, host)
                      for name, host in hosts.items()}  # fmt: skip
        work = stack.enter_context(tempfile.TemporaryDirectory())
        offset = 0
        for r in range(args.rounds):
            for edges in counts:
                offset += 1
                result = run_loop(run(edges, args.clients, args.rate, args.seconds, offset,
                                      Path(work), not args.no_tier2, places,
                                      args.idle_edges))  # fmt: skip
                for metric, value, unit in result:
                    row("tickerplant", metric, round(value, 4), unit, edges=edges,
                        clients=args.clients, round=r + 1, rate=args.rate,
                        tier2=not args.no_tier2, netns=args.netns,
                        idle_edges=args.idle_edges)  # fmt: skip


if __name__ == "__main__":
    main()
