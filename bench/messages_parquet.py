"""Per-type Parquet conversion (``tickerplant replay --messages``) against itch-book's
``messages`` table, on the generated 5M-message day.

Subjects, each from the file on disk (page cache warm) to zstd Parquet, in the same rounds:

- tickerplant: ``read_chunks`` + ``MessageParquetWriter`` (one table per message type, every field);
- itch-book: ``Feed.batches(tables=("messages",))`` (its C++ session: one table of the order
  messages, normalised columns) written with ``pyarrow.parquet.write_table`` (zstd).

Also each without the Parquet write (tables in memory only). Target: tickerplant >= 1x itch-book.
Rounds interleave the subjects; figures are medians, ratios the median of each round's ratio.
One JSON object per line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from book_throughput import DATA, make_file
from plant_run import emitter
from tickerplant.book import BookEngine
from tickerplant.capture.itch_file import read_chunks
from tickerplant.capture.messages import MessageParquetWriter, dictionary, tables

BENCH = "messages_parquet"


emit = emitter(BENCH)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5_000_000)
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    path = DATA / f"synthetic-{args.messages}-{args.symbols}.itch"
    make_file(path, args.messages, args.symbols, seed=1)
    engine = BookEngine()
    for chunk in read_chunks(path):
        engine.process(chunk)
    symbols = engine.symbol_table()  # the day's names, as replay has them by then
    info = {"file": path.name, "messages": args.messages}
    tmp = Path(tempfile.mkdtemp())

    def ours_parquet() -> int:
        writer = MessageParquetWriter(tmp / "ours.messages")
        for chunk in read_chunks(path):
            writer.write(chunk, symbols)
        writer.close()
        return sum(writer.rows.values())

    def ours_memory() -> int:
        names = dictionary(symbols)
        return sum(t.num_rows for chunk in read_chunks(path)
                   for t in tables(chunk, names).values())  # fmt: skip

    subjects: dict[str, Callable[[], int]] = {"tickerplant": ours_parquet,
                                              "tickerplant in memory": ours_memory}  # fmt: skip
    try:
        from itch_book import Feed

        def theirs(write: bool) -> int:
            rows = 0
            writer = None
            for batch in Feed(str(path), date=dt.date(2026, 1, 2)).batches(tables=("messages",)):
                table = pa.table({k: np.asarray(v) for k, v in batch.messages.items()})
                rows += table.num_rows
                if write:
                    if writer is None:
                        writer = pq.ParquetWriter(tmp / "itch_book.parquet", table.schema,
                                                  compression="zstd")  # fmt: skip
                    writer.write_table(table)
            if writer is not None:
                writer.close()
            return rows

        subjects["itch-book"] = lambda: theirs(True)
        subjects["itch-book in memory"] = lambda: theirs(False)
    except ImportError as err:
        emit("itch-book", "skipped", 0, "", reason=str(err))
    for run in subjects.values():
        run()  # warm: kernels, page cache
    seconds: dict[str, list[float]] = {name: [] for name in subjects}
    rows: dict[str, int] = {}
    ratios: dict[str, list[float]] = {"parquet": [], "memory": []}
    for _ in range(args.rounds):
        for name, run in subjects.items():
            t0 = time.perf_counter()
            rows[name] = run()
            seconds[name].append(time.perf_counter() - t0)
        if "itch-book" in subjects:
            ratios["parquet"].append(seconds["itch-book"][-1] / seconds["tickerplant"][-1])
            ratios["memory"].append(seconds["itch-book in memory"][-1]
                                    / seconds["tickerplant in memory"][-1])  # fmt: skip
    for name, runs in seconds.items():
        med = statistics.median(runs)
        emit(name, "msgs_per_s", round(args.messages / med), "msgs/s", rows=rows[name],
             runs_s=[round(r, 3) for r in runs], **info)  # fmt: skip
    for kind, rs in ratios.items():
        if rs:
            emit("tickerplant", f"speedup_over_itch_book_{kind}", round(statistics.median(rs), 2),
                 "x", target=1.0, ratios=[round(r, 2) for r in rs], **info)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
