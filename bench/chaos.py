"""Chaos (issue 21): ``tickerplant run`` killed with SIGKILL at random every 1-3 s for 60 s of a
10M-message session and started again on its journals each time; an ``itch`` and an ``events``
client must end with every message and record exactly once, in order. One JSON line: restarts
survived, the time from a restart to the first login it answered (p50, max), messages and
records checked, and whether both streams were identical to what was published.

    .venv/bin/python bench/chaos.py [--messages 10000000] [--rate 150000] [--kill-for 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

# The run and its checks are the tests' (tests/test_chaos.py runs a short one).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from chaos import run_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--rate", type=int, default=150_000)
    parser.add_argument("--kill-for", type=float, default=60.0, help="seconds of kills")
    parser.add_argument("--seed", type=int, default=31)
    args = parser.parse_args()
    result = asyncio.run(run_chaos(args.messages, args.rate, args.kill_for, args.seed))
    print(json.dumps({"bench": "chaos", "subject": "tickerplant", "metric": "restarts",
                      "value": result.restarts, "unit": "restarts", **asdict(result)}))
    return 0 if result.identical else 1


if __name__ == "__main__":
    sys.exit(main())
