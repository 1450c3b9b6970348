"""``tickerplant replay`` on small generated ITCH files: summary, Parquet output, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tickerplant.book import BookEngine
from tickerplant.capture.itch_file import ItchWriter
from tickerplant.exchange.synthetic import SyntheticMarket
from tickerplant.replay import main_replay

# (slow: not run again with the JIT off; the kernels these tables come from are checked both
# ways by test_book_engine, and a day made and replayed as Python takes 32 s of that pass)
pytestmark = pytest.mark.slow

_MESSAGES = 40_000


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticMarket]:
    market = SyntheticMarket(21, 40)
    path = tmp_path_factory.mktemp("replay") / "day.itch"
    with ItchWriter(path) as w:
        for chunk in market.chunks(_MESSAGES, 5000):
            w.write_blocks(chunk)
    return path, market


def _replay(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main_replay([*argv, "--json", "--no-progress", "--chunk-mb", "0.1"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_replay_writes_every_event_with_symbols(
    day: tuple[Path, SyntheticMarket], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, market = day
    code, summary = _replay(capsys, str(path), "--out", str(tmp_path / "out" / "day"))
    assert code == 0
    engine = BookEngine()
    batches = [engine.process(c) for c in market.chunks(_MESSAGES, 5000)]
    bbo = np.concatenate([b.bbo for b in batches])
    trades = np.concatenate([b.trades for b in batches])
    assert summary["messages"] == _MESSAGES
    assert summary["messages_by_type"] == engine.messages_by_type
    assert summary["symbols"] == 40
    assert summary["peak_live_orders"] == engine.peak_live_orders > 0
    assert summary["anomalies"] == engine.anomalies
    assert isinstance(summary["msgs_per_s"], int) and summary["msgs_per_s"] > 0

    table = pq.read_table(tmp_path / "out" / "day.bbo.parquet")
    assert table.num_rows == len(bbo) == summary["bbo_rows"]
    assert table.column("bid_price").to_numpy().tolist() == bbo["bid_price"].tolist()
    assert table.column("ask_size").to_numpy().tolist() == bbo["ask_size"].tolist()
    assert table.column("timestamp").to_numpy().tolist() == bbo["timestamp"].tolist()
    names = [market.tickers[loc - 1] for loc in bbo["locate"].tolist()]
    assert table.column("symbol").to_pylist() == names

    tt = pq.read_table(tmp_path / "out" / "day.trades.parquet")
    assert tt.num_rows == len(trades)
    assert tt.column("match").to_numpy().tolist() == trades["match"].tolist()
    assert tt.column("kind").to_pylist() == [chr(k) for k in trades["kind"].tolist()]
    sides = tt.column("side").to_pylist()
    assert set(sides) <= {"B", "S", None} and None in sides and "B" in sides


def test_symbols_filter_keeps_only_those_symbols(
    day: tuple[Path, SyntheticMarket], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, market = day
    wanted = market.tickers[:2]
    code, summary = _replay(
        capsys, str(path), "--out", str(tmp_path / "f"), "--symbols", ",".join([*wanted, "NOPE9"])
    )
    assert code == 0
    assert summary["symbols_not_found"] == ["NOPE9"]
    symbols = pq.read_table(tmp_path / "f.bbo.parquet").column("symbol").to_pylist()
    assert set(symbols) == set(wanted)
    assert summary["messages"] == _MESSAGES  # the books are all built; only output is filtered
    trades = pq.read_table(tmp_path / "f.trades.parquet").column("symbol").to_pylist()
    assert set(trades) <= set(wanted) and trades


def test_parquet_answers_a_spread_query_in_duckdb(
    day: tuple[Path, SyntheticMarket], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    duckdb = pytest.importorskip("duckdb", reason="duckdb not installed (README example only)")
    path, market = day
    code, _ = _replay(capsys, str(path), "--out", str(tmp_path / "q"))
    assert code == 0
    spread = duckdb.sql(
        f"SELECT min((ask_price - bid_price) / 1e4) FROM '{tmp_path}/q.bbo.parquet' "
        f"WHERE symbol = '{market.tickers[0]}' AND bid_size > 0 AND ask_size > 0"
    ).fetchall()
    assert spread[0][0] is not None and spread[0][0] > 0  # the generated books never cross


def test_invalid_file_names_offset_and_exits_2(
    day: tuple[Path, SyntheticMarket], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = day
    good = path.read_bytes()[:300_000]
    # Cut at a block boundary near 300 kB, then garbage where the next length should be.
    pos = 0
    while pos + 2 + int.from_bytes(good[pos : pos + 2], "big") <= len(good):
        pos += 2 + int.from_bytes(good[pos : pos + 2], "big")
    bad = tmp_path / "bad.itch"
    bad.write_bytes(good[:pos] + b"\x00\x05zzzzz")
    code = main_replay([str(bad), "--out", str(tmp_path / "bad"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"offset {pos}" in err and "unknown message type" in err
    # Issue 9: a failed replay leaves no output behind (it used to keep what came before).
    assert not list(tmp_path.glob("bad.*parquet*"))


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_replay([str(tmp_path / "nope.itch"), "--no-progress"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_gzip_day_from_a_file_or_from_stdin_replays_to_the_same_tables(
    day: tuple[Path, SyntheticMarket], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import gzip
    import subprocess
    import sys

    path, _ = day
    packed = tmp_path / "day.itch.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    code, plain = _replay(capsys, str(path), "--out", str(tmp_path / "plain"))
    assert code == 0
    code, zipped = _replay(capsys, str(packed), "--out", str(tmp_path / "zipped"))
    assert code == 0 and zipped["messages"] == plain["messages"] == _MESSAGES
    # zcat day.gz | tickerplant replay - : a real pipe into a real process
    with subprocess.Popen(["gzip", "-dc", str(packed)], stdout=subprocess.PIPE) as zcat:
        run = subprocess.run(
            [sys.executable, "-m", "tickerplant", "replay", "-", "--out", str(tmp_path / "piped"),
             "--no-progress", "--json"], stdin=zcat.stdout, capture_output=True, timeout=120,
        )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for kind in ("bbo", "trades"):
        want = pq.read_table(tmp_path / f"plain.{kind}.parquet")
        for other in ("zipped", "piped"):
            assert pq.read_table(tmp_path / f"{other}.{kind}.parquet").equals(want), other
    assert main_replay(["-", "--no-progress"]) == 2  # stdin needs --out
    assert "give --out" in capsys.readouterr().err


def test_a_zero_prefixed_day_replays_to_the_same_tables_and_says_so(
    day: tuple[Path, SyntheticMarket], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tickerplant.wire.blocks import iter_messages

    path, _ = day
    zero = tmp_path / "zero.itch"
    zero.write_bytes(b"".join(b"\x00\x00" + m for m in iter_messages(path.read_bytes())))
    code, plain = _replay(capsys, str(path), "--out", str(tmp_path / "plain"))
    assert code == 0 and plain["inferred_lengths"] == 0
    code, zeroed = _replay(capsys, str(zero), "--out", str(tmp_path / "zero"))
    assert code == 0
    assert zeroed["inferred_lengths"] == zeroed["messages"] == _MESSAGES
    for kind in ("bbo", "trades"):
        want = pq.read_table(tmp_path / f"plain.{kind}.parquet")
        assert pq.read_table(tmp_path / f"zero.{kind}.parquet").equals(want)


def test_itch_out_with_symbols_cuts_the_day_down_to_them(
    day: tuple[Path, SyntheticMarket], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tickerplant.wire.blocks import iter_messages

    path, market = day
    chosen = market.tickers[:2]
    out = tmp_path / "cut.itch"
    code, summary = _replay(capsys, str(path), "--out", str(tmp_path / "cut"), "--symbols",
                            ",".join(chosen), "--itch-out", str(out))  # fmt: skip
    assert code == 0
    engine = BookEngine()
    engine.process(path.read_bytes())
    locates = {loc for loc, name in engine.symbols().items() if name in chosen}
    want = [m for m in iter_messages(path.read_bytes())
            if int.from_bytes(m[1:3], "big") in locates | {0}]  # fmt: skip
    assert list(iter_messages(out.read_bytes())) == want
    assert summary["itch_out_messages"] == len(want) < _MESSAGES
    # and the cut-down day replays to the same tables for those symbols
    code, _ = _replay(capsys, str(out), "--out", str(tmp_path / "again"))
    assert code == 0
    for kind in ("bbo", "trades"):
        first = pq.read_table(tmp_path / f"cut.{kind}.parquet")
        assert pq.read_table(tmp_path / f"again.{kind}.parquet").equals(first)
