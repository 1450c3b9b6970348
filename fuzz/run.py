"""Run the fuzz targets under atheris, coverage-guided, and say what they found.

    .venv/bin/python fuzz/run.py [--runs 1000000] [--only NAME ...]

Each target (``fuzz/NAME.py``) runs in its own process with NUMBA_DISABLE_JIT=1 (atheris sees
Python, not compiled kernels: the kernels run as the Python they are written in), from its seeds
(``fuzz/seeds/NAME``, kept in the repository) and the corpus it grew before
(``fuzz/corpus/NAME``, where what it finds is added; ``tests/test_fuzz.py`` replays it through
the compiled code). A hang (``--timeout`` s on one input) or a process over ``--rss-mb`` (a
leak) is a crash too; a crashing input is saved as ``fuzz/crashes/NAME-...``. One JSON line per
target: inputs run, seconds, coverage (edges and features, libFuzzer's words), corpus size, and
whether it crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("moldudp64", "soupbin_server", "soupbin_client", "rerequest", "config", "files")
DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)")


def run(name: str, runs: int, timeout: int, rss_mb: int) -> dict[str, object]:
    corpus, seeds, crashes = HERE / "corpus" / name, HERE / "seeds" / name, HERE / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(exist_ok=True)
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "PYTHONPATH": str(HERE)}
    command = [sys.executable, str(HERE / f"{name}.py"), f"-runs={runs}", f"-timeout={timeout}",
               f"-rss_limit_mb={rss_mb}", f"-artifact_prefix={crashes}/{name}-",
               "-print_final_stats=1", str(corpus), str(seeds)]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    stats = DONE.findall(done.stderr)
    ran, edges, features, size = (int(x) for x in stats[-1]) if stats else (0, 0, 0, 0)
    row: dict[str, object] = {
        "bench": "fuzz", "subject": "tickerplant", "target": name, "metric": "inputs",
        "value": ran, "unit": "inputs", "seconds": round(seconds, 1), "coverage_edges": edges,
        "features": features, "corpus": size, "crashed": done.returncode != 0,
    }  # fmt: skip
    if done.returncode:
        row["tail"] = done.stderr[-3000:]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="inputs per target")
    parser.add_argument("--only", nargs="*", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--rss-mb", type=int, default=2048, help="memory a target may hold")
    args = parser.parse_args()
    failed = False
    for name in args.only:
        row = run(name, args.runs, args.timeout, args.rss_mb)
        print(json.dumps(row), flush=True)
        failed |= bool(row["crashed"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
