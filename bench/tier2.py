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

Runs with 0, 1 and 3 edges are interleaved, ``--rounds`` times.

    .venv/bin/python bench/tier2.py [--edges 0,1,3] [--clients 0] [--rate 100000]
        [--seconds 8] [--rounds 3]
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
from pathlib import Path

import numpy as np

from plant_run import cpu_of, emitter, endpoints
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


def _tier2(rerequest: int) -> str:
    return f"""[tier2]
rerequest = "127.0.0.1:{rerequest}"
[tier2.line_a]
group = "{TIER2[0].host}"
port = {TIER2[0].port}
[tier2.line_b]
group = "{TIER2[1].host}"
port = {TIER2[1].port}
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


async def run(edges: int, clients: int, rate: int, seconds: float, offset: int,
              work: Path, tier2: bool = True) -> list[tuple[str, float, str]]:  # fmt: skip
    line_a, line_b, rerequest, replay = endpoints(offset)
    events, tier2_rerequest = _free(), _free()
    (work / "plant.toml").write_text(f"""
[feed]
line_a = "{line_a}"
line_b = "{line_b}"
rerequest = "{rerequest}"
replay = "{replay}"
[itch]
listen = "127.0.0.1:{_free()}"
[glimpse]
listen = "127.0.0.1:{_free()}"
[events]
listen = "127.0.0.1:{events}"
{_tier2(tier2_rerequest) if tier2 else ""}""")
    started: list[asyncio.subprocess.Process] = []

    async def start(*cmd: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        started.append(proc)
        return proc

    reads: list[list[tuple[int, int]]] = []
    tasks: list[asyncio.Future[None]] = []
    try:
        plant = await start("taskset", "-c", "0", sys.executable, "-m", "tickerplant", "run",
                            str(work / "plant.toml"), "--json")  # fmt: skip
        await _listening(events, plant)
        edge_procs = []
        for n in range(edges):
            port = _free()
            (work / f"edge{n}.toml").write_text(f"""
[feed]
line_a = "{TIER2[0]}"
line_b = "{TIER2[1]}"
rerequest = "127.0.0.1:{tier2_rerequest}"
replay = "127.0.0.1:{events}"
[events]
listen = "127.0.0.1:{port}"
""")
            edge_procs.append(await start("taskset", "-c", "1", sys.executable, "-m",
                                          "tickerplant", "edge", str(work / f"edge{n}.toml")))
            await _listening(port, edge_procs[-1])
            for _ in range(clients):
                reads.append([])
                tasks.append(asyncio.ensure_future(_client(port, reads[-1])))
        sent_log = work / "sent.npy"
        child = ExchangeProcess(line_a, line_b, rerequest, replay, "--rate", str(rate),
                                "--messages", str(int(rate * seconds)), "--eos-seconds", "1",
                                "--sent-log", str(sent_log))  # fmt: skip
        child.command = ["taskset", "-c", "1", *child.command]
        cpu = cpu_of(plant.pid)
        async with child as exchange:
            summary = await exchange.summary()
        cpu = cpu_of(plant.pid) - cpu
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
    args = parser.parse_args()
    # Core 0 is the plant's alone: the exchange, the edges and their clients share core 1 (on
    # two cores, edges beside the plant took its time and made its batches bigger, and its CPU
    # per message smaller: 9.6 s a million with none, 5.0 with three).
    os.sched_setaffinity(0, {1})
    offset = 0
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.rounds):
            for edges in (int(e) for e in args.edges.split(",")):
                offset += 1
                result = run_loop(run(edges, args.clients, args.rate, args.seconds, offset,
                                      Path(work), not args.no_tier2))  # fmt: skip
                for metric, value, unit in result:
                    row("tickerplant", metric, round(value, 4), unit, edges=edges,
                        clients=args.clients, round=r + 1, rate=args.rate,
                        tier2=not args.no_tier2)  # fmt: skip


if __name__ == "__main__":
    main()
