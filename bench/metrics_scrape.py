"""What Prometheus scraping costs the feed: the same 3M msgs/s run with no listener, with the
listener and its figures refreshed from the loop but scraped only every 10 s ("served": the cost
of having metrics at all), and scraped every 100 ms by another process, in interleaved rounds.

Reports for each: delivered msgs/s, whether the stream was whole and identical, and msgs per
CPU-second of the feed's process (its listener thread included); then the drop in msgs per
CPU-second with scraping (the median of the rounds' ratios; target: under 3 %) and the scrapes'
own durations. One JSON object per line.

    .venv/bin/python bench/metrics_scrape.py [--messages N] [--rate R] [--rounds 5] [--pin]

``--pin`` gives the feed (this process, its listener thread included) CPU 0 and confines the
exchange and the scraper to the other cores: on a 2-core machine the exchange otherwise takes
the feed's core at random moments, which moves msgs per CPU-second more than scraping does.
"""

from __future__ import annotations

import argparse
import os
import statistics

from plant_run import emit, itch_file, run_once
from tickerplant.cli import run_loop

BENCH = "metrics_scrape"


async def main(args: argparse.Namespace) -> None:
    path = str(itch_file(args.messages))
    modes = (("off", 0.0), ("served", 10.0), ("scraped", args.every))
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in modes}
    ratios: list[float] = []
    served: list[float] = []
    scrapes: list[float] = []
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
        ratios.append(this["scraped"] / this["off"])
        served.append(this["served"] / this["off"])
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
