"""What Prometheus scraping costs the feed: the same 3M msgs/s run with no listener, with the
listener and its figures refreshed from the loop but scraped only every 10 s ("served": the cost
of having metrics at all), and scraped every 100 ms by another process, in interleaved rounds.

Reports for each: delivered msgs/s, whether the stream was whole and identical, and msgs per
CPU-second of the feed's process; then the drop in msgs per
CPU-second with scraping (the median of the rounds' ratios; target: under 3 %) and the scrapes'
own durations. One JSON object per line.

The listener is a process of its own (tickerplant.io.web): its CPU is not the feed's. So that
nothing is hidden, each mode also reports the listener process's CPU-seconds per second, and
``scraping_cpu_share`` is what scraping every 100 ms adds there (scraped less served) over the
feed's own CPU-seconds per second of traffic: what it costs the machine. The loop thread's own
msgs per CPU-second is reported beside the process's.

    .venv/bin/python bench/metrics_scrape.py [--messages N] [--rate R] [--rounds 5] [--pin]

``--pin`` gives the feed (this process) CPU 0 and confines the exchange, the listener process
and the scraper to the other cores: on a 2-core machine the exchange otherwise takes
the feed's core at random moments, which moves msgs per CPU-second more than scraping does.
"""

from __future__ import annotations

import argparse
import os
import statistics

from plant_run import emit, itch_file, run_once
from tickerplant.io.loop import run_loop

BENCH = "metrics_scrape"


async def main(args: argparse.Namespace) -> None:
    path = str(itch_file(args.messages))
    modes = (("off", 0.0), ("served", 10.0), ("scraped", args.every))
    runs: dict[str, list[tuple[float, float, float]]] = {label: [] for label, _ in modes}
    ratios: list[float] = []
    loop_ratios: list[float] = []  # the same, counting only the event loop thread's CPU
    served: list[float] = []
    scrapes: list[float] = []
    feed_cpu: list[float] = []  # CPU-seconds per second of traffic, unscraped
    listener: dict[str, list[float]] = {"served": [], "scraped": []}  # its CPU-s per second
    offset = 0
    others = None
    if args.pin:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise SystemExit("--pin needs two cores: the feed's and the exchange's")
        os.sched_setaffinity(0, {cores[0]})  # the listener process is moved off it (serving)
        others = ",".join(map(str, cores[1:]))
    for n in range(args.rounds):
        this = {}
        # each round starts with the next mode: a round's first run is slower, whichever it is
        for label, every in modes[n % 3:] + modes[:n % 3]:
            offset += 1
            r = await run_once(offset, "--itch", path, "--rate", str(int(args.rate)),
                               scrape_every=every, others=others)  # fmt: skip
            assert r.identical and r.lost == 0, (label, r.delivered, r.published, r.lost)
            per_cpu = r.delivered / r.cpu_seconds
            runs[label].append((r.msgs_per_s, per_cpu, r.delivered / r.loop_cpu_seconds))
            this[label] = per_cpu
            this[label + " loop"] = r.delivered / r.loop_cpu_seconds
            if label == "scraped":
                scrapes += r.figures["scrapes"]
            if label in listener:
                listener[label].append(r.figures["listener_cpu_seconds"]
                                       / r.figures["listener_seconds"])  # fmt: skip
            if label == "off":
                feed_cpu.append(r.cpu_seconds / r.seconds)
        ratios.append(this["scraped"] / this["off"])
        loop_ratios.append(this["scraped loop"] / this["off loop"])
        served.append(this["served"] / this["off"])
    for label, got in runs.items():
        emit(bench=BENCH, subject="tickerplant", metric="msgs_per_s", scraping=label,
             value=round(statistics.median(g[0] for g in got)), unit="msgs/s",
             runs=[round(g[0]) for g in got], lost=0, identical=True)  # fmt: skip
        emit(bench=BENCH, subject="tickerplant", metric="msgs_per_cpu_s", scraping=label,
             value=round(statistics.median(g[1] for g in got)), unit="msgs/cpu-s",
             runs=[round(g[1]) for g in got])  # fmt: skip
        emit(bench=BENCH, subject="tickerplant", metric="msgs_per_loop_cpu_s", scraping=label,
             value=round(statistics.median(g[2] for g in got)), unit="msgs/cpu-s",
             runs=[round(g[2]) for g in got])  # fmt: skip
    drop = 1 - statistics.median(ratios)
    emit(bench=BENCH, subject="tickerplant", metric="cpu_efficiency_drop", value=round(drop, 4),
         unit="fraction", target=0.03, met=drop < 0.03, ratios=[round(r, 4) for r in ratios])
    # the loop's own work alone: any difference from the process's is other threads' CPU
    emit(bench=BENCH, subject="tickerplant", metric="loop_cpu_efficiency_drop",
         value=round(1 - statistics.median(loop_ratios), 4), unit="fraction",
         ratios=[round(r, 4) for r in loop_ratios])  # fmt: skip
    emit(bench=BENCH, subject="tickerplant", metric="cpu_efficiency_drop_served",
         value=round(1 - statistics.median(served), 4), unit="fraction",
         ratios=[round(r, 4) for r in served])  # fmt: skip
    for label, got_cpu in listener.items():
        emit(bench=BENCH, subject="tickerplant", metric="listener_cpu_per_s", scraping=label,
             value=round(statistics.median(got_cpu), 5), unit="cpu-s/s",
             runs=[round(c, 5) for c in got_cpu])  # fmt: skip
    # what scraping costs the machine, in the listener process, beside what the feed costs
    extra = statistics.median(listener["scraped"]) - statistics.median(listener["served"])
    busy = statistics.median(feed_cpu)
    emit(bench=BENCH, subject="tickerplant", metric="scraping_cpu_share",
         value=round(extra / busy, 4), unit="fraction", feed_cpu_per_s=round(busy, 3))
    if scrapes:
        emit(bench=BENCH, subject="tickerplant", metric="scrape_ms_p50",
             value=statistics.median(scrapes), unit="ms", scrapes=len(scrapes),
             every_s=args.every, max_ms=max(scrapes))  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3_000_000)
    parser.add_argument("--rate", type=float, default=3_000_000)
    parser.add_argument("--every", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pin", action="store_true")
    run_loop(main(parser.parse_args()))
