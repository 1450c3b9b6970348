"""Stopping, and what a shell user meets: SIGTERM or a first Ctrl-C ends ``run``, ``feed``,
``exchange`` and ``demo`` within 2 s, exit status 0, their journals written and their metrics
listener gone (a restarted plant serves the same numbers); a second Ctrl-C ends at once; a
reader that closes our output early ends any printing command quietly; a port in use is a
config error naming the address and the setting.

The 2 s are counted from the signal, sent once the process is demonstrably running (it has
published, delivered or served something): a first start on a cold numba cache compiles kernels
for ~20 s, which is no part of stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Collected, Ports, ports, source_stream, until, wait_until
from test_demo import _free_port
from test_metrics import _ended, scrape
from test_plant import _collect
from tickerplant.capture.itch_file import ItchWriter
from tickerplant.distribute.fanout import FanOut
from tickerplant.distribute.journal import Journal
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.exchange.synthetic import SyntheticMarket
from tickerplant.io.soupbin import SoupServer
from tickerplant.wire.blocks import iter_messages

STOP_WITHIN = 2.0  # seconds from the signal to the exit
AT_ONCE = 0.5  # seconds from a second Ctrl-C to the exit
# Seconds a process may take to show it runs: a cold cache compiles for ~20 s on two cores,
# longer with the exchange compiling beside it on a busy machine.
RUNNING = 120.0
QUIET = 128 + signal.SIGPIPE  # the status of a command whose reader went, as `yes | head`'s
SIGNALS = pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                                  ids=["SIGTERM", "ctrl-c"])  # fmt: skip


def _tickerplant(*args: str) -> list[str]:
    return [sys.executable, "-m", "tickerplant", *args]


# `tickerplant demo` has no options for its ports, and the default ones may be another demo's
# (`make run` beside the tests): the command as the user runs it (main() of the process, its
# signals, its exit), its endpoints' defaults moved first. DemoConfig reads them when
# tickerplant.demo is imported, which the command does after this.
_DEMO = """\
import sys
from tickerplant import endpoint
for name, text in zip(("LINE_A", "LINE_B", "REREQUEST", "REPLAY", "ITCH", "GLIMPSE", "EVENTS"),
                      sys.argv[1:8]):
    setattr(endpoint, name, endpoint.Endpoint.parse(text, name))
sys.argv = ["tickerplant", "demo", *sys.argv[8:]]
from tickerplant.cli import main
main()
"""


def _demo(*args: str) -> list[str]:
    p = ports()
    mine = [str(Endpoint("127.0.0.1", _free_port())) for _ in range(3)]
    return [sys.executable, "-c", _DEMO, str(p.line_a), str(p.line_b), str(p.rerequest),
            str(p.replay), *mine, *args]  # fmt: skip


def _exchange(*args: str) -> list[str]:
    """``tickerplant exchange --json`` on ports of this test's own, publishing ``args``."""
    p = ports()
    return ExchangeProcess(p.line_a, p.line_b, p.rerequest, p.replay, *args).command


@contextlib.contextmanager
def _running(command: list[str], out: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``command`` started, its stdout in ``out``.stdout and stderr in ``out``.stderr; killed if
    the test leaves it running."""
    with out.with_suffix(".stdout").open("wb") as stdout, \
            out.with_suffix(".stderr").open("wb") as stderr:  # fmt: skip
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _text(out: Path, suffix: str) -> str:
    return out.with_suffix(suffix).read_text(errors="replace")


def _counted(metrics: Endpoint, family: str) -> float:
    """The sum of a counter family's samples on ``metrics`` (0: none served yet)."""
    try:
        families = scrape(f"http://{metrics}/")
    except OSError:
        return 0.0
    found = families.get(family)
    samples = found.samples if found is not None else []
    return float(sum(s.value for s in samples if s.name == f"{family}_total"))


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


def _listener(pid: int) -> int:
    """The metrics listener process ``pid`` started (io/web.py)."""
    for child in _children(pid):
        with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as f:
            if b"tickerplant.io.web" in f.read():
                return child
    raise AssertionError(f"process {pid} runs no metrics listener")


def _stop(proc: subprocess.Popen[bytes], sig: int, out: Path) -> float:
    """Signal ``proc``; the seconds until it exited."""
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running 30 s after {signal.Signals(sig).name}:"
                             f" {_text(out, '.stderr')[-2000:]}") from None  # fmt: skip
    return time.monotonic() - sent


