"""The plant on K channels in one loop: K = 1, 4, 16, 48 at one aggregate offered rate.

The exchange (a child process on core 1) publishes a synthetic day over K channels at ``--rate``
messages/s in all; the plant (``tickerplant run``'s, in this process on core 0: every channel's
feed session, the one book engine, the streams' journals) takes them. Per K and per way of
reading the 2K line sockets:

- ``tickerplant``: the plant's own, each socket drained when the loop says it is ready (epoll);
- ``poll-loop``: the same plant with every socket read in turn without waiting (non-blocking
  reads, as in the notes the project started from), the loop let round between sweeps.

Rows: datagrams/s, CPU per datagram and per wakeup (a ready socket drained), messages/s, what
was lost, and each channel's latency from the exchange's send call (its sent log) to the
plant's delivery of the batch that holds the message: the median channel's p99 and the worst
channel's, and their ratio (the target: no channel worse than 2x the median channel).

    .venv/bin/python bench/channels.py [--channels 1,4,16,48] [--rate 500000] [--seconds 6]
        [--rounds 1] [--priority]

``--priority``: what a priority buys under overload, the first channel's p99 against the
others' with its priority 1 and then 0, at a rate the plant cannot keep up with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from plant_run import emitter, endpoints
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.feed.handler import FeedConfig
from tickerplant.io.loop import run_loop
from tickerplant.plant import EventsConfig, GlimpseConfig, Plant, PlantConfig, StreamConfig
from tickerplant.receive.events import Batch

row = emitter("channels")
ANY = Endpoint("127.0.0.1", 0)


async def run(k: int, poll: bool, rate: int, seconds: float, offset: int, first: int = 0
              ) -> list[tuple[str, float, str]]:  # fmt: skip
    """``first``: the first channel's priority (the others': 0)."""
    line_a, line_b, rerequest, replay = endpoints(offset)
    plant = Plant(PlantConfig(
        FeedConfig(line_a, line_b, rerequest=rerequest, replay=replay, digest=True),
        StreamConfig(ANY), GlimpseConfig(ANY), events=EventsConfig(ANY), channels=k,
        priorities=[first],
    ))  # fmt: skip
    await plant.start()
    delivered: list[list[tuple[int, int]]] = [[] for _ in range(k)]  # (end, ns) per batch
    for channel in plant.channels:
        channel.feed.on_batch = _timed(channel.feed.on_batch, delivered[channel.number])
    done = asyncio.Event()

    async def sweep() -> None:
        while not done.is_set():
            for channel in plant.channels:
                channel.feed.poll()
            await asyncio.sleep(0)

    sweeper = asyncio.ensure_future(sweep()) if poll else None
    with tempfile.TemporaryDirectory() as work:
        sent_log = Path(work) / "sent.npy"
        child = ExchangeProcess(
            line_a, line_b, rerequest, replay, "--channels", str(k), "--rate", str(rate),
            "--messages", str(int(rate * seconds)), "--eos-seconds", "1",
            "--sent-log", str(sent_log),
        )  # fmt: skip
        child.command = ["taskset", "-c", "1", *child.command]
        cpu, loop_cpu = time.process_time(), time.thread_time()
        try:
            async with child as exchange:
                summary = await exchange.summary()
                await asyncio.wait_for(plant.ended(), 30)
            cpu, loop_cpu = time.process_time() - cpu, time.thread_time() - loop_cpu
        finally:
            done.set()
            if sweeper is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            figures = plant.figures()
            await plant.close()
        sent = np.load(sent_log)
    p99s = [_p99(sent[sent["channel"] == n + 1], delivered[n]) for n in range(k)]
    wanted = [c["sha256"] for c in summary.get("channels", ())] or [summary["sha256"]]
    identical = wanted == [c.feed.session.digest for c in plant.channels]
    datagrams = figures["packets"]["a"] + figures["packets"]["b"]
    wakeups = figures["wakeups"]["a"] + figures["wakeups"]["b"]
    span = (max(d[-1][1] for d in delivered if d) - min(d[0][1] for d in delivered if d)) / 1e9
    return [
        ("datagrams_per_s", datagrams / span, "datagrams/s"),
        ("messages_per_s", summary["published"] / span, "msgs/s"),
        ("messages_per_datagram", summary["published"] / (datagrams / 2), "msgs"),
        ("cpu_per_datagram", cpu / datagrams * 1e6, "us"),
        ("loop_cpu_per_datagram", loop_cpu / datagrams * 1e6, "us"),
        ("cpu_per_wakeup", cpu / max(wakeups, 1) * 1e6, "us"),
        ("lost", figures["lost_messages"], "msgs"),
        ("identical", float(identical), "bool"),
        ("median_channel_p99", statistics.median(p99s) * 1e3, "ms"),
        ("worst_channel_p99", max(p99s) * 1e3, "ms"),
        ("worst_over_median", max(p99s) / statistics.median(p99s), "ratio"),
        ("first_channel_p99", p99s[0] * 1e3, "ms"),
        ("others_median_p99", statistics.median(p99s[1:] or p99s) * 1e3, "ms"),
    ]


def _timed(hand_on: Callable[[Batch], None] | None, into: list[tuple[int, int]]
           ) -> Callable[[Batch], None]:  # fmt: skip
    """``hand_on``, each batch's end and the time it was delivered noted first."""
    assert hand_on is not None

    def on_batch(batch: Batch) -> None:
        into.append((batch.end, time.monotonic_ns()))
        hand_on(batch)

    return on_batch


def _p99(sent: np.ndarray, delivered: list[tuple[int, int]]) -> float:
    """One channel's p99, seconds: each delivered batch's last message, from the first send
    call (of either line) of the packet that held it."""
    firsts = {}
    for line in (b"A", b"B"):
        ours = sent[sent["line"] == line]
        firsts[line] = (ours["first"], ours["ns"])
    got = np.array(delivered, dtype=np.int64)
    last = got[:, 0] - 1
    ns = np.full(last.shape[0], np.iinfo(np.int64).max)
    for first, at in firsts.values():
        i = np.searchsorted(first, last, side="right") - 1
        ns = np.minimum(ns, np.where(i >= 0, at[np.maximum(i, 0)], ns))
    return float(np.percentile((got[:, 1] - ns) / 1e9, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--channels", default="1,4,16,48")
    parser.add_argument("--rate", type=int, default=500_000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--priority", action="store_true",
                        help="instead: the plant alone, the first channel's priority 1 then 0 "
                             "(the others' 0), rounds interleaved: give a rate it cannot keep up "
                             "with")  # fmt: skip
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})  # the plant; the exchange on core 1
    offset = 0
    for r in range(args.rounds):
        for k in (int(c) for c in args.channels.split(",")):
            for poll, first in ([(False, 1), (False, 0)] if args.priority
                                else [(False, 0), (True, 0)]):  # fmt: skip
                offset += 1
                result = run_loop(run(k, poll, args.rate, args.seconds, offset, first))
                subject = "poll-loop" if poll else "tickerplant"
                for metric, value, unit in result:
                    row(subject, metric, round(value, 4), unit, channels=k, round=r + 1,
                        rate=args.rate, first_priority=first)  # fmt: skip


if __name__ == "__main__":
    main()
