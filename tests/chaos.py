"""Chaos: ``tickerplant run`` killed with SIGKILL at random every 1-3 s and started again, with its
journals on disk, while the exchange publishes a session and an ``itch`` and an ``events``
client read it through every restart. The exchange's re-request and replay servers run apart
from its publisher (``tickerplant recovery``, following the journal file the publisher writes),
and are killed too, a kill in three. At the end each client must have every message (record)
exactly once, in order: ``itch`` the published stream, ``events`` what the books raise from it.

Reported: restarts survived, the time from a restart's exec to the first login it answers
(p50 / max), messages and records checked. Used by ``tests/test_chaos.py`` (short) and
``bench/chaos.py`` (the issue's 10M-message session, 60 s of kills).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import (
    Collected,
    CollectedEvents,
    day_of_events,
    ports,
    recovery_host,
    source_stream,
)
from tickerplant.client import subscribe
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.wire.blocks import iter_messages
from tickerplant.wire.soupbintcp import LoginRequest, encode

SYMBOLS = 500
# A gap waits this long for its repair before it is reported lost. The default (2 s) is shorter
# than the recovery host takes to come back (~1.5 s to start, then its file read back): with it,
# a plant restarted while the host was down reported the range it missed lost (exactly; found by
# this run). A plant that must ride out its exchange's recovery restarts waits longer.
GIVE_UP_AFTER = 15.0


@dataclass
class ChaosResult:
    published: int
    restarts: int  # of the plant
    recovery_restarts: int  # of the exchange's recovery host
    serve_again_p50: float  # seconds from a restart's exec to the first login it answered
    serve_again_max: float
    itch_messages: int  # checked, in order, each once
    events_records: int
    itch_reconnects: int
    events_reconnects: int
    identical: bool  # itch: the published stream; events: what the books raise from it
    lost: list[tuple[int, int]]  # ranges the plant reported lost (itch numbers), if any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers_login(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(encode(LoginRequest(b"", b"", b"", 0)))
            return sock.recv(3)[2:3] == b"A"
    except OSError:
        return False


async def run_chaos(messages: int, rate: int, kill_for: float, seed: int = 31,
                    gap: tuple[float, float] = (1.0, 3.0)) -> ChaosResult:  # fmt: skip
    """Publish ``messages`` at ``rate``; kill the plant every ``gap`` seconds (uniform) for
    ``kill_for`` seconds, then let the last one run to the session's end."""
    rng = random.Random(seed)
    p = ports()
    itch, events = Endpoint("127.0.0.1", free_port()), Endpoint("127.0.0.1", free_port())
    with tempfile.TemporaryDirectory(prefix="chaos-") as work:
        config = Path(work) / "plant.toml"
        config.write_text(f"""
[feed]
line_a = "{p.line_a}"
line_b = "{p.line_b}"
rerequest = "{p.rerequest}"
replay = "{p.replay}"
[feed.recovery]
give_up_after = {GIVE_UP_AFTER}
[itch]
listen = "{itch}"
journal_dir = "{work}/itch"
memory_bytes = 4194304
[events]
listen = "{events}"
journal_dir = "{work}/events"
memory_bytes = 4194304
[glimpse]
listen = "127.0.0.1:{free_port()}"
""")

        def start() -> tuple[subprocess.Popen[bytes], float]:
            return subprocess.Popen(
                [sys.executable, "-m", "tickerplant", "run", str(config)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ), time.monotonic()  # fmt: skip

        async def serving(since: float) -> float:
            while not answers_login(itch.port):
                await asyncio.sleep(0.01)
            return time.monotonic() - since

        got, records = Collected(), CollectedEvents()

        async def read_itch() -> None:
            async for record in subscribe(itch, retry=0.05):
                got.receive(record)

        async def read_events() -> None:
            async for record in subscribe(events, events=True, retry=0.05):
                records.receive(record)

        journal = Path(work) / "exchange"
        journal.mkdir()

        recovery = recovery_host(journal, p)
        plant, since = start()
        waits = [await serving(since)]
        readers = [asyncio.ensure_future(read_itch()), asyncio.ensure_future(read_events())]
        restarts = recovery_restarts = 0
        try:
            async with ExchangeProcess(
                p.line_a, p.line_b, None, None, "--messages", str(messages),
                "--seed", str(seed), "--symbols", str(SYMBOLS), "--rate", str(rate),
                "--eos-seconds", "2", "--journal-dir", str(journal),
            ) as exchange:  # fmt: skip
                end = time.monotonic() + kill_for
                while time.monotonic() < end and exchange.published < messages:
                    await asyncio.sleep(rng.uniform(*gap))
                    if rng.random() < 1 / 3:
                        recovery.kill()
                        recovery.wait()
                        recovery = recovery_host(journal, p)
                        recovery_restarts += 1
                        continue
                    plant.kill()
                    plant.wait()
                    plant, since = start()
                    waits.append(await serving(since))
                    restarts += 1
                summary = await exchange.summary(timeout=messages / rate + 120)
                await asyncio.wait_for(asyncio.gather(*readers), 120)
        finally:
            for reader in readers:
                reader.cancel()
            for process in (plant, recovery):
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(30)
                if process.poll() is None:
                    process.kill()
    day = source_stream(seed, SYMBOLS, messages)
    identical = (got.messages == list(iter_messages(day)) and got.lost == []
                 and b"".join(records.records) == day_of_events(day))  # fmt: skip
    return ChaosResult(
        summary["published"], restarts, recovery_restarts, statistics.median(waits[1:] or waits),
        max(waits), len(got.messages), sum(len(r) for r in records.records) // 52, got.reconnects,
        records.reconnects, identical, records.lost,
    )  # fmt: skip
