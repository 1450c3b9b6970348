"""What Prometheus scraping costs the feed: the same 3M msgs/s run with no listener, with the
listener and its figures refreshed from the loop but scraped only every 10 s ("served": the cost
of having metrics at all), and scraped every 100 ms by another process, in interleaved rounds.

Reports for each: delivered msgs/s, whether the stream was whole and identical, and msgs per
CPU-second of the feed's process (its listener thread included); then the drop in msgs per
CPU-second with scraping (the median of the rounds' ratios; target: under 3 %) and the scrapes'
own durations. One JSON object per line.

Each round also accounts for scraping's own CPU: this process serving the last run's figures
with nothing else to do, scraped every 100 ms and every 10 s, for ``--serve-seconds`` each; the
difference over the unscraped feed's CPU-seconds per second of traffic is the drop scraping
would make if it cost the feed nothing but that (``cpu_efficiency_drop_accounted``). Run to
run, the feed's own msgs per CPU-second moves by more than the 3 % being looked for.

    .venv/bin/python bench/metrics_scrape.py [--messages N] [--rate R] [--rounds 5] [--pin]

``--pin`` gives the feed (this process, its listener thread included) CPU 0 and confines the
exchange and the scraper to the other cores: on a 2-core machine the exchange otherwise takes
the feed's core at random moments, which moves msgs per CPU-second more than scraping does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from plant_run import emit, itch_file, run_once, serving
from tickerplant.cli import run_loop

BENCH = "metrics_scrape"


async def serving_cpu(figures: dict[str, Any], every: float, seconds: float,
                      confine: list[str]) -> float:  # fmt: skip
    """CPU-seconds per second this process spends serving ``figures`` scraped every ``every``
    seconds, with nothing else to do: scraping's own cost, out of the feed's noise."""
    async with serving(lambda: dict(figures), every, confine):
        await asyncio.sleep(0.5)  # the scraper's interpreter starting
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        return (time.process_time() - cpu) / (time.monotonic() - wall)


async def main(args: argparse.Namespace) -> None:
    path = str(itch_file(args.messages))
    modes = (("off", 0.0), ("served", 10.0), ("scraped", args.every))
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in modes}
    ratios: list[float] = []
    served: list[float] = []
    scrapes: list[float] = []
    feed_cpu: list[float] = []  # CPU-seconds per second of traffic, unscraped
    accounted: list[float] = []  # scraping's CPU-seconds per second, served alone
    offset = 0
    others = None
    if args.pin:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            raise SystemExit("--pin needs two cores: the feed's and the exchange's")
        os.sched_setaffinity(0, {cores[0]})  # before the listener's thread exists: it inherits
        others = ",".join(map(str, cores[1:]))
    for _ in range(args.rounds):
        this = {}
        for label, every in modes:
            offset += 1
            r = await run_once(offset, "--itch", path, "--rate", str(int(args.rate)),
                               scrape_every=every, others=others)  # fmt: skip
            assert r.identical and r.lost == 0, (label, r.delivered, r.published, r.lost)
            per_cpu = r.delivered / r.cpu_seconds
            runs[label].append((r.msgs_per_s, per_cpu))
            this[label] = per_cpu
            if label == "scraped":
                scrapes += r.figures.get("scrapes", [])
            if label == "off":
                feed_cpu.append(r.cpu_seconds / r.seconds)
                figures = r.figures
        ratios.append(this["scraped"] / this["off"])
        served.append(this["served"] / this["off"])
        confine = ["taskset", "-c", others] if others else []
        accounted.append(await serving_cpu(figures, args.every, args.serve_seconds, confine)
                         - await serving_cpu(figures, 10.0, args.serve_seconds, confine))
    for label, got in runs.items():
        emit(bench=BENCH, subject="tickerplant", metric="msgs_per_s", scraping=label,
             value=round(statistics.median(g[0] for g in got)), unit="msgs/s",
             runs=[round(g[0]) for g in got], lost=0, identical=True)  # fmt: skip
        emit(bench=BENCH, subject="tickerplant", metric="msgs_per_cpu_s", scraping=label,
             value=round(statistics.median(g[1] for g in got)), unit="msgs/cpu-s",
             runs=[round(g[1]) for g in got])  # fmt: skip
    drop = 1 - statistics.median(ratios)
    emit(bench=BENCH, subject="tickerplant", metric="cpu_efficiency_drop", value=round(drop, 4),
         unit="fraction", target=0.03, met=drop < 0.03, ratios=[round(r, 4) for r in ratios])
    emit(bench=BENCH, subject="tickerplant", metric="cpu_efficiency_drop_served",
         value=round(1 - statistics.median(served), 4), unit="fraction",
         ratios=[round(r, 4) for r in served])  # fmt: skip
    # the drop scraping's own CPU makes in msgs per CPU-second, had it cost the feed only that
    extra, busy = statistics.median(accounted), statistics.median(feed_cpu)
    emit(bench=BENCH, subject="tickerplant", metric="cpu_efficiency_drop_accounted",
         value=round(extra / (busy + extra), 4), unit="fraction", target=0.03,
         met=extra / (busy + extra) < 0.03, scraping_cpu_per_s=round(extra, 5),
         feed_cpu_per_s=round(busy, 3), runs=[round(a, 5) for a in accounted])  # fmt: skip
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
    parser.add_argument("--serve-seconds", type=float, default=10.0)
    run_loop(main(parser.parse_args()))
