"""Cells of the loss matrix (:mod:`lossmatrix`) between two network-namespace hosts: loss on
either line up to all of it, on both, on the re-request answers and on the replay's segments,
reordering and duplication, recovery on and off, and a cut of both lines. In every cell the
feed's stream is the published one, or that with exactly the ranges it reported lost missing.
``bench/loss_matrix.py`` runs every pair of {0, 1, 5, 20, 100} % on A and B, both ways."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lossmatrix import Cell, missing_ranges, run_cell
from netns import TwoHosts, hosts_or_skip
from tickerplant.wire.blocks import join_messages

CELLS = [
    Cell(),
    Cell(a=20),
    Cell(a=100, b=5),
    Cell(a=20, b=20),
    Cell(a=5, b=5, recovery=False),
    Cell(a=100, b=20, recovery=False),
    Cell(a=5, b=5, rerequest=20),
    Cell(a=100, b=100),
    Cell(a=100, b=100, recovery=False),
    Cell(a=100, b=100, replay=5),
    Cell(dup=5, reorder=5),
    Cell(a=5, dup=5, reorder=5, recovery=False),
]


@pytest.fixture(scope="module")
def hosts() -> Iterator[TwoHosts]:
    with hosts_or_skip() as made:
        yield made


@pytest.mark.netns
@pytest.mark.parametrize("cell", CELLS, ids=[c.name for c in CELLS])
def test_a_cell_delivers_the_stream_or_reports_exactly_what_it_lost(
    hosts: TwoHosts, cell: Cell, tmp_path: Path
) -> None:
    outcome = run_cell(hosts, cell, tmp_path)
    print(json.dumps(outcome.row()))
    assert outcome.published > 0 and outcome.in_order, "delivered out of place or changed"
    assert outcome.duplicates == 0
    assert outcome.exact, (outcome.lost_ranges[:5], outcome.missing[:5])
    assert outcome.delivered + outcome.lost_messages == outcome.published
    if cell.recovery:
        assert outcome.missing == [], "recovery on, yet messages missing"
    if cell.cut:
        assert outcome.lines_down == ["a", "b"], "both lines cut, not both reported down"
        if not cell.recovery:
            assert outcome.missing, "a cut of four seconds lost nothing"
    for name, pct in (("line a", cell.a), ("line b", cell.b), ("rerequest", cell.rerequest),
                      ("replay", cell.replay)):  # fmt: skip
        if pct and not cell.cut and name.startswith("line"):
            assert outcome.dropped.get(name, 0) > 0, f"nothing dropped on {name}"
    if cell.dup or cell.reorder:
        assert outcome.relay["duplicated"] > 0 and outcome.relay["reordered"] > 0
    assert outcome.ok


def test_the_judge_finds_missing_ranges_and_anything_else() -> None:
    source = join_messages([b"m%d" % n for n in range(1, 11)])
    written = join_messages([b"m%d" % n for n in (1, 2, 5, 6, 7, 10)])
    assert missing_ranges(source, written) == ([(3, 5), (8, 10)], True)
    assert missing_ranges(source, join_messages([b"m1", b"m3", b"m2"]))[1] is False  # order
    assert missing_ranges(source, join_messages([b"m1", b"m1"]))[1] is False  # twice
    assert missing_ranges(source, join_messages([b"m1", b"m9"])) == ([(2, 9), (10, 11)], True)