def _stopped_as_asked(proc: subprocess.Popen[bytes], sig: int, out: Path) -> None:
    """``proc`` stops within STOP_WITHIN of ``sig``, exit status 0, no child left."""
    children = _children(proc.pid)
    listener = _listener(proc.pid)
    took = _stop(proc, sig, out)
    name = signal.Signals(sig).name
    assert proc.returncode == 0, f"exit status {proc.returncode} on {name}: " \
        f"{_text(out, '.stderr')[-2000:]}"  # fmt: skip
    assert took < STOP_WITHIN, f"{took:.2f} s to stop on {name}"
    assert _ended(str(listener)), "the metrics listener outlived its process"
    assert all(_ended(str(child)) for child in children), "a child outlived its process"
    assert f"stopping on {name}" in _text(out, ".stderr")


@pytest.mark.slow
def test_run_stopped_by_sigterm_under_load_writes_its_journal_and_a_restart_resumes_every_message_once(  # noqa: E501
    tmp_path: Path,
) -> None:
    messages = 600_000
    p = ports()
    itch = Endpoint("127.0.0.1", _free_port())
    metrics = Endpoint("127.0.0.1", _free_port())
    config = tmp_path / "plant.toml"
    config.write_text(
        f'[feed]\nline_a = "{p.line_a}"\nline_b = "{p.line_b}"\n'
        f'rerequest = "{p.rerequest}"\nreplay = "{p.replay}"\n'
        f'[itch]\nlisten = "{itch}"\njournal_dir = "{tmp_path}"\n'
        f'[events]\nlisten = "127.0.0.1:{_free_port()}"\njournal_dir = "{tmp_path}"\n'
        f'[glimpse]\nlisten = "127.0.0.1:{_free_port()}"\n[metrics]\nlisten = "{metrics}"\n'
    )
    client = Collected()
    journal = tmp_path / "TP00000001.journal"

    async def stop(plant: asyncio.subprocess.Process, out: Path) -> float:
        sent = time.monotonic()
        plant.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(plant.wait(), 30)
        except TimeoutError:
            raise AssertionError(f"still running 30 s after SIGTERM:"
                                 f" {_text(out, '.stderr')[-2000:]}") from None  # fmt: skip
        return time.monotonic() - sent

    async def main() -> None:
        out = tmp_path / "first"
        with out.with_suffix(".stderr").open("wb") as err:
            first = await asyncio.create_subprocess_exec(
                *_tickerplant("run", str(config)), stdout=asyncio.subprocess.DEVNULL, stderr=err)
        reader = asyncio.ensure_future(_collect(itch, client))
        second: asyncio.subprocess.Process | None = None
        try:
            # The session lasts on in its end (30 s), so that the plant started again hears it
            # however long it takes to start: it catches up by replay from its journal's end.
            async with ExchangeProcess(
                p.line_a, p.line_b, p.rerequest, p.replay, "--messages", str(messages),
                "--seed", "9", "--rate", "150000", "--eos-seconds", "30",
            ):  # fmt: skip
                # Under load: the exchange publishing, the client reading the stream live.
                await until(lambda: len(client.messages) >= messages // 4, RUNNING,
                            lambda: f"the client read {len(client.messages)} messages")
                listener = _listener(first.pid)
                took = await stop(first, out)
                served = len(client.messages)
                assert first.returncode == 0, _text(out, ".stderr")[-2000:]
                assert took < STOP_WITHIN, f"{took:.2f} s to stop on SIGTERM"
                assert _ended(str(listener)), "the metrics listener outlived the plant"
                # What it served, it had written: the file holds at least that, whole.
                written = journal.read_bytes()
                assert source.startswith(written)
                assert len(list(iter_messages(written))) >= served > 0
                out = tmp_path / "second"
                with out.with_suffix(".stderr").open("wb") as err:
                    second = await asyncio.create_subprocess_exec(
                        *_tickerplant("run", str(config)), stdout=asyncio.subprocess.DEVNULL,
                        stderr=err)  # fmt: skip
                await asyncio.wait_for(reader, RUNNING)  # to the End of Session
            await stop(second, out)
        finally:
            reader.cancel()
            for plant in (first, second):
                if plant is not None and plant.returncode is None:
                    plant.kill()
                    await plant.wait()

    source = source_stream(9, 500, messages)
    asyncio.run(main())
    assert client.messages == list(iter_messages(source)) and client.lost == []
    assert client.reconnects >= 1  # it saw the plant go and resumed by number
    assert journal.read_bytes() == source  # the day, once


