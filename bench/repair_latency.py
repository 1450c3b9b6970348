"""Gap repair latency, p50 and p99: by the other line and by re-request, at 5 % loss.

The exchange injects the loss itself (a seeded per-line drop), paced so that the machine is not
the bottleneck. Two cases: 5 % on line A only (every gap the other line can close), and 5 % on
both lines independently (0.25 % of packets lost on both: re-requests).

    .venv/bin/python bench/repair_latency.py [--messages N] [--rate R] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics

from plant_run import emit, itch_file, run_once
from tickerplant.io.loop import run_loop


async def main(args: argparse.Namespace) -> None:
    path = str(itch_file(args.messages))
    cases = {"5% on line A": ("0.05", "0"), "5% on both lines": ("0.05", "0.05")}
    offset = 100
    for case, (drop_a, drop_b) in cases.items():
        per_kind: dict[str, dict[str, list[float]]] = {}
        lost_runs = 0  # runs that lost or changed messages: their latencies miss the worst gaps
        for repeat in range(args.repeat):
            offset += 1
            r = await run_once(offset, "--itch", path, "--rate", str(args.rate),
                               "--drop-a", drop_a, "--drop-b", drop_b)
            lost_runs += not r.identical or r.lost > 0
            latency = r.figures["repair_latency_seconds"]
            for kind, stats in latency.items():
                if stats["count"]:
                    got = per_kind.setdefault(kind, {"p50": [], "p99": [], "count": []})
                    got["count"].append(stats["count"])
                    for key in ("p50", "p99"):
                        got[key].append(stats[key] * 1e3)
            emit(bench="repair_latency", subject="tickerplant", metric="run", value=repeat,
                 unit="repeat", case=case, identical=r.identical, lost=r.lost,
                 latency_seconds=latency)
        for kind, got in per_kind.items():
            for key in ("p50", "p99"):
                target = {"line": 2.0, "rerequest": 10.0}.get(kind) if key == "p99" else None
                emit(bench="repair_latency", subject="tickerplant", metric=f"{kind}_{key}",
                     value=statistics.median(got[key]), unit="ms", case=case,
                     runs=len(got[key]), gaps=int(statistics.median(got["count"])),
                     runs_not_identical_or_lost=lost_runs, target=target, offered=args.rate)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=250_000)
    parser.add_argument("--repeat", type=int, default=3)
    run_loop(main(parser.parse_args()))
