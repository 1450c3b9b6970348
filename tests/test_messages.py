"""Per-type Parquet tables: every field of every message type equals the reference decoder's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from test_itch_file import sample_messages
from tickerplant.capture.messages import dictionary, schema, tables
from tickerplant.replay import main_replay
from tickerplant.wire import itch
from tickerplant.wire.blocks import join_messages


def test_every_field_of_every_type_is_decoded_as_the_reference_decodes_it() -> None:
    msgs = sample_messages(3000, seed=21)  # every type, random field bytes (any byte is valid)
    names = np.array([f"S{i}" for i in range(1 << 16)], dtype=object)
    times = np.arange(len(msgs), dtype=np.int64) * 1000 + 7
    out = tables(join_messages(msgs), dictionary(names), times)
    assert sorted(out) == sorted(itch.LENGTHS)
    for letter, table in out.items():
        assert table.schema == schema(letter, captured=True)
        stamps = table["capture_time"].cast("int64").to_pylist()
        rows = table.drop(["capture_time"]).to_pylist()
        mine = [(i, m) for i, m in enumerate(msgs) if m[:1] == letter.encode()]
        assert len(rows) == len(mine)
        for row, stamp, (i, m) in zip(rows, stamps, mine, strict=True):
            want = itch.decode(m)._asdict()
            if "stock" not in want:
                want["symbol"] = f"S{want['stock_locate']}"
            assert row == want, letter
            assert stamp == times[i]


def test_a_symbol_filter_keeps_those_locates_and_the_market_wide_messages() -> None:
    msgs = sample_messages(2000, seed=22)
    locate = {m: int.from_bytes(m[1:3], "big") for m in msgs}
    keep = np.zeros(1 << 16, dtype=bool)
    wanted = sorted(set(locate.values()))[::3]
    keep[wanted] = True
    keep[0] = False  # locate 0 is kept whatever the mask says
    msgs.append(b"S" + bytes(10) + b"O")  # a system event, locate 0
    names = dictionary(np.full(1 << 16, "", dtype=object))
    out = tables(join_messages(msgs), names, None, keep)
    got = sum(t.num_rows for t in out.values())
    assert got == sum(1 for m in msgs if keep[int.from_bytes(m[1:3], "big")]
                      or m[1:3] == b"\x00\x00")  # fmt: skip


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tickerplant.exchange.synthetic import SyntheticMarket

    path = tmp_path_factory.mktemp("messages") / "day.itch"
    path.write_bytes(b"".join(SyntheticMarket(23, 30).chunks(30_000)))
    return path


def test_replay_writes_one_table_per_type_with_the_days_counts(
    day: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import duckdb

    args = ["--json", "--no-progress", "--chunk-mb", "0.1", "--messages"]
    assert main_replay([str(day), "--out", str(tmp_path / "day"), *args]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["message_rows"] == summary["messages_by_type"]
    files = sorted(p.name for p in (tmp_path / "day.messages").iterdir())
    assert files == [f"{k}.parquet" for k in sorted(summary["messages_by_type"])]
    adds = pq.read_table(tmp_path / "day.messages" / "A.parquet")
    assert adds.num_rows == summary["messages_by_type"]["A"]
    # symbol on executions comes from the directory: the same symbol the order was added under
    where = tmp_path / "day.messages"
    (joined,) = duckdb.sql(
        f"SELECT count(*), count_if(a.stock = e.symbol) FROM '{where}/E.parquet' e "
        f"JOIN '{where}/A.parquet' a USING (order_reference)").fetchall()  # fmt: skip
    assert joined[0] > 0 and joined[0] == joined[1]
