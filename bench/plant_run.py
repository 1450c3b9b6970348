"""One run of the exchange (child process) against the feed handler (this process).

Shared by the feed benchmarks; each prints one JSON object per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tickerplant.capture.itch_file import ItchWriter
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.exchange.synthetic import SyntheticMarket
from tickerplant.feed.handler import FeedConfig, FeedHandler
from tickerplant.io.web import WebServer
from tickerplant.ops.metrics import Snapshot
from tickerplant.receive.events import Batch

DATA = Path(__file__).parent / "data"


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def emitter(bench: str) -> Callable[..., None]:
    """``emit`` for one benchmark: (subject, metric, value, unit, **extra) a line."""

    def row(subject: str, metric: str, value: float, unit: str, **extra: Any) -> None:
        emit(bench=bench, subject=subject, metric=metric, value=value, unit=unit, **extra)

    return row


def itch_file(messages: int, seed: int = 1, symbols: int = 500) -> Path:
    """A generated day on disk, made once: the exchange reads it faster than it can generate."""
    DATA.mkdir(exist_ok=True)
    path = DATA / f"synthetic-s{seed}-{symbols}-{messages}.itch"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with ItchWriter(tmp) as out:
            for chunk in SyntheticMarket(seed, symbols).chunks(messages):
                out.write_blocks(chunk)
        tmp.rename(path)
    return path


def endpoints(offset: int) -> tuple[Endpoint, Endpoint, Endpoint, Endpoint]:
    base = 50000 + (os.getpid() * 11 + offset * 4) % 10000
    return (Endpoint("239.192.95.1", base), Endpoint("239.192.95.2", base + 1),
            Endpoint("127.0.0.1", base + 2), Endpoint("127.0.0.1", base + 3))


@dataclass
class RunResult:
    published: int
    delivered: int
    identical: bool
    seconds: float  # first to last delivered message
    cpu_seconds: float  # this process (the feed handler) over the whole run
    loop_cpu_seconds: float  # of it, the event loop's thread (the feed's own work)
    figures: dict[str, Any]
    exchange: dict[str, Any]

    @property
    def msgs_per_s(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return int(self.figures["lost_messages"])


SCRAPER = """
import sys, time, urllib.request
url, every = sys.argv[1], float(sys.argv[2])
while True:
    start = time.monotonic()
    urllib.request.urlopen(url, timeout=5).read()
    print(round((time.monotonic() - start) * 1e3, 3), flush=True)
    time.sleep(max(0.0, every - (time.monotonic() - start)))
"""


def cpu_of(pid: int) -> float:
    """User and system CPU-seconds process ``pid`` has used (its threads included)."""
    return sum(cpu_parts(pid))


def cpu_parts(pid: int) -> tuple[float, float]:
    """User and system CPU-seconds process ``pid`` has used (its threads included), apart."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


@contextlib.asynccontextmanager
async def serving(figures: Callable[[], dict[str, Any]], scrape_every: float,
                  others: str | None) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
    """This process serving ``figures`` as Prometheus metrics (refreshed from the loop every
    0.5 s, as the faces do) while another process scrapes them every ``scrape_every`` seconds;
    the listener and the scraper confined to the CPUs ``others`` (a taskset list), if given.
    Yields, filled in once done, ``scrapes`` (their durations, ms) and ``listener_cpu_seconds``
    (what the listener process used meanwhile, ``listener_seconds``)."""
    snapshot = Snapshot()
    web = WebServer(Endpoint("127.0.0.1", 0), snapshot)
    confine = ["taskset", "-c", others] if others else []
    if others:  # the listener is a process of its own: off the feed's core too
        subprocess.run(["taskset", "-a", "-p", "-c", others, str(web.pid)], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip

    async def refresh() -> None:
        while True:
            snapshot.set(figures())
            await asyncio.sleep(0.5)

    refresher = asyncio.ensure_future(refresh())
    scraper = subprocess.Popen([*confine, sys.executable, "-c", SCRAPER, web.url + "metrics",
                                str(scrape_every)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    out: dict[str, Any] = {}
    # answered once the listener has started (the plant bound its port: the request waits)
    await asyncio.to_thread(lambda: urllib.request.urlopen(web.url + "metrics", timeout=30).read())
    listener, since = cpu_of(web.pid), time.monotonic()
    try:
        yield out
    finally:
        scraper.terminate()
        text, _ = scraper.communicate(timeout=10)
        out["scrapes"] = [float(x) for x in text.split()]
        out["listener_cpu_seconds"] = cpu_of(web.pid) - listener
        out["listener_seconds"] = time.monotonic() - since
        refresher.cancel()
        web.close()


async def run_once(offset: int, *exchange_args: str, digest: bool = True,
                   scrape_every: float = 0.0, others: str | None = None) -> RunResult:  # fmt: skip
    """With ``scrape_every``, the process also serves its figures (see :func:`serving`), and
    ``figures`` has what :func:`serving` yields. ``others`` (a taskset CPU list)
    confines the exchange, the listener process and the scraper, so that a caller that pinned
    itself elsewhere has its cores to itself."""
    confine = ["taskset", "-c", others] if others else []
    line_a, line_b, rerequest, replay = endpoints(offset)
    marks: list[float] = []

    def on_batch(batch: Batch) -> None:
        now = time.perf_counter()
        if not marks:
            marks.append(now)
        marks[1:] = [now]

    feed = FeedHandler(
        FeedConfig(line_a, line_b, rerequest=rerequest, replay=replay, digest=digest), on_batch
    )
    await feed.start()
    async with contextlib.AsyncExitStack() as stack:
        served = (await stack.enter_async_context(serving(feed.figures, scrape_every, others))
                  if scrape_every else {})  # fmt: skip
        cpu, loop_cpu = time.process_time(), time.thread_time()
        try:
            child = ExchangeProcess(line_a, line_b, rerequest, replay, "--eos-seconds", "1",
                                    *exchange_args)  # fmt: skip
            child.command = [*confine, *child.command]
            async with child as exchange:
                summary = await exchange.summary()
                await asyncio.wait_for(feed.session_ended.wait(), 30)
        finally:
            await feed.close()
            cpu = time.process_time() - cpu
            loop_cpu = time.thread_time() - loop_cpu
    seconds = marks[-1] - marks[0] if len(marks) > 1 else 0.0
    delivered = feed.session.counters.delivered
    identical = (delivered == summary["published"]
                 and (not digest or feed.session.digest == summary["sha256"]))
    figures = feed.figures()
    figures.update(served)
    return RunResult(summary["published"], delivered, identical, seconds, cpu, loop_cpu, figures,
                     summary)  # fmt: skip


def free_port() -> int:
    """A free TCP port on loopback (for a plant's listener)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss(pid: int) -> int:
    """Process ``pid``'s resident memory, bytes."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def scraped(port: int, label: str = "") -> dict[str, float]:
    """A plant's figures from its /metrics (names as exposed, without ``tickerplant_``), summed
    over their labels; ``label`` (e.g. ``stream="itch"``) keeps only the lines that have it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tickerplant_") and label in line:
            name = line.split("{")[0].split(" ")[0].removeprefix("tickerplant_")
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out
