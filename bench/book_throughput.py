"""Book engine throughput against the PyPI ITCH packages, on one generated 5M-message file.

Prints one JSON line per result: {bench, subject, metric, value, unit, ...}. Throughputs are the
median of ``--runs`` runs over the file held in memory (no disk in the timing). The three books
run in rounds (ours, itch-book, itchcpp, then again), so that each round's ratio compares runs
made under the same load of this shared machine; a speedup is the median of those ratios.
Subjects:

- tickerplant parse-only: frame walk + 8 columns decoded into numpy arrays (one kernel).
- tickerplant book: BookEngine.process, full depth, BBO/trade/status events out.
- itch-book: its C++ Session building the BBO table (it has no parse-only mode).
- itchcpp: BookManager.process_stream, full-depth L3 books for every symbol; and its
  MessageParser making message objects.
- itchfeed (pure Python, ITCH_NO_CPP=1 in a subprocess) making message objects, and a plain
  CPython dict book (struct.unpack_from + dicts): both on the first ``--slow-messages``.

Also: numba compile time of the first call (cold cache, then cached, each in a fresh process),
bytes per live order, and whether each peer's final best bid/offer per symbol equals ours.
Peers are listed in bench/requirements-book.txt; a missing one is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tickerplant.book import BookEngine, EventBuffers
from tickerplant.capture.itch_file import ItchWriter, read_chunks
from tickerplant.exchange.synthetic import SyntheticMarket
from tickerplant.jit import kernel
from tickerplant.wire.blocks import U8, as_array
from tickerplant.wire.itch import LENGTHS, MESSAGE_LENGTHS, offset

BENCH = "book_throughput"
DATA = Path(__file__).parent / "data"
I64 = npt.NDArray[np.int64]

_LOCATE, _TIME = offset("S", "stock_locate"), offset("S", "timestamp")
_A_REF, _A_SHARES, _A_PRICE = (offset("A", f) for f in ("order_reference", "shares", "price"))
_E_REF, _E_SHARES = offset("E", "order_reference"), offset("E", "executed_shares")
_X_REF, _X_SHARES = offset("X", "order_reference"), offset("X", "cancelled_shares")
_D_REF = offset("D", "order_reference")
_U_REF, _U_SHARES, _U_PRICE = (offset("U", f) for f in ("new_order_reference", "shares", "price"))
_MIN_BLOCK = 2 + min(LENGTHS.values())


def emit(subject: str, metric: str, value: float, unit: str, **extra: Any) -> None:
    row = {"bench": BENCH, "subject": subject, "metric": metric, "value": value, "unit": unit}
    print(json.dumps(row | extra), flush=True)


@kernel
def _be(b: U8, p: int, n: int) -> int:  # pragma: no cover - compiled
    v = 0
    for i in range(n):
        v = (v << 8) | np.int64(b[p + i])
    return v


@kernel
def parse_columns(
    buf: U8, lengths: npt.NDArray[np.int16], kind: U8, locate: I64, ts: I64, ref: I64,
    shares: I64, price: I64, length: I64, offsets: I64,
) -> int:  # pragma: no cover - compiled
    """Decode every message's type, locate, timestamp, reference, shares, price, size, offset."""
    pos = 0
    n = 0
    end = buf.shape[0]
    while pos + 2 <= end:
        size = _be(buf, pos, 2)
        p = pos + 2
        t = buf[p]
        kind[n] = t
        length[n] = size
        offsets[n] = p
        locate[n] = _be(buf, p + _LOCATE, 2)
        ts[n] = _be(buf, p + _TIME, 6)
        r, s, px = 0, 0, 0
        if lengths[t] == size:
            if t == 65 or t == 70:  # A, F share the layout of their first fields
                r = _be(buf, p + _A_REF, 8)
                s, px = _be(buf, p + _A_SHARES, 4), _be(buf, p + _A_PRICE, 4)
            elif t == 69 or t == 67:
                r, s = _be(buf, p + _E_REF, 8), _be(buf, p + _E_SHARES, 4)
            elif t == 88:
                r, s = _be(buf, p + _X_REF, 8), _be(buf, p + _X_SHARES, 4)
            elif t == 68:
                r = _be(buf, p + _D_REF, 8)
            elif t == 85:
                r = _be(buf, p + _U_REF, 8)
                s, px = _be(buf, p + _U_SHARES, 4), _be(buf, p + _U_PRICE, 4)
        ref[n] = r
        shares[n] = s
        price[n] = px
        n += 1
        pos = p + size
    return n


class Columns:
    def __init__(self, rows: int) -> None:
        self.kind = np.zeros(rows, dtype=np.uint8)
        self.cols = [np.zeros(rows, dtype=np.int64) for _ in range(7)]

    def parse(self, blocks: bytes) -> int:
        return int(parse_columns(as_array(blocks), MESSAGE_LENGTHS, self.kind, *self.cols))


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, list[float], Any]:
    """Median seconds of ``runs`` calls of ``fn`` (each builds fresh state); the last result."""
    seconds = []
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), seconds, result


