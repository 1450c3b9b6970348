"""One config vocabulary: TOML into the config dataclasses, errors that name the field and the fix,
defaults read off the dataclasses, and the user's mistakes told apart from our bugs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tickerplant import cli, commands
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.feed.handler import FeedConfig
from tickerplant.ops.config import default, load, load_file
from tickerplant.receive.recovery import RecoveryConfig

PARSERS = {Endpoint: Endpoint.parse}


def test_a_toml_table_becomes_the_dataclasses_with_defaults_kept(tmp_path: Path) -> None:
    file = tmp_path / "plant.toml"
    file.write_text(
        'line_a = "239.1.1.1:30001"\n'
        'line_b = "239.1.1.2:30002"\n'
        'rerequest = "127.0.0.1:30003"\n'
        "rcvbuf = 8388608\n"
        'capture = "day.itch"\n'
        "[recovery]\n"
        "give_up_after = 3\n"  # an integer where seconds are a float
        "replay = false\n"
    )
    cfg = load_file(FeedConfig, file, PARSERS)
    assert cfg.line_a == Endpoint("239.1.1.1", 30001)
    assert cfg.rerequest == Endpoint("127.0.0.1", 30003) and cfg.replay is None
    assert cfg.capture == Path("day.itch") and cfg.rcvbuf == 8 << 20
    assert cfg.recovery == RecoveryConfig(give_up_after=3.0, replay=False)
    assert cfg.heartbeat_interval == default(FeedConfig, "heartbeat_interval")


@pytest.mark.parametrize(
    ("table", "field", "words"),
    [
        ({"line_a": "239.1.1.1:1", "line_b": None, "rcvbuf": 10}, "rcvbuf", "65536"),
        ({"line_a": "239.1.1.1:1", "line_b": None, "rcvbufs": 1}, "rcvbufs", "use one of"),
        ({"line_a": "239.1.1.1", "line_b": None}, "line_a", "host:port"),
        ({"line_a": 5, "line_b": None}, "line_a", "host:port"),
        ({"line_a": "239.1.1.1:1", "line_b": None, "rcvbuf": "big"}, "rcvbuf", "int"),
        ({"line_a": "239.1.1.1:1", "line_b": None, "rcvbuf": True}, "rcvbuf", "int"),
        ({"line_a": "239.1.1.1:1", "line_b": None, "recovery": 1}, "recovery", "table"),
        ({"line_a": "239.1.1.1:1", "line_b": None, "recovery": {"give_up_after": 0.0}},
         "recovery.give_up_after", "above line_wait"),
        ({"line_a": "239.1.1.1:1", "line_b": None, "recovery": {"nope": 1}},
         "recovery.nope", "is not a setting"),
        ({"line_b": None}, "line_a", "is missing"),
    ],
)
def test_a_bad_table_names_the_field_path_and_the_fix(
    table: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(FeedConfig, table, "", PARSERS)
    assert err.value.field == field
    assert words in str(err.value) and str(err.value).startswith(f"{field}: ")


def test_a_file_that_is_not_toml_names_the_line(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text('line_a = "239.1.1.1:1"\nrcvbuf = = 3\n')
    with pytest.raises(ConfigError, match="line 2"):
        load_file(FeedConfig, file, PARSERS)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_file(FeedConfig, tmp_path / "missing.toml", PARSERS)
    file.write_bytes(b'line_a = "239.1.1.1:1"\n# caf\xe9\n')  # Latin-1, as an editor may save
    with pytest.raises(ConfigError, match="is not UTF-8 text: byte 28 is 0xe9; save it as UTF-8"):
        load_file(FeedConfig, file, PARSERS)


def test_command_line_defaults_are_the_dataclasses_defaults() -> None:
    args = cli.build_parser().parse_args(["feed"])
    assert args.rcvbuf == default(FeedConfig, "rcvbuf")
    assert args.give_up_after == default(RecoveryConfig, "give_up_after")
    assert args.line_wait == default(RecoveryConfig, "line_wait")
    with pytest.raises(LookupError):
        default(FeedConfig, "line_a")  # required: no default to read


def test_the_users_mistake_exits_2_with_the_field_and_our_bug_shows_its_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["demo", "--seconds", "0"]) == 2
    assert "tickerplant demo: seconds: " in capsys.readouterr().err
    assert cli.main(["feed", "--rcvbuf", "10", "--seconds", "0.1"]) == 2
    assert "rcvbuf" in capsys.readouterr().err

    def bug(args: object) -> int:
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(commands, "feed", bug)
    with pytest.raises(ValueError, match="invariant"):
        cli.main(["feed"])
