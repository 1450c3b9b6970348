"""A/B: one benchmark run against two source trees in alternating rounds, medians compared.

A change that must be "no slower" is measured against the commit before it in the same session,
rounds interleaved so both sides see the same load of a noisy machine:

    git worktree add /tmp/before HEAD~1
    .venv/bin/python bench/ab.py --before /tmp/before --rounds 5 -- \\
        bench/feed_throughput.py --rates 0 --repeat 1

Each round runs the benchmark once with ``PYTHONPATH=<tree>/src`` for each side (the order
alternates), takes the JSON lines it prints, and at the end prints one JSON line per (subject,
metric): the median of each side and the ratio after/before.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(tree: Path, script: list[str], timeout: float) -> list[dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run(
        [sys.executable, *script], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=tree,
    )  # fmt: skip
    if out.returncode:  # what it said, not only that it failed
        raise RuntimeError(f"{' '.join(script)} in {tree} exited {out.returncode}:\n"
                           f"{out.stderr[-2000:]}")  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="source tree to compare with")
    parser.add_argument("--after", type=Path, default=HERE.parent, help="default: this tree")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument("--key", default="", help="fields that tell cases apart, e.g. offered")
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- bench/x.py [its options]")
    args = parser.parse_args()
    script = [a for a in args.script if a != "--"]
    if not script:
        parser.error("give the benchmark to run after --")
    keys = [k for k in args.key.split(",") if k]
    values: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for round_ in range(args.rounds):
        sides = [("before", args.before), ("after", args.after)]
        for side, tree in sides if round_ % 2 == 0 else sides[::-1]:
            path = [str(tree / script[0]), *script[1:]]
            for row in run(tree, path, args.timeout):
                value = row.get("value")
                if isinstance(value, int | float):
                    case = ",".join(f"{k}={row.get(k)}" for k in keys)
                    values[(side, str(row.get("subject")), str(row.get("metric")), case)].append(
                        value
                    )
                    print(json.dumps({**row, "side": side, "round": round_}), flush=True)
    for (side, subject, metric, case), before in sorted(values.items()):
        if side != "before":
            continue
        after = values.get(("after", subject, metric, case), [])
        if not after:
            continue
        b, a = statistics.median(before), statistics.median(after)
        # The spread: each side's lowest and highest, and the ratio of each round's pair (the
        # rounds interleave, so a pair shares the machine's load of its moment).
        pairs = sorted(x / y for x, y in zip(after, before, strict=False) if y)
        print(json.dumps({
            "bench": "ab", "subject": subject, "metric": metric, "case": case,
            "value": a / b if b else None,
            "unit": "after/before", "before": b, "after": a, "runs": [len(before), len(after)],
            "before_range": [min(before), max(before)], "after_range": [min(after), max(after)],
            "pair_ratios": [round(r, 3) for r in pairs],
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
