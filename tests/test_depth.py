"""Order-book snapshots at fixed exchange-time moments: exact at each, whatever the chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tickerplant.book import BookEngine
from tickerplant.exchange.synthetic import SyntheticMarket
from tickerplant.replay import _interval, main_replay
from tickerplant.wire.blocks import iter_messages, join_messages


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    market = SyntheticMarket(31, 12)
    path = tmp_path_factory.mktemp("depth") / "day.itch"
    path.write_bytes(b"".join(market.chunks(40_000)))
    return path, market.tickers[:3]


def test_each_snapshot_is_the_book_after_every_message_before_its_moment(
    day: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, tickers = day
    base = ["--symbols", ",".join(tickers), "--depth", "4", "--every", "10s", "--json",
            "--no-progress"]  # fmt: skip
    assert main_replay([str(path), "--out", str(tmp_path / "big"), *base]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["depth_rows"] > 0
    assert main_replay([str(path), "--out", str(tmp_path / "small"), *base,
                        "--chunk-mb", "0.07"]) == 0  # fmt: skip
    table = pq.read_table(tmp_path / "big.depth.parquet")
    assert table.equals(pq.read_table(tmp_path / "small.depth.parquet"))  # chunks change nothing
    times = np.unique(table["time"].to_numpy())
    assert (np.diff(times) % 10_000_000_000 == 0).all() and times[0] % 10_000_000_000 == 0
    msgs = list(iter_messages(path.read_bytes()))
    stamps = np.array([int.from_bytes(m[5:11], "big") for m in msgs])
    rows = table.to_pylist()
    for moment in times[[0, len(times) // 2, -1]].tolist():
        engine = BookEngine()
        engine.process(join_messages(msgs[: int(np.searchsorted(stamps, moment))]))
        want = []
        for locate, name in sorted(engine.symbols().items()):
            if name not in tickers:
                continue
            d = engine.depth(locate, 4)
            for side, levels in (("B", d.bids), ("S", d.asks)):
                want += [(name, side, k + 1, int(lv["price"]), int(lv["size"]), int(lv["orders"]))
                         for k, lv in enumerate(levels)]  # fmt: skip
        got = sorted((r["symbol"], r["side"], r["level"], r["price"], r["size"], r["orders"])
                     for r in rows if r["time"] == moment)  # fmt: skip
        assert got == sorted(want) and got


def test_depth_needs_symbols_and_a_duration(
    day: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = day
    out = ["--out", str(tmp_path / "x"), "--no-progress"]
    assert main_replay([str(path), *out, "--depth", "5"]) == 2
    assert "--depth snapshots the books of --symbols" in capsys.readouterr().err
    assert main_replay([str(path), *out, "--depth", "5", "--symbols", "A", "--every", "soon"]) == 2
    assert "--every 'soon'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("text", "ns"), [("1s", 10**9), ("500ms", 5 * 10**8), ("100us", 10**5),
                                          ("1m", 60 * 10**9), ("2.5s", 25 * 10**8),
                                          ("0s", None), ("1h", None), ("s", None)])  # fmt: skip
def test_intervals(text: str, ns: int | None) -> None:
    assert _interval(text) == ns
