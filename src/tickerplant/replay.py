"""``tickerplant replay FILE``: every book of an ITCH 5.0 day; BBO and trades out to Parquet.

FILE is an ITCH file (plain or gzip, or ``-`` for standard input) or a packet capture (pcap or
pcapng) of the day's MoldUDP64 lines, told apart by their first bytes; a capture's lines are
arbitrated into the stream by the feed handler's own machine (:mod:`tickerplant.capture.lines`).
The day is streamed in chunks of whole messages, each chunk goes through
the same :class:`BookEngine` the live plant uses, and the events come out as two Parquet files
(``PREFIX.bbo.parquet``, ``PREFIX.trades.parquet``; columns in tickerplant.capture.parquet).
The summary at the end counts messages by type, symbols, peak live orders, anomalies and
throughput; ``--json`` prints it as one JSON object on stdout. Exit codes: 0 done, 2 a file that
cannot be read or is not valid ITCH (the error names the byte offset and what was found there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from tickerplant.book import BookEngine
from tickerplant.capture.depth import DepthSnapshots
from tickerplant.capture.itch_file import (
    CHUNK_BYTES,
    GZIP_MAGIC,
    ItchFile,
    ItchFileError,
    ItchWriter,
    select_locates,
)
from tickerplant.capture.lines import CaptureFeed, is_capture_file
from tickerplant.capture.messages import MessageParquetWriter
from tickerplant.capture.parquet import EventParquetWriter, Events
from tickerplant.capture.pcap import CaptureError
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The replay arguments, on ``parser`` (a cli subcommand) or a parser of their own."""
    p = parser or argparse.ArgumentParser(prog="tickerplant replay", description=__doc__)
    p.add_argument("file", type=Path, help="ITCH 5.0 file (u16 length + message, repeated),"
                   " plain or gzip (told by its magic bytes), or - for standard input")
    p.add_argument(
        "--out", type=Path, default=None,
        help="output prefix: writes PREFIX.bbo.parquet and PREFIX.trades.parquet "
        "(default: FILE without its suffix; needed with -)",
    )  # fmt: skip
    p.add_argument("--symbols", default="", help="only these symbols in the output (Parquet and "
                   "--itch-out), e.g. AAPL,MSFT")
    p.add_argument("--itch-out", type=Path, default=None, metavar="FILE",
                   help="also write the day's messages (a capture's arbitrated stream; with "
                   "--symbols, only theirs and the market-wide ones) as a standard ITCH file")
    p.add_argument("--messages", action="store_true",
                   help="also write every message, one Parquet table per type, to "
                   "PREFIX.messages/LETTER.parquet")
    p.add_argument("--depth", type=int, default=0, metavar="N",
                   help="also write the top N levels per side of the --symbols' books, every "
                   "--every of exchange time, to PREFIX.depth.parquet")
    p.add_argument("--every", default="1s", metavar="INTERVAL",
                   help="the snapshots' interval: 1s, 500ms, 100us, 1m... (default 1s)")
    p.add_argument("--line", action="append", default=[], metavar="GROUP:PORT",
                   help="a capture's line to read (give two for A and B; default: every "
                   "MoldUDP64 stream of the one session found)")
    p.add_argument("--session", default=None, help="a capture's MoldUDP64 session to read")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--chunk-mb", type=float, default=CHUNK_BYTES / (1 << 20), help="read size")
    return p