def make_file(path: Path, messages: int, symbols: int, seed: int) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with ItchWriter(tmp) as w:
        for chunk in SyntheticMarket(seed, symbols).chunks(messages, 1 << 18):
            w.write_blocks(chunk)
    tmp.rename(path)


_COMPILE = """
import time, sys
from tickerplant.book import BookEngine
from tickerplant.exchange.synthetic import SyntheticMarket
blocks = next(SyntheticMarket(1, 5).chunks(100, 100))
t0 = time.perf_counter()
BookEngine().process(blocks)
print(time.perf_counter() - t0)
"""


def compile_times() -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold_cache", "cached"):
            out = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True,
                                 text=True, check=True, timeout=600)  # fmt: skip
            emit("tickerplant book", f"first_call_{label}", round(float(out.stdout), 3), "s")


def our_book(chunks: list[bytes]) -> BookEngine:
    engine = BookEngine()
    scratch = EventBuffers()  # each batch is dropped at once, as the live books do
    for c in chunks:
        engine.process(c, scratch=scratch)
    return engine


def dict_book(data: bytes, limit: int) -> int:
    """A plain CPython book: struct.unpack_from and dicts, full depth per (locate, side)."""
    orders: dict[int, list[int]] = {}
    levels: dict[tuple[int, int], dict[int, int]] = {}
    add = struct.Struct(">HH6sQcI8sI").unpack_from
    ref_qty = struct.Struct(">HH6sQI").unpack_from
    ref_only = struct.Struct(">HH6sQ").unpack_from
    replace = struct.Struct(">HH6sQQII").unpack_from
    pos, n, end = 0, 0, len(data)
    while pos < end and n < limit:
        size = (data[pos] << 8) | data[pos + 1]
        p = pos + 2
        t = data[p]
        pos = p + size
        n += 1
        if t in (65, 70):
            loc, _, _, ref, side, qty, _, px = add(data, p + 1)
            book = levels.setdefault((loc, side == b"S"), {})
            book[px] = book.get(px, 0) + qty
            orders[ref] = [loc, side == b"S", px, qty]
        elif t in (69, 67, 88, 68):
            if t == 68:
                ref = ref_only(data, p + 1)[3]
                qty = -1
            else:
                ref, qty = ref_qty(data, p + 1)[3:5]
            o = orders.get(ref)
            if o is None:
                continue
            qty = o[3] if qty < 0 or qty > o[3] else qty
            book = levels[o[0], o[1]]
            book[o[2]] -= qty
            if book[o[2]] == 0:
                del book[o[2]]
            o[3] -= qty
            if o[3] == 0:
                del orders[ref]
        elif t == 85:
            loc, _, _, old, new, qty, px = replace(data, p + 1)
            o = orders.pop(old, None)
            if o is None:
                continue
            book = levels[o[0], o[1]]
            book[o[2]] -= o[3]
            if book[o[2]] == 0:
                del book[o[2]]
            book[px] = book.get(px, 0) + qty
            orders[new] = [o[0], o[1], px, qty]
    return n


_ITCHFEED = """
import sys, time
from itch.parser import MessageParser
data = open(sys.argv[1], "rb").read()[: int(sys.argv[2])]
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    n = sum(1 for _ in MessageParser().parse_stream(data))
    print(n, time.perf_counter() - t0, flush=True)
"""


def prefix_bytes(data: bytes, messages: int) -> int:
    pos = 0
    for _ in range(messages):
        if pos >= len(data):
            break
        pos += 2 + ((data[pos] << 8) | data[pos + 1])
    return pos


