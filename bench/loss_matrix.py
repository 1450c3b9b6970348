"""The loss matrix, every cell (issue 21): loss on line A x loss on line B over {0, 1, 5, 20,
100} %, recovery on and off, then loss on the re-request answers and on the replay's segments,
reordering and duplication. Two network-namespace hosts (root, ip, nft); each cell is a session
of 200,000 messages (a cut of both lines: 300,000 at 50k msgs/s, four seconds of it dropped)
judged by ``tests/lossmatrix.py``: the feed's stream is the published one, or that with exactly
the ranges it reported lost missing. One JSON line per cell; ``--markdown`` prints the README's
tables at the end.

    sudo .venv/bin/python bench/loss_matrix.py [--markdown] [--only-recovery]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

# The cell and its judge are the tests' (tests/test_loss_matrix.py runs some of them).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from lossmatrix import Cell, Outcome, run_cell
from netns import two_hosts, unavailable

LEVELS = (0, 1, 5, 20, 100)
EXTRA = [
    Cell(a=5, b=5, rerequest=20), Cell(a=20, b=20, rerequest=100),
    Cell(a=100, b=100, replay=20), Cell(a=100, b=100, replay=100),
    Cell(dup=5), Cell(reorder=5), Cell(dup=20, reorder=20), Cell(a=5, b=5, dup=5, reorder=5),
    Cell(a=5, b=5, dup=5, reorder=5, recovery=False),
]  # fmt: skip


def verdict(outcome: Outcome) -> str:
    mark = "ok" if outcome.ok else "FAIL"
    if not outcome.lost_messages:
        return f"{mark}: identical"
    how = "exact" if outcome.exact else "NOT exact"
    return (f"{mark}: {outcome.lost_messages:,} lost in {len(outcome.missing):,} ranges, "
            f"reported {how}")  # fmt: skip


def markdown(outcomes: list[Outcome]) -> str:
    by = {o.cell: o for o in outcomes}
    out = []
    for recovery in (True, False):
        out.append(f"\nRecovery {'on' if recovery else 'off'} (rows: loss on A, columns: on B)\n")
        out.append("| A \\ B | " + " | ".join(f"{b} %" for b in LEVELS) + " |")
        out.append("| --- |" + " --- |" * len(LEVELS))
        for a in LEVELS:
            cells = [by.get(Cell(a=a, b=b, recovery=recovery)) for b in LEVELS]
            out.append(f"| {a} % | " + " | ".join(verdict(c) if c else "-" for c in cells) + " |")
    extra = [o for o in outcomes if o.cell in EXTRA]
    if extra:
        out.append("\n| cell | outcome | what was done to it |")
        out.append("| --- | --- | --- |")
        for o in extra:
            done = {**o.dropped, **{k: v for k, v in o.relay.items() if k != "received"}}
            out.append(f"| {o.cell.name} | {verdict(o)} | {done} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true", help="print the tables at the end")
    parser.add_argument("--only-recovery", action="store_true", help="recovery on only")
    args = parser.parse_args()
    reason = unavailable()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    cells = [Cell(a=a, b=b, recovery=r) for r in ((True,) if args.only_recovery else (True, False))
             for a in LEVELS for b in LEVELS] + EXTRA  # fmt: skip
    outcomes = []
    with two_hosts() as hosts, tempfile.TemporaryDirectory() as work:
        for cell in cells:
            outcome = run_cell(hosts, cell, Path(work))
            outcomes.append(outcome)
            print(json.dumps({"bench": "loss_matrix", "subject": "tickerplant",
                              "metric": "cell_ok", "value": int(outcome.ok), "unit": "bool",
                              **outcome.row()}), flush=True)  # fmt: skip
    if args.markdown:
        print(markdown(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