def main_replay(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``tickerplant replay``; returns the exit code."""
    return run_replay(build_parser().parse_args(argv))


def run_replay(args: argparse.Namespace) -> int:
    console = Console(stderr=True)

    def fail(message: str) -> int:
        console.print(f"tickerplant replay: {message}", markup=False, soft_wrap=True)
        return 2

    path: Path = args.file
    stdin = os.fspath(path) == "-"
    size: int | None = None  # progress in bytes read, against the file's size when known
    try:
        capture = is_capture_file(path)
        if not stdin:
            size = path.stat().st_size
            with path.open("rb") as f:
                if capture or f.read(2) == GZIP_MAGIC:
                    size = None  # what it holds of the day is known at the end only
    except OSError as err:
        return fail(f"cannot read {path}: {err.strerror}")
    if stdin and args.out is None:
        return fail("reading standard input, give --out PREFIX")
    if (args.line or args.session) and not capture:
        return fail(f"--line and --session choose a capture's lines; {path} is no capture")
    try:
        lines = [Endpoint.parse(text, "--line") for text in args.line]
    except ConfigError as err:
        return fail(str(err))
    prefix = args.out or path.with_suffix("")
    wanted = {s.strip() for s in args.symbols.split(",") if s.strip()}
    every = _interval(args.every)
    if args.depth < 0 or args.depth > 1000:
        return fail(f"--depth {args.depth}: give the levels per side, 1 to 1000")
    if every is None:
        return fail(f"--every {args.every!r}: give a duration such as 1s, 500ms, 100us or 1m")
    if args.depth and not wanted:
        return fail("--depth snapshots the books of --symbols: name them, e.g. --symbols AAPL")
    chunk = max(1 << 16, int(args.chunk_mb * (1 << 20)))
    engine = BookEngine()
    feed: CaptureFeed | None = None
    itch_file: ItchFile | None = None
    if capture:
        try:
            feed = CaptureFeed(path, lines, args.session, chunk)
        except CaptureError as err:
            return fail(str(err))
        chunks: Iterator[tuple[bytes, npt.NDArray[np.int64] | None]] = feed.chunks()
    else:
        itch_file = ItchFile(path, chunk)
        chunks = ((blocks, None) for blocks in itch_file.chunks())
    try:
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        itch_out = ItchWriter(f"{args.itch_out}.partial") if args.itch_out else None
    except OSError as err:
        return fail(f"cannot write {err.filename}: {err.strerror}")
    writer = EventParquetWriter(f"{prefix}.bbo.parquet", f"{prefix}.trades.parquet",
                                captured=capture)  # fmt: skip
    messages = MessageParquetWriter(f"{prefix}.messages", capture) if args.messages else None
    depth = DepthSnapshots(f"{prefix}.depth.parquet", args.depth, every) if args.depth else None

    def write(blocks: bytes, bbo: Events, trades: Events, symbols: npt.NDArray[np.object_],
              keep: npt.NDArray[np.bool_] | None,
              times: npt.NDArray[np.int64] | None) -> None:  # fmt: skip
        writer.write(bbo, trades, symbols, times)
        if messages is not None:
            messages.write(blocks, symbols, times, keep)

    progress = _progress(console, disable=args.no_progress or not console.is_terminal)
    task = progress.add_task(path.name, total=size, msgs="0", rate="", live="0", symbols="0")
    error = None
    done = 0
    book_seconds = 0.0
    start = time.perf_counter()
    keep = np.zeros(0, dtype=bool)
    symbols = np.zeros(0, dtype=object)
    naming = (-1, -1)  # (symbols defined, redefinitions) when ``symbols`` was last built
    # Parquet encoding runs on a second thread while the next chunk's books are built: pyarrow
    # and the book kernel both release the GIL. One write in flight keeps memory bounded.
    output = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet")
    pending: Future[None] | None = None
    try:
        with progress:
            for chunk_blocks, chunk_times in chunks:
                pieces = (depth.split(chunk_blocks, chunk_times) if depth is not None
                          else [(chunk_blocks, chunk_times, [])])  # fmt: skip
                for blocks, times, moments in pieces:
                    if blocks:
                        t0 = time.perf_counter()
                        # Fresh buffers (no scratch): the write in flight still reads the last
                        # batch while this one is built.
                        batch = engine.process(blocks)
                        book_seconds += time.perf_counter() - t0
                        now = (engine.symbol_count, engine.anomalies["locate_redefined"])
                        if now != naming:
                            naming = now
                            symbols = engine.symbol_table()
                            keep = _symbol_mask(symbols, wanted)
                            if depth is not None:
                                depth.locates = {loc: name for loc, name in
                                                 engine.symbols().items() if name in wanted}
                        bbo, trades = batch.bbo, batch.trades
                        if wanted:
                            bbo, trades = bbo[keep[bbo["locate"]]], trades[keep[trades["locate"]]]
                        if itch_out is not None:
                            itch_out.write_blocks(select_locates(blocks, keep) if wanted
                                                  else blocks)  # fmt: skip
                        if pending is not None:
                            pending.result()
                        pending = output.submit(write, blocks, bbo, trades, symbols,
                                                keep if wanted else None, times)  # fmt: skip
                    for moment in moments:
                        assert depth is not None
                        depth.snapshot(engine, moment)
                done += len(chunk_blocks)
                elapsed = time.perf_counter() - start
                progress.update(
                    task, completed=done, msgs=f"{engine.messages:,}",
                    rate=f"{engine.messages / elapsed / 1e6:.1f}M msg/s",
                    live=f"{engine.live_orders:,}", symbols=f"{engine.symbol_count:,}",
                )  # fmt: skip
    except (ItchFileError, CaptureError) as err:
        error = str(err)
    finally:
        output.shutdown(wait=True)
        # Renamed into place only when the whole file was good: no half-written output.
        ok = error is None and sys.exc_info()[0] is None
        writer.close(keep=ok)
        if messages is not None:
            messages.close(keep=ok)
        if depth is not None:
            depth.close(keep=ok)
        if itch_out is not None:
            itch_out.close()
            if ok:
                os.replace(f"{args.itch_out}.partial", args.itch_out)
            else:
                os.unlink(f"{args.itch_out}.partial")
        if feed is not None:
            feed.close()
    if pending is not None:
        pending.result()  # a failed write raises here, after the files are closed
    seconds = time.perf_counter() - start
    summary = _summary(engine, path, done, seconds, book_seconds, writer, error)
    summary["symbols_not_found"] = sorted(wanted - set(engine.symbols().values()))
    if itch_file is not None:
        summary["compressed"] = itch_file.compressed
        summary["inferred_lengths"] = itch_file.inferred_lengths
    if feed is not None:
        summary["capture"] = feed.figures()
    if depth is not None:
        summary["depth_parquet"] = depth.path
        summary["depth_rows"] = depth.rows
        summary["depth_snapshots"] = depth.snapshots
    if messages is not None:
        summary["messages_parquet"] = messages.path
        summary["message_rows"] = messages.rows
    if itch_out is not None:
        summary["itch_out"] = os.fspath(args.itch_out)
        summary["itch_out_messages"] = itch_out.messages
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(console, summary)
    if error:
        what = "a capture of MoldUDP64 lines" if capture else "valid ITCH 5.0"
        return fail(f"{path} is not {what}: {error}" if not capture else error)
    return 0


def _progress(console: Console, disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[msgs]} msgs"),
        TextColumn("[cyan]{task.fields[rate]}"),
        TextColumn("{task.fields[symbols]} symbols"),
        TextColumn("{task.fields[live]} live orders"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )


def _summary(
    engine: BookEngine, path: Path, done: int, seconds: float, book_seconds: float,
    writer: EventParquetWriter, error: str | None,
) -> dict[str, Any]:  # fmt: skip
    messages = engine.messages
    return {
        "file": os.fspath(path),
        "bytes": done,
        "messages": messages,
        "messages_by_type": dict(sorted(engine.messages_by_type.items())),
        "symbols": engine.symbol_count,
        "peak_live_orders": engine.peak_live_orders,
        "live_orders": engine.live_orders,
        "anomalies": engine.anomalies,
        "bbo_rows": writer.bbo.rows,
        "trade_rows": writer.trades.rows,
        "bbo_parquet": writer.bbo.path,
        "trades_parquet": writer.trades.path,
        "seconds": round(seconds, 6),
        "msgs_per_s": round(messages / seconds) if seconds > 0 else 0,
        "book_msgs_per_s": round(messages / book_seconds) if book_seconds > 0 else 0,
        "state_bytes": engine.state_bytes,
        "error": error,
    }


def _print_summary(console: Console, s: dict[str, Any]) -> None:
    table = Table(title=f"replay of {s['file']}", show_header=False)
    table.add_row("messages", f"{s['messages']:,}")
    table.add_row(
        "by type", " ".join(f"{k}={v:,}" for k, v in s["messages_by_type"].items()) or "-"
    )
    table.add_row("symbols", f"{s['symbols']:,}")
    if s.get("inferred_lengths"):
        table.add_row("lengths inferred", f"{s['inferred_lengths']:,} zero prefixes, taken "
                      "from the message type")
    table.add_row("peak live orders", f"{s['peak_live_orders']:,}")
    bad = {k: v for k, v in s["anomalies"].items() if v}
    table.add_row("anomalies", " ".join(f"{k}={v:,}" for k, v in bad.items()) or "none")
    table.add_row("throughput", f"{s['msgs_per_s'] / 1e6:.2f}M msgs/s "
                  f"(books alone {s['book_msgs_per_s'] / 1e6:.2f}M) in {s['seconds']:.2f} s")
    if s["symbols_not_found"]:
        table.add_row("not in the file", ", ".join(s["symbols_not_found"]))
    if "capture" in s:
        _capture_rows(table, s["capture"])
    if "depth_parquet" in s:
        table.add_row("depth rows", f"{s['depth_rows']:,} in {s['depth_snapshots']:,} "
                      f"snapshots -> {s['depth_parquet']}")  # fmt: skip
    if "messages_parquet" in s:
        rows = " ".join(f"{k}={v:,}" for k, v in s["message_rows"].items())
        table.add_row("message rows", f"{rows} -> {s['messages_parquet']}/")
    if "itch_out" in s:
        table.add_row("ITCH out", f"{s['itch_out_messages']:,} messages -> {s['itch_out']}")
    table.add_row("BBO rows", f"{s['bbo_rows']:,} -> {s['bbo_parquet']}")
    table.add_row("trade rows", f"{s['trade_rows']:,} -> {s['trades_parquet']}")
    console.print(table)


def _capture_rows(table: Table, c: dict[str, Any]) -> None:
    for st in c["streams"]:
        table.add_row(f"stream {st['line']}",
                      f"session {st['session'].strip()} seq {st['first_sequence']:,}.."
                      f"{st['last_sequence']:,}, {st['packets']:,} packets")  # fmt: skip
    table.add_row("lines", " ".join(f"{k.upper()}={v}" for k, v in c["lines"].items()))
    kinds = " ".join(f"{k}={v:,}" for k, v in c["packets_by_kind"].items())
    table.add_row("capture", f"{c['packets']:,} packets: {kinds}; not MoldUDP64 "
                  f"{c['not_moldudp64']:,}")  # fmt: skip
    repaired = " ".join(f"{k.upper()}={v:,}" for k, v in c["gaps_repaired"].items())
    table.add_row("arbitration", f"{c['delivered_messages']:,} messages, "
                  f"{c['duplicate_messages']:,} duplicates; gaps filled by the other line: "
                  f"{repaired}")  # fmt: skip
    lost = ", ".join(f"[{a:,}, {b:,})" for a, b in c["lost_ranges"][:10])
    table.add_row("lost (on every line)", f"{c['lost_messages']:,} messages {lost}".strip())
    if c["suspects"]:  # far beyond the stream, never confirmed by a second packet: decided
        table.add_row("far packets", ", ".join(
            f"{d['line'].upper()} seq {d['sequence']:,} ({d['count']} messages) "
            + ("accepted" if d["accepted"] else "rejected as a stray")
            for d in c["suspects"][:10]))  # fmt: skip


_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000}


def _interval(text: str) -> int | None:
    """``1s``, ``500ms``, ``100us``, ``1m`` as nanoseconds (None: not a positive duration)."""
    for unit in sorted(_UNITS, key=len, reverse=True):
        number = text.strip().removesuffix(unit)
        if number != text.strip():
            try:
                value = round(float(number) * _UNITS[unit])
            except ValueError:
                return None
            return value if value > 0 else None
    return None


def _symbol_mask(symbols: npt.NDArray[np.object_], wanted: set[str]) -> npt.NDArray[np.bool_]:
    return np.array([not wanted or s in wanted for s in symbols.tolist()], dtype=bool)


if __name__ == "__main__":
    sys.exit(main_replay())
