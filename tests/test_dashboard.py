"""The live table as a terminal shows it: the demo's screens at 80 and 120 columns, nothing cut
short, and log lines kept from scrolling it away.

The figures are a real demo's (``data/demo_screen.json``): two consecutive snapshots at its
busiest, the last two, and its verdict. ``python tests/test_dashboard.py`` records them again
(after a figure is renamed, say); it runs the demo for a few seconds.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tickerplant.ops import logs
from tickerplant.ops.dashboard import LiveTable, render
from tickerplant.ops.figures import Figures
from tickerplant.verdict import print_summary

DATA = Path(__file__).parent / "data" / "demo_screen.json"

# What a reader looks for on the screen, each of which must come out whole on one line.
HEADINGS = [
    "line A", "line B", "re-request", "replay", "state", "packets/s", "msgs/s", "gaps seen",
    "repaired by other line", "repaired by re-request", "repaired by replay", "lost", "defects",
    "rcvbuf", "repair latency p50/p99:", "busiest", "bid size", "ask size", "BBO updates",
    "itch stream:", "events stream:",
]  # fmt: skip


# logs.setup configures the process: put back after each test (the fixture is conftest's).
pytestmark = pytest.mark.usefixtures("restore_logging")


def recorded() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text())
    return data


def screen(width: int) -> str:
    """The busiest screen, the final one and the verdict, as a terminal ``width`` wide shows
    them."""
    data = recorded()
    console = Console(record=True, width=width, file=io.StringIO(), force_terminal=False)
    for name in ("busiest", "final"):
        shot = data[name]
        console.print(render(shot["now"], shot["before"], shot["dt"], shot["title"]))
    print_summary(data["result"], console)
    return console.export_text()


def figures_shown(now: Figures) -> list[str]:
    """Figures the screen must show in full, as it writes them."""
    out = [f"{now['delivered_messages']:,}", f"{now['next_sequence']:,}", now["session"]]
    out += [f"{n:,}" for n in now["gaps_seen"].values()]
    out += [f"{n:,}" for n in now["stream_messages"].values()]
    for q in now["busiest"]:
        out += [q["symbol"], f"{q['bid']:.4f}", f"{q['ask']:.4f}", f"{q['bbo_updates']:,}"]
    return out


@pytest.mark.parametrize("width", [80, 120])
def test_the_demo_screen_reads_whole_at(width: int) -> None:
    text = screen(width)
    lines = text.splitlines()
    assert "…" not in text  # rich's mark of a cell or a heading cut short
    assert max(len(line) for line in lines) <= width
    for heading in HEADINGS:
        assert any(heading in line for line in lines), heading
    # each figure whole on one line, not broken by a wrap
    for name in ("busiest", "final"):
        for figure in figures_shown(recorded()[name]["now"]):
            assert any(figure in line for line in lines), (name, figure)
    # a phrase and its number stay together
    for phrase in ("outstanding 0", "open gaps 0", "duplicates delivered 0", "anomalies 0",
                   "conflated staleness p99 101 ms"):
        assert any(phrase in line for line in lines), phrase
    # the verdict's staleness (the conflated client's own), its three figures on one line
    assert any("staleness p50" in line and "p99" in line for line in lines)


def test_the_screen_fits_a_terminal_50_lines_high_at_80_columns() -> None:
    """The live part only (the verdict comes after it): taller, rich would cut its bottom off."""
    shot = recorded()["busiest"]
    console = Console(record=True, width=80, file=io.StringIO())
    console.print(render(shot["now"], shot["before"], shot["dt"], shot["title"]))
    assert len(console.export_text().splitlines()) <= 40  # room left for a few log lines


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_go_above_the_live_table_and_come_back_after() -> None:
    stderr = Terminal()
    handler = logs.setup(stream=stderr)
    screen_out = Terminal()
    console = Console(file=screen_out, force_terminal=True, width=80)
    shot = recorded()["final"]
    log = logging.getLogger("tickerplant.test")
    with LiveTable(console, 0.0) as table:
        table.show(shot["now"], 0.5, "tickerplant demo")
        log.warning("line a: up -> quiet")
        assert "line a: up -> quiet" not in stderr.getvalue()
        table.show(shot["now"], 1.0, "tickerplant demo")
    out = screen_out.getvalue()
    # printed through the console, before the table drawn again under it
    assert "line a: up -> quiet" in out
    assert out.rindex("line a: up -> quiet") < out.rindex("tickerplant demo")
    assert handler.stream is stderr
    log.warning("after the table")
    assert "after the table" in stderr.getvalue()


def test_a_log_to_a_file_stays_in_the_file_while_the_table_is_shown() -> None:
    stderr = io.StringIO()  # not a terminal
    logs.setup(stream=stderr)
    console = Console(file=Terminal(), force_terminal=True, width=80)
    with LiveTable(console, 0.0):
        logging.getLogger("tickerplant.test").warning("to the file")
    assert "to the file" in stderr.getvalue()


def test_off_a_terminal_the_last_frame_ends_its_line() -> None:
    """Rich prints its one frame off a terminal with no newline: what follows would run on."""
    out = io.StringIO()
    with LiveTable(Console(file=out, width=80), 0.0) as table:
        table.show(recorded()["final"]["now"], 0.5, "tickerplant demo")
    assert out.getvalue().endswith("\n") and "tickerplant demo" in out.getvalue()


def test_the_demos_staged_misbehaviour_is_kept_off_the_terminal_but_not_the_dashboard() -> None:
    stderr = io.StringIO()
    logs.setup(stream=stderr)
    logs.planned(["stall"])
    ring: deque[dict[str, Any]] = deque()
    root = logging.getLogger("tickerplant")
    root.addHandler(logs.EventRing(ring))
    log = logging.getLogger("tickerplant.io.soupbin")
    for client, user in (("127.0.0.1:5000", "stall"), ("127.0.0.1:6000", "")):
        cut = logs.fields(event="slow_consumer_cut", client=client, user=user)
        log.warning("client %s cut: %s", client, "slow consumer", extra=cut)
    # the demo's own client: on the dashboard only; a client of anyone else's: on both
    assert "5000" not in stderr.getvalue()
    assert "127.0.0.1:6000 cut" in stderr.getvalue()
    assert [e["client"] for e in ring] == ["127.0.0.1:5000", "127.0.0.1:6000"]
    # at debug level, every line is written
    root.setLevel(logging.DEBUG)
    log.info("subscriber %s closed", "127.0.0.1:5000", extra=logs.fields(user="stall"))
    assert "127.0.0.1:5000 closed" in stderr.getvalue()


def _record() -> None:
    """Run the demo (at its default rate, a few seconds) and keep the figures the table was
    shown: the pair with the most messages a second, the last pair, and the verdict."""
    import asyncio
    import itertools

    import tickerplant.demo as demo
    from tickerplant.warm import config

    shown: list[tuple[Figures, float, str]] = []

    class Recording(LiveTable):
        def show(self, figures: Figures, now: float, title: str = "") -> None:
            shown.append((json.loads(json.dumps(figures)), now, title))
            super().show(figures, now, title)

    demo.LiveTable = Recording  # type: ignore[misc]
    cfg = dataclasses.replace(config(), seconds=4.0, rate=demo.DemoConfig().rate)
    result = asyncio.run(demo.run_demo(cfg, Console(file=io.StringIO())))
    Shown = tuple[Figures, float, str]
    pairs = list(itertools.pairwise(shown))

    def shot(pair: tuple[Shown, Shown]) -> dict[str, Any]:
        (before, then, _), (now, at, title) = pair
        return {"before": before, "now": now, "dt": at - then, "title": title}

    def delivered(pair: tuple[Shown, Shown]) -> int:
        return int(pair[1][0]["delivered_messages"] - pair[0][0]["delivered_messages"])

    busiest = max(pairs, key=delivered)
    DATA.parent.mkdir(exist_ok=True)
    DATA.write_text(json.dumps({"busiest": shot(busiest), "final": shot(pairs[-1]),
                                "result": result}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    _record()


def test_several_channels_show_their_worst_and_lines_in_mixed_states() -> None:
    """A plant of 3 channels (not started: nothing heard): the screen names the worst channels
    and the unheard count, and a line whose channels disagree (down on one, up on another)
    shows both, styled as the worse."""
    from harness import unheard_plant_figures

    now = unheard_plant_figures(3, "239.192.99.1")
    now["line_state"]["a"] = "down,up"
    console = Console(record=True, width=100, force_terminal=False)
    console.print(render(now, None, 0.0))
    text = console.export_text()
    assert "down,up" in text
    assert "channels, worst first (3 unheard):" in text and "1 (unheard)" in text
    assert "next " not in text  # each channel has its own numbers: added up they mean nothing
