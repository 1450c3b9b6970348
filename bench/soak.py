"""Soak (issue 21): an hour of ``tickerplant run`` at 100k msgs/s with 5 % loss on line A, its
journals on disk with retention, while 100 clients connect, read and leave at random.

The exchange publishes one session every ``--session-seconds`` (a new name each: the plant's
journal files turn over, and only the newest ``--keep-sessions`` stay on disk). The clients are
one process of plain sockets: each logs in to ``itch`` or ``events`` (from now, or from a
number a little back), reads for 1-20 s, leaves, and comes back 0-5 s later. Every
``--sample`` seconds one JSON line: the plant's RSS, its descriptors (sockets apart: the
clients come and go), the bytes its journal
directories hold, and its figures (lost messages, gaps, logins, slow consumers, loop lag).
At the end one JSON line of verdicts: RSS and descriptors flat after warm-up (a fifth of the
run, and until as many sessions have begun as are kept: each kept one holds its file open for
its clients; within 5 % of their median), disk within the retention, nothing lost that the
exchange published, the plant alive throughout.

    .venv/bin/python bench/soak.py [--seconds 3600] [--rate 100000] [--clients 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from plant_run import free_port, rss, scraped
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.wire.soupbintcp import LoginRequest, encode

WARM_UP = 0.2  # of the run at least, left out of the flatness verdicts


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "soak", "subject": "tickerplant", **fields}), flush=True)




def clients(ports: list[int], count: int, until: float, seed: int) -> None:
    """``count`` clients coming and going until ``until`` (monotonic), one selector."""
    rng = random.Random(seed)
    selector = selectors.DefaultSelector()
    buffer = bytearray(1 << 20)
    due: list[float] = [time.monotonic() + rng.uniform(0, 5) for _ in range(count)]
    leave: dict[socket.socket, float] = {}
    while time.monotonic() < until:
        now = time.monotonic()
        for i, at in enumerate(due):
            if at <= now:
                due[i] = float("inf")
                sock = socket.socket()
                try:
                    sock.connect(("127.0.0.1", rng.choice(ports)))
                    sock.sendall(encode(LoginRequest(b"", b"", b"", 0)))
                except OSError:
                    sock.close()
                    due[i] = now + 1
                    continue
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, i)
                leave[sock] = now + rng.uniform(1, 20)
        for key, _ in selector.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if sock.recv_into(buffer):
                    continue
            except (BlockingIOError, ConnectionError):
                continue
            leave[sock] = 0.0  # the plant closed it
        for sock, at in list(leave.items()):
            if at <= now:
                i = selector.get_key(sock).data
                selector.unregister(sock)
                sock.close()
                del leave[sock]
                due[i] = now + rng.uniform(0, 5)
    for sock in leave:
        sock.close()


def rss_and_fds(pid: int) -> tuple[int, int, int]:
    """The process's RSS, its descriptors other than sockets (files, pipes: what must stay
    flat), and its sockets (the clients come and go)."""
    sockets = files = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:"):
            sockets += 1
        else:
            files += 1
    return rss(pid), files, sockets


def disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())




async def main(args: argparse.Namespace) -> int:
    base = 42000 + os.getpid() % 8000
    a, b = Endpoint("239.192.97.1", base), Endpoint("239.192.97.2", base + 1)
    rerequest, replay = Endpoint("127.0.0.1", base + 2), Endpoint("127.0.0.1", base + 3)
    itch, events, glimpse, metrics = (free_port() for _ in range(4))
    work = Path(args.dir or tempfile.mkdtemp(prefix="soak-"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "plant.toml"
    config.write_text(f"""
[feed]
line_a = "{a}"
line_b = "{b}"
rerequest = "{rerequest}"
replay = "{replay}"
[itch]
listen = "127.0.0.1:{itch}"
journal_dir = "{work}/itch"
keep_sessions = {args.keep_sessions}
[events]
listen = "127.0.0.1:{events}"
journal_dir = "{work}/events"
keep_sessions = {args.keep_sessions}
[glimpse]
listen = "127.0.0.1:{glimpse}"
""")
    plant = subprocess.Popen([sys.executable, "-m", "tickerplant", "run", str(config),
                              "--metrics", f"127.0.0.1:{metrics}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    started = time.monotonic()
    end = started + args.seconds
    crowd = mp.Process(target=clients, args=([itch, events], args.clients, end, 7))
    crowd.start()
    samples: list[dict[str, Any]] = []
    published = 0
    session = 0

    async def sample() -> None:
        while time.monotonic() < end:
            await asyncio.sleep(args.sample)
            if plant.poll() is not None:
                return
            held, fds, sockets = rss_and_fds(plant.pid)
            row = {"t": round(time.monotonic() - started, 1), "rss": held, "fds": fds,
                   "sockets": sockets, "disk": disk(work), "figures": scraped(metrics)}  # fmt: skip
            samples.append(row)
            emit(metric="sample", value=held, unit="bytes", **row)

    sampler = asyncio.ensure_future(sample())
    try:
        while time.monotonic() < end - 5 and plant.poll() is None:
            session += 1
            seconds = min(args.session_seconds, end - time.monotonic())
            messages = int(args.rate * seconds)
            async with ExchangeProcess(
                a, b, rerequest, replay, "--session", f"SOAK{session:06d}",
                "--messages", str(messages), "--rate", str(args.rate), "--seed", str(session),
                "--drop-a", str(args.drop_a), "--eos-seconds", "2",
            ) as exchange:  # fmt: skip
                summary = await exchange.summary(timeout=seconds + 600)
                published += summary["published"]
        await sampler
    finally:
        sampler.cancel()
        crowd.join(60)
        alive = plant.poll() is None
        plant.terminate()
        plant.wait(60)
    # Warmed up: the rings full, and as many sessions begun as are kept (each kept session
    # holds its file's descriptor for the clients finishing it, by design).
    warm = max(WARM_UP * args.seconds, args.keep_sessions * args.session_seconds)
    after = [s for s in samples if s["t"] >= warm]

    def flat(key: str) -> dict[str, Any]:
        values = [s[key] for s in after]
        median = statistics.median(values) if values else 0
        spread = (max(values) - min(values)) / median if median else 0.0
        return {"median": median, "min": min(values, default=0), "max": max(values, default=0),
                "spread": round(spread, 4), "flat": spread <= 0.05}  # fmt: skip

    last = samples[-1]["figures"] if samples else {}
    per_session = args.rate * args.session_seconds * 64  # bytes: itch and events together
    verdict = {
        "alive": alive, "sessions": session, "published": published,
        "rss": flat("rss"), "fds": flat("fds"),
        "disk_max": max((s["disk"] for s in samples), default=0),
        "disk_bound": (args.keep_sessions + 1) * per_session,
        "lost_messages": last.get("lost_messages_total", -1),
        "slow_consumers": last.get("slow_consumers_total", 0),
    }  # fmt: skip
    verdict["disk_within_retention"] = verdict["disk_max"] <= verdict["disk_bound"]
    ok = (alive and verdict["rss"]["flat"] and verdict["fds"]["flat"]
          and verdict["disk_within_retention"] and verdict["lost_messages"] == 0)  # fmt: skip
    emit(metric="verdict", value=int(ok), unit="bool", **verdict)
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3600)
    parser.add_argument("--rate", type=int, default=100_000)
    parser.add_argument("--drop-a", type=float, default=0.05)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--session-seconds", type=float, default=600)
    parser.add_argument("--keep-sessions", type=int, default=3)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--dir", default=None, help="the plant's journals here (default: a "
                        "temporary directory, kept)")
    sys.exit(asyncio.run(main(parser.parse_args())))