@pytest.mark.slow
@SIGNALS
def test_the_exchange_stops_within_2_s(tmp_path: Path, sig: int) -> None:
    metrics = Endpoint("127.0.0.1", _free_port())
    out = tmp_path / "exchange"
    command = _exchange("--messages", "50000000", "--rate", "200000", "--metrics", str(metrics))
    with _running(command, out) as exchange:
        wait_until(lambda: _counted(metrics, "tickerplant_published_messages"), RUNNING,
                   "the exchange published nothing")  # fmt: skip
        _stopped_as_asked(exchange, sig, out)
    summary = json.loads(_text(out, ".stdout"))
    assert summary["ended"] and summary["end_of_session_packets"] == 2  # told, then told again


@pytest.mark.slow
@SIGNALS
def test_the_feed_stops_within_2_s(tmp_path: Path, sig: int) -> None:
    p = ports()
    metrics = Endpoint("127.0.0.1", _free_port())
    out = tmp_path / "feed"
    publishing = ExchangeProcess(p.line_a, p.line_b, p.rerequest, p.replay,
                                 "--messages", "50000000", "--rate", "200000").command
    with _running(publishing, tmp_path / "exchange"), _running(_tickerplant(
        "feed", "--line-a", str(p.line_a), "--line-b", str(p.line_b), "--rerequest",
        str(p.rerequest), "--replay", str(p.replay), "--json", "--metrics", str(metrics),
    ), out) as feed:  # fmt: skip
        wait_until(lambda: _counted(metrics, "tickerplant_delivered_messages"), RUNNING,
                   "the feed delivered nothing")  # fmt: skip
        _stopped_as_asked(feed, sig, out)
    assert json.loads(_text(out, ".stdout"))["delivered_messages"] > 0


@pytest.mark.slow
@SIGNALS
def test_the_demo_stops_within_2_s_and_gives_its_verdict_on_what_it_had(
    tmp_path: Path, sig: int
) -> None:
    metrics = Endpoint("127.0.0.1", _free_port())
    out = tmp_path / "demo"
    with _running(_demo("--json", "--seconds", "60", "--metrics", str(metrics)), out) as demo:
        wait_until(lambda: _counted(metrics, "tickerplant_delivered_messages"), RUNNING,
                   "the demo's plant delivered nothing")  # fmt: skip
        _stopped_as_asked(demo, sig, out)  # its exchange too
    result = json.loads(_text(out, ".stdout"))
    assert result["stopped"] is True
    # The exchange's summary is in (its session ended at once), and 60 s were not published.
    assert result["published"] is not None, "the exchange's summary was not in by STOP_WAIT"
    assert 0 < result["published"] < 60 * 300_000


