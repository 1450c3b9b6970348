"""The README's replay section: its command runs and each of its DuckDB queries answers."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import duckdb
import pytest

from test_capture import mold_packets, two_lines
from tickerplant.exchange.synthetic import SyntheticMarket
from tickerplant.replay import main_replay
from tickerplant.wire.blocks import iter_messages

README = Path(__file__).parent.parent / "README.md"


def section() -> str:
    text = README.read_text()
    start = text.index("## Replay a day to Parquet")
    return text[start : text.index("\n## ", start + 1)]


# (Not run again with the JIT off: the replay's tables come from the kernels test_book_engine
# checks both ways, and test_replay_cli's tables are not rerun either.)
@pytest.mark.slow
def test_the_readme_replay_and_every_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import gzip

    market = SyntheticMarket(41, 20)
    day = b"".join(market.chunks(40_000))
    monkeypatch.chdir(tmp_path)
    Path("01302019.NASDAQ_ITCH50.gz").write_bytes(gzip.compress(day))
    two_lines(Path("lines.pcapng"), mold_packets(list(iter_messages(day))), {3, 8}, {5})
    text = section()
    aapl, msft = market.tickers[:2]  # the generated day's symbols stand in for the README's
    command = re.search(r"```sh\n(tickerplant replay .*?)\n```", text, re.S)
    assert command is not None
    argv = shlex.split(command.group(1).replace("\\\n", " "))[2:]
    argv = [a.replace("AAPL", aapl).replace("MSFT", msft) for a in argv]
    assert main_replay([*argv, "--no-progress"]) == 0
    assert main_replay(["lines.pcapng", "--out", "out/cap", "--no-progress"]) == 0
    capsys.readouterr()
    queries = re.findall(r'duckdb -c "(.*?)"\n```', text, re.S)
    assert len(queries) == 5
    for query in queries:
        rows = duckdb.sql(query.replace("'AAPL'", f"'{aapl}'")).fetchall()
        assert rows, query
