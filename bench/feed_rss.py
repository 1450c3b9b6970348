"""Peak RSS of the feed handler process during a 1M-message session with 5 % loss on line A.

The handler runs as its own process (``tickerplant feed --json --until-end``) so that its peak
resident set is its own, not the benchmark's; the exchange is another child.

    .venv/bin/python bench/feed_rss.py [--messages N] [--rate R] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys

from plant_run import emit, endpoints, itch_file
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.io.loop import run_loop


async def once(offset: int, path: str, rate: int) -> dict[str, object]:
    line_a, line_b, rerequest, replay = endpoints(offset)
    feed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tickerplant", "feed", "--json", "--until-end", "--seconds", "120",
        "--line-a", str(line_a), "--line-b", str(line_b),
        "--rerequest", str(rerequest), "--replay", str(replay),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.sleep(2)  # joined before the session starts
        async with ExchangeProcess(line_a, line_b, rerequest, replay, "--itch", path,
                                   "--rate", str(rate), "--drop-a", "0.05",
                                   "--eos-seconds", "1") as exchange:
            await exchange.summary()
        out, _ = await asyncio.wait_for(feed.communicate(), 60)
    finally:
        if feed.returncode is None:
            feed.kill()
            await feed.wait()
    figures: dict[str, object] = json.loads(out)
    return figures


async def main(args: argparse.Namespace) -> None:
    path = str(itch_file(args.messages))
    peaks = []
    for repeat in range(args.repeat):
        figures = await once(200 + repeat, path, args.rate)
        peak = int(figures["peak_rss_bytes"])  # type: ignore[call-overload]
        peaks.append(peak)
        emit(bench="feed_rss", subject="tickerplant", metric="peak_rss_run", value=peak,
             unit="bytes", repeat=repeat, delivered=figures["delivered_messages"],
             lost=figures["lost_messages"])
    emit(bench="feed_rss", subject="tickerplant", metric="peak_rss", value=statistics.median(peaks),
         unit="bytes", messages=args.messages, runs=len(peaks))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    run_loop(main(parser.parse_args()))