@pytest.mark.slow
def test_a_second_ctrl_c_ends_the_demo_at_once(tmp_path: Path) -> None:
    metrics = Endpoint("127.0.0.1", _free_port())
    out = tmp_path / "demo"
    with _running(_demo("--json", "--seconds", "60", "--metrics", str(metrics)), out) as demo:
        wait_until(lambda: _counted(metrics, "tickerplant_delivered_messages"), RUNNING,
                   "the demo's plant delivered nothing")  # fmt: skip
        children = _children(demo.pid)
        try:
            demo.send_signal(signal.SIGINT)
            wait_until(lambda: "stopping on SIGINT" in _text(out, ".stderr"), STOP_WITHIN,
                       "the demo did not take the first Ctrl-C")  # fmt: skip
            took = _stop(demo, signal.SIGINT, out)
            assert demo.returncode == -signal.SIGINT, _text(out, ".stderr")[-2000:]
            assert took < AT_ONCE, f"{took:.2f} s to end on a second Ctrl-C"
            # Its children end on their own: the listener when its pair closes, the exchange
            # at its stopped session's end (or at its next line to a closed pipe).
            wait_until(lambda: all(_ended(str(c)) for c in children), 10,
                       "a child of the demo outlived it")  # fmt: skip
        finally:
            for child in children:
                if not _ended(str(child)):
                    os.kill(child, signal.SIGKILL)


def _closed_early(command: list[str], stderr_too: bool = False) -> tuple[int, str]:
    """``command`` with its stdout a pipe whose reader has gone before the first line (``|
    true``), and with ``stderr_too`` its stderr the same pipe; its exit status and stderr."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        proc = subprocess.Popen(command, stdout=writer, stdin=subprocess.DEVNULL,
                                stderr=writer if stderr_too else subprocess.PIPE)  # fmt: skip
    finally:
        os.close(writer)
    try:
        _, err = proc.communicate(timeout=RUNNING)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, (err or b"").decode(errors="replace")


def _quiet(status: int, stderr: str) -> None:
    assert "Traceback" not in stderr and "Error" not in stderr, stderr[-2000:]
    assert status == QUIET, f"exit status {status}: {stderr[-2000:]}"


def test_the_example_config_into_a_closed_pipe_ends_quietly() -> None:
    _quiet(*_closed_early(_tickerplant("run", "--example-config")))


def test_a_replay_summary_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    day = tmp_path / "day.itch"
    with ItchWriter(day) as writer:
        for chunk in SyntheticMarket(3, 10).chunks(5_000):
            writer.write_blocks(chunk)
    _quiet(*_closed_early(_tickerplant("replay", str(day), "--json", "--no-progress")))


def _plant_config(tmp_path: Path, p: Ports) -> Path:
    """A plant's config for the exchange at ``p``, on free ports."""
    config = tmp_path / "plant.toml"
    config.write_text(
        f'[feed]\nline_a = "{p.line_a}"\nline_b = "{p.line_b}"\nrerequest = "{p.rerequest}"\n'
        f'replay = "{p.replay}"\n[itch]\nlisten = "127.0.0.1:{_free_port()}"\n'
        f'[events]\nlisten = "127.0.0.1:{_free_port()}"\n'
        f'[glimpse]\nlisten = "127.0.0.1:{_free_port()}"\n'
    )
    return config


