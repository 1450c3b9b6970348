"""``tickerplant replay`` end to end (books + BBO and trade Parquet) of the generated 5M-message
day: the plain file against the same day gzip-compressed, inflated by each zlib-compatible library
installed (the standard library's zlib, ISA-L's ``isal``, ``zlib-ng``). Target: gzip within 1.2x of
the plain file's wall time.

Each replay is a fresh process (``python -m tickerplant replay``, numba's cache warm), so the wall
time is what a user waits for. Rounds interleave the inputs (plain, then each inflater, then again)
and ratios are taken within a round, so that they compare runs under the same load of this shared
machine; the figures are medians. Also: each inflater's raw speed (MB/s of ITCH out) in-process.
One JSON object per line: {bench, subject, metric, value, unit, ...}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from book_throughput import DATA, make_file
from plant_run import emitter
from tickerplant.capture.itch_file import INFLATERS

BENCH = "replay_gzip"


emit = emitter(BENCH)


def replay(path: Path, out: Path, inflater: str | None) -> tuple[float, dict[str, Any]]:
    env = dict(os.environ)
    if inflater:
        env["TICKERPLANT_INFLATE"] = inflater
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "tickerplant", "replay", str(path), "--out",
                          str(out), "--json", "--no-progress"], capture_output=True, env=env,
                         timeout=900, check=True)  # fmt: skip
    return time.perf_counter() - start, json.loads(run.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5_000_000)
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    plain = DATA / f"synthetic-{args.messages}-{args.symbols}.itch"
    make_file(plain, args.messages, args.symbols, seed=1)
    packed = plain.with_suffix(".itch.gz")
    if not packed.exists():
        packed.write_bytes(gzip.compress(plain.read_bytes(), 6))  # gzip's default level
    data = packed.read_bytes()
    info = {"file": plain.name, "messages": args.messages, "bytes": plain.stat().st_size,
            "gzip_bytes": len(data)}  # fmt: skip
    for name, lib in INFLATERS.items():
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            inflate = lib.decompressobj(wbits=31)
            size = sum(len(inflate.decompress(data[i : i + (4 << 20)]))
                       for i in range(0, len(data), 4 << 20))  # fmt: skip
            best = min(best, time.perf_counter() - t0)
        emit(name, "inflate_mb_per_s", round(size / best / 1e6), "MB/s", **info)
    inputs: list[tuple[str, Path, str | None]] = [("plain", plain, None)]
    inputs += [(f"gzip {name}", packed, name) for name in INFLATERS]
    walls: dict[str, list[float]] = {label: [] for label, _, _ in inputs}
    ratios: dict[str, list[float]] = {label: [] for label, _, _ in inputs[1:]}
    with tempfile.TemporaryDirectory() as tmp:
        replay(plain, Path(tmp) / "warm", None)  # numba's cache, the file in the page cache
        for _ in range(args.rounds):
            this: dict[str, float] = {}
            for label, path, inflater in inputs:
                seconds, summary = replay(path, Path(tmp) / "out", inflater)
                assert summary["messages"] == args.messages, summary
                this[label] = seconds
                walls[label].append(seconds)
            for label in ratios:
                ratios[label].append(this[label] / this["plain"])
    for label, _, inflater in inputs:
        med = statistics.median(walls[label])
        extra = {"input": label, "runs_s": [round(w, 3) for w in walls[label]], **info}
        emit("tickerplant", "wall_seconds", round(med, 3), "s", **extra)
        emit("tickerplant", "msgs_per_s", round(args.messages / med), "msgs/s", **extra)
        if inflater:
            ratio = statistics.median(ratios[label])
            emit("tickerplant", "gzip_over_plain", round(ratio, 3), "x", input=label,
                 target=1.2, met=ratio <= 1.2,
                 ratios=[round(r, 3) for r in ratios[label]])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