def final_bbo_ours(engine: BookEngine) -> dict[int, tuple[int, int, int, int]]:
    return {loc: engine.bbo(loc) for loc in engine.symbols()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5_000_000)
    ap.add_argument("--symbols", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--slow-messages", type=int, default=1_000_000)
    args = ap.parse_args()

    path = DATA / f"synthetic-{args.messages}-{args.symbols}.itch"
    make_file(path, args.messages, args.symbols, seed=1)
    data = path.read_bytes()
    chunks = list(read_chunks(path, 4 << 20))
    total = args.messages
    file_info = {"file": path.name, "messages": total, "bytes": len(data)}

    compile_times()

    cols = Columns(max(len(c) for c in chunks) // _MIN_BLOCK + 1)
    cols.parse(chunks[0][:1000])
    med, runs, _ = timed(lambda: sum(cols.parse(c) for c in chunks), args.runs)
    emit("tickerplant parse-only", "msgs_per_s", round(total / med), "msgs/s",
         runs_s=[round(r, 4) for r in runs], **file_info)  # fmt: skip

    our_book(chunks[:1])
    engine = our_book(chunks)
    ours = final_bbo_ours(engine)
    symbols = engine.symbols()
    books: dict[str, tuple[Callable[[], Any], str]] = {
        "tickerplant book": (lambda: our_book(chunks), "full-depth books, BBO/trade/status events")
    }
    try:
        from itch_book._core import Session

        def itch_book_run() -> dict[str, npt.NDArray[Any]]:
            session = Session(tables=["bbo"], depth=0, symbols=[])
            session.reserve(1 << 20)
            for c in chunks:
                session.feed(c)
            return session.take_bbo()

        books["itch-book"] = (itch_book_run, "BBO table")
    except ImportError as err:
        emit("itch-book", "skipped", 0, "", reason=str(err))
    try:
        from itchcpp.book import BookManager

        def itchcpp_run() -> Any:
            manager = BookManager()
            for name in symbols.values():
                manager.track_symbol(name)
            manager.process_stream(data)
            return manager

        books["itchcpp"] = (itchcpp_run, "full-depth L3 books")
    except ImportError as err:
        emit("itchcpp", "skipped", 0, "", reason=str(err))

    seconds: dict[str, list[float]] = {name: [] for name in books}
    last: dict[str, Any] = {}
    for _ in range(args.runs):
        for name, (run, _task) in books.items():
            t0 = time.perf_counter()
            last[name] = run()
            seconds[name].append(time.perf_counter() - t0)
    for name, (_run, task) in books.items():
        emit(name, "msgs_per_s", round(total / statistics.median(seconds[name])), "msgs/s",
             task=task, runs_s=[round(r, 4) for r in seconds[name]], **file_info)  # fmt: skip
    engine = last["tickerplant book"]
    emit("tickerplant book", "bytes_per_live_order", round(engine.bytes_per_live_order, 1),
         "bytes", live_orders=engine.live_orders, peak_live_orders=engine.peak_live_orders,
         state_bytes=engine.state_bytes)  # fmt: skip

    if "itch-book" in books:
        bbo = last["itch-book"]
        theirs: dict[int, tuple[int, int, int, int]] = {}
        for loc, bp, bs, ap_, as_ in zip(
            bbo["locate"].tolist(), bbo["bid_px"].tolist(), bbo["bid_sz"].tolist(),
            bbo["ask_px"].tolist(), bbo["ask_sz"].tolist(), strict=True,
        ):  # fmt: skip
            theirs[loc] = (int(bp), int(bs), int(ap_), int(as_))
        agree = sum(theirs.get(loc, (0, 0, 0, 0)) == bbo_ for loc, bbo_ in ours.items())
        emit("itch-book", "final_bbo_agreement", agree, "symbols", of=len(ours))

    if "itchcpp" in books:
        from itchcpp.parser import MessageParser

        manager = last["itchcpp"]
        agree = 0
        for loc, name in symbols.items():
            b = manager.book_for_symbol(name).bbo()
            theirs_one = (
                round(b.bid_price * 10_000) if b.has_bid else 0, b.bid_shares if b.has_bid else 0,
                round(b.ask_price * 10_000) if b.has_ask else 0, b.ask_shares if b.has_ask else 0,
            )  # fmt: skip
            agree += theirs_one == ours[loc]
        emit("itchcpp", "final_bbo_agreement", agree, "symbols", of=len(ours))

        cut = data[: prefix_bytes(data, args.slow_messages)]
        med, runs, n = timed(lambda: sum(1 for _ in MessageParser().parse_stream(cut)), args.runs)
        emit("itchcpp", "parse_objects_msgs_per_s", round(n / med), "msgs/s", messages=n)

    limit = args.slow_messages
    med, runs, n = timed(lambda: dict_book(data, limit), args.runs)
    emit("cpython dict book", "msgs_per_s", round(n / med), "msgs/s", messages=n,
         runs_s=[round(r, 4) for r in runs])  # fmt: skip

    env = {**os.environ, "ITCH_NO_CPP": "1"}
    cut = str(prefix_bytes(data, limit))
    out = subprocess.run(
        [sys.executable, "-c", _ITCHFEED, str(path), cut, str(args.runs)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if out.returncode == 0:
        lines = [line.split() for line in out.stdout.split("\n") if line.strip()]
        rates = [int(n_) / float(dt) for n_, dt in lines]
        emit("itchfeed (pure Python)", "parse_objects_msgs_per_s", round(statistics.median(rates)),
             "msgs/s", messages=int(lines[0][0]))  # fmt: skip
    else:
        emit("itchfeed (pure Python)", "skipped", 0, "", reason=out.stderr.strip()[-300:])

    ours_s = seconds["tickerplant book"]
    for peer in books.keys() - {"tickerplant book"}:
        ratios = [theirs_s / our_s for our_s, theirs_s in zip(ours_s, seconds[peer], strict=True)]
        emit("tickerplant book", f"speedup_vs_{peer}", round(statistics.median(ratios), 2), "x",
             rounds=[round(r, 2) for r in ratios])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