def test_the_plant_keeps_what_starting_made_out_of_the_collectors_sight(tmp_path: Path) -> None:
    """A full collection looks only at what serving made: one over everything took 45 ms."""
    run = subprocess.run(
        _tickerplant("run", str(_plant_config(tmp_path, ports())), "--json", "--seconds", "0.3"),
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    figures = json.loads(run.stdout)
    assert figures["gc_frozen_objects"] > 10_000, figures["gc_frozen_objects"]
    assert sorted(figures["gc_collections"]) == ["0", "1", "2"]


@pytest.mark.slow
def test_the_services_final_figures_into_a_closed_pipe_end_quietly(tmp_path: Path) -> None:
    p = ports()
    config = _plant_config(tmp_path, p)
    _quiet(*_closed_early(_tickerplant("run", str(config), "--json", "--seconds", "0.3")))
    _quiet(*_closed_early(_tickerplant(
        "feed", "--line-a", str(p.line_a), "--no-line-b", "--no-rerequest", "--no-replay",
        "--json", "--seconds", "0.3")))  # fmt: skip
    exchange = _exchange("--messages", "5000", "--symbols", "10", "--eos-seconds", "0")
    _quiet(*_closed_early(exchange))
    # Its progress lines on stderr, to the same closed pipe (`2>&1 | true`): as quiet.
    status, _ = _closed_early(exchange, stderr_too=True)
    assert status == QUIET


@pytest.mark.slow
def test_a_stopped_demos_verdict_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    metrics = Endpoint("127.0.0.1", _free_port())
    reader, writer = os.pipe()
    os.close(reader)
    err = tmp_path / "demo.stderr"
    with err.open("wb") as stderr:
        try:
            demo = subprocess.Popen(_demo("--json", "--seconds", "60", "--metrics", str(metrics)),
                                    stdout=writer, stderr=stderr)  # fmt: skip
        finally:
            os.close(writer)
    try:
        wait_until(lambda: _counted(metrics, "tickerplant_delivered_messages"), RUNNING,
                   "the demo's plant delivered nothing")  # fmt: skip
        demo.send_signal(signal.SIGTERM)
        demo.wait(30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    _quiet(demo.returncode, err.read_text(errors="replace"))


@pytest.mark.slow
def test_subscribe_json_read_by_head_ends_quietly(tmp_path: Path) -> None:
    """`tickerplant subscribe --json | head -3` in a shell, on a day's worth of lines."""
    journal = Journal(b"PIPES00001")
    journal.append(source_stream(5, 20, 20_000))
    err = tmp_path / "subscribe.stderr"

    async def main() -> tuple[bytes, int]:
        server = SoupServer(FanOut(journal), "127.0.0.1", 0)
        await server.start()
        server.end_session()
        command = shlex.join(_tickerplant("subscribe", f"127.0.0.1:{server.port}", "--json"))
        try:
            shell = await asyncio.create_subprocess_exec(
                "bash", "-c", f"{command} 2>{err} | head -3; exit ${{PIPESTATUS[0]}}",
                stdout=asyncio.subprocess.PIPE)  # fmt: skip
            out, _ = await asyncio.wait_for(shell.communicate(), RUNNING)
        finally:
            await server.close()
        assert shell.returncode is not None
        return out, shell.returncode

    out, status = asyncio.run(main())
    assert len(out.splitlines()) == 3 and json.loads(out.splitlines()[0])["sequence"] == 1
    _quiet(status, err.read_text(errors="replace"))


@pytest.mark.parametrize("setting", ["itch", "events", "glimpse", "metrics"])
def test_a_port_in_use_names_the_address_and_the_setting_and_exits_2(
    tmp_path: Path, setting: str
) -> None:
    p = ports()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = Endpoint("127.0.0.1", held.getsockname()[1])
        listen = {name: taken if name == setting else Endpoint("127.0.0.1", _free_port())
                  for name in ("itch", "events", "glimpse", "metrics")}  # fmt: skip
        config = tmp_path / "plant.toml"
        config.write_text(
            f'[feed]\nline_a = "{p.line_a}"\nline_b = "{p.line_b}"\n'
            + "".join(f'[{name}]\nlisten = "{where}"\n' for name, where in listen.items())
        )
        run = subprocess.run(_tickerplant("run", str(config), "--seconds", "30"),
                             capture_output=True, timeout=RUNNING)  # fmt: skip
    err = run.stderr.decode(errors="replace")
    assert run.returncode == 2, err[-2000:]
    assert f"tickerplant run: {setting}.listen: cannot listen on {taken}: Address already in use;" \
        " give a free host:port" in err, err[-2000:]  # fmt: skip
    assert "Traceback" not in err
