"""Logins answered while many clients that never read are being served (issue 21).

The exchange (a child process) publishes at ``--rate``; ``tickerplant run`` (a child process, its
defaults but the ports) serves it. A prober in this process logs in to ``itch`` every
``--every`` seconds (from now, from 127.0.0.1) and times connect to Login Accepted. Quiet first;
then an attacker process opens ``--clients`` connections from 127.0.0.2 that each log in from 1
and never read, and the prober goes on. Reported: the login time's p50 / p99 / max, quiet and
attacked, the share answered within 100 ms (the target), logins never answered within
``--timeout``, the attackers the plant logged in and cut, and the plant's peak RSS.

    .venv/bin/python bench/admission.py [--clients 1000] [--rate 200000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from plant_run import free_port, rss, scraped
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.wire.soupbintcp import LoginRequest, encode

TARGET = 0.100  # seconds from connect to Login Accepted


def emit(metric: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"bench": "admission", "subject": "tickerplant", "metric": metric,
                      "value": value, "unit": unit, **extra}), flush=True)  # fmt: skip




def attack(port: int, clients: int, pipe: Connection) -> None:
    """``clients`` connections from 127.0.0.2, each logged in from 1, never read; held until
    told to go."""
    login = encode(LoginRequest(b"", b"", b"", 1))
    held = []
    for _ in range(clients):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.bind(("127.0.0.2", 0))
        sock.settimeout(5)
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(login)
        except OSError:
            sock.close()
            continue
        held.append(sock)
    pipe.send(len(held))
    pipe.recv()  # until told to go
    for sock in held:
        sock.close()


CONNECTS: list[float] = []  # of each probe: seconds its connect took


def login_time(port: int, timeout: float) -> float | None:
    """Seconds from connect to the Login Accepted packet, or None past ``timeout``."""
    start = time.monotonic()
    with socket.socket() as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(("127.0.0.1", port))
            CONNECTS.append(time.monotonic() - start)
            sock.sendall(encode(LoginRequest(b"", b"", b"", 0)))
            got = b""
            while len(got) < 3:
                part = sock.recv(64)
                if not part:
                    return None
                got += part
        except OSError:
            return None
        return time.monotonic() - start if got[2:3] == b"A" else None




def probe(port: int, pid: int, seconds: float, every: float, timeout: float
          ) -> tuple[list[float | None], int]:  # fmt: skip
    times: list[float | None] = []
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        times.append(login_time(port, timeout))
        peak = max(peak, rss(pid))
        time.sleep(every)
    return times, peak


def report(phase: str, times: list[float | None], peak: int, **extra: Any) -> None:
    answered = np.array([t for t in times if t is not None])
    connects = np.array(CONNECTS[-len(times):])
    emit("connect_seconds_max", float(connects.max()) if connects.size else -1, "s",
         phase=phase, connected=int(connects.size))
    emit("login_seconds_p50", float(np.percentile(answered, 50)) if answered.size else -1, "s",
         phase=phase, probes=len(times))
    emit("login_seconds_p99", float(np.percentile(answered, 99)) if answered.size else -1, "s",
         phase=phase)
    emit("login_seconds_max", float(answered.max()) if answered.size else -1, "s", phase=phase)
    emit("logins_within_100ms", float((answered <= TARGET).sum() / max(1, len(times))),
         "ratio", phase=phase)
    emit("logins_unanswered", len(times) - answered.size, "logins", phase=phase)
    emit("plant_rss_peak", peak, "bytes", phase=phase, **extra)




async def main(args: argparse.Namespace) -> None:
    base = 40000 + os.getpid() % 10000
    a, b = Endpoint("239.192.96.1", base), Endpoint("239.192.96.2", base + 1)
    rerequest, replay = Endpoint("127.0.0.1", base + 2), Endpoint("127.0.0.1", base + 3)
    itch, events, glimpse, metrics = (free_port() for _ in range(4))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "plant.toml"
        config.write_text(f"""
[feed]
line_a = "{a}"
line_b = "{b}"
rerequest = "{rerequest}"
replay = "{replay}"
[itch]
listen = "127.0.0.1:{itch}"
[events]
listen = "127.0.0.1:{events}"
[glimpse]
listen = "127.0.0.1:{glimpse}"
""")
        total = int(args.rate * (2 * args.seconds + 30))
        async with ExchangeProcess(a, b, rerequest, replay, "--messages", str(total),
                                   "--rate", str(args.rate), "--eos-seconds", "1"
                                   ) as exchange:  # fmt: skip
            plant = subprocess.Popen(
                [sys.executable, "-m", "tickerplant", "run", str(config),
                 "--metrics", f"127.0.0.1:{metrics}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 30
                while login_time(itch, 1.0) is None:
                    if time.monotonic() > deadline:
                        raise SystemExit("the plant never answered a login")
                    await asyncio.sleep(0.2)
                await exchange.wait_published(int(args.rate * 2))
                loop = asyncio.get_running_loop()
                quiet = await loop.run_in_executor(None, probe, itch, plant.pid, args.seconds,
                                                   args.every, args.timeout)  # fmt: skip
                report("quiet", *quiet)
                ours, theirs = mp.Pipe()
                attacker = mp.Process(target=attack, args=(itch, args.clients, theirs))
                attacker.start()
                attacked = await loop.run_in_executor(None, probe, itch, plant.pid,
                                                      args.seconds, args.every, args.timeout)
                opened = ours.recv() if ours.poll(30) else -1
                seen = scraped(metrics, 'stream="itch"')
                report("attacked", *attacked, attackers=opened,
                       logins=seen.get("logins_total"), cut=seen.get("slow_consumers_total"),
                       over_budget_cuts=seen.get("over_budget_cuts_total"))
                ours.send("go")
                attacker.join(30)
            finally:
                plant.terminate()
                plant.wait(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=200_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="of each phase")
    parser.add_argument("--every", type=float, default=0.2, help="seconds between probes")
    parser.add_argument("--timeout", type=float, default=2.0, help="a login unanswered after")
    asyncio.run(main(parser.parse_args()))
