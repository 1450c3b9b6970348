"""The browser dashboard in a real Chromium (Debian's, driven by Playwright), while the demo runs:
live numbers, line A's gaps repaired, a line cut by nftables turning quiet on the page within 3
heartbeat intervals, a gap lost when both lines are cut with no other repair; no console errors.
Screenshots go to ``artifacts/`` (or $TICKERPLANT_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from harness import ports
from tickerplant.endpoint import Endpoint
from tickerplant.wire.moldudp64 import HEARTBEAT_INTERVAL

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(os.environ.get("TICKERPLANT_ARTIFACTS",
                                Path(__file__).parent.parent / "artifacts"))


def _missing() -> str | None:
    if CHROMIUM is None:
        return "chromium is not installed (apt-get install chromium; .ci/run does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (the dev extras have it)"
    if os.geteuid() != 0 or shutil.which("nft") is None:
        return "cutting a line needs root and nftables (CI has both)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing() is not None, reason=str(_missing()))]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def demo(**options: Any) -> Iterator[tuple[Endpoint, Any, dict[str, Any]]]:
    """The demo on a thread of its own, with its ports; yields (metrics, config, result)."""
    from tickerplant.demo import DemoConfig, run_demo

    p = ports(group_base="239.192.82")
    cfg = DemoConfig(line_a=p.line_a, line_b=p.line_b, rerequest=p.rerequest, replay=p.replay,
                     itch=Endpoint("127.0.0.1", _free_port()),
                     glimpse=Endpoint("127.0.0.1", _free_port()),
                     events=Endpoint("127.0.0.1", _free_port()),
                     metrics=Endpoint("127.0.0.1", _free_port()), **options)  # fmt: skip
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(asyncio.run(run_demo(cfg))))
    thread.start()
    try:
        yield cfg.metrics, cfg, result
    finally:
        thread.join(120)


@contextmanager
def cut(*ports_cut: int) -> Iterator[None]:
    """Drop every UDP datagram to these ports as it arrives (the receiving side's input hook)."""
    table = f"tp_browser_{os.getpid()}"
    ports_text = ", ".join(str(p) for p in ports_cut)
    script = (f"add table inet {table}\n"
              f"add chain inet {table} input {{ type filter hook input priority -300; }}\n"
              f"add rule inet {table} input udp dport {{ {ports_text} }} drop\n")  # fmt: skip
    subprocess.run(["nft", "-f", "-"], input=script.encode(), check=True, timeout=10)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=True, timeout=10)


@contextmanager
def page(url: str) -> Iterator[tuple[Any, list[str]]]:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1280, "height": 1100})
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        deadline = time.monotonic() + 60  # the demo compiles its kernels first
        while True:
            try:
                tab.goto(url, timeout=5000)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        try:
            yield tab, errors
        finally:
            browser.close()


def number(tab: Any, selector: str) -> int:
    text = tab.inner_text(selector).replace(",", "")
    return int(text) if text.lstrip("-").isdigit() else 0


def test_the_dashboard_shows_the_lines_live_and_a_cut_line_going_quiet() -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with demo(seconds=25, rate=100_000) as (metrics, cfg, result), \
            page(f"http://{metrics}/") as (tab, errors):  # fmt: skip
        tab.wait_for_function("() => Number(document.getElementById('delivered').textContent"
                              ".replace(/,/g, '')) > 0", timeout=60_000)  # fmt: skip
        a_repaired = "#source-a td[data-col='5']"  # line A's gaps filled by the other line
        tab.wait_for_function(f"() => Number(document.querySelector(\"{a_repaired}\")"
                              ".textContent.replace(/,/g, '')) > 0", timeout=20_000)  # fmt: skip
        state_b = "#source-b td[data-col='1']"
        assert tab.inner_text(state_b) == "up"
        a_rate = "#source-a td[data-col='3']"  # msgs/s: from the second snapshot on
        tab.wait_for_function(f"() => Number(document.querySelector(\"{a_rate}\")"
                              ".textContent.replace(/,/g, '')) > 0", timeout=10_000)  # fmt: skip
        with cut(cfg.line_b.port):
            cut_at = time.monotonic()
            tab.wait_for_function(f"() => ['quiet', 'down'].includes(document.querySelector("
                                  f"\"{state_b}\").textContent)",
                                  timeout=int(6 * HEARTBEAT_INTERVAL * 1000))  # fmt: skip
            took = time.monotonic() - cut_at
            tab.screenshot(path=str(ARTIFACTS / "dashboard-line-b-cut.png"), full_page=True)
        assert took <= 3 * HEARTBEAT_INTERVAL, took
        tab.wait_for_selector("#event-log li[data-event='line_state']", state="attached")
        # the demo's client that never reads, cut: in the event log with its address and why
        cut_line = tab.wait_for_selector("#event-log li[data-event='slow_consumer_cut']",
                                         state="attached", timeout=30_000)  # fmt: skip
        assert "127.0.0.1:" in cut_line.inner_text()
    assert not errors, errors
    assert result["published"] == result["delivered"]  # re-requests repaired what B did not


def test_the_dashboard_shows_a_gap_lost_when_both_lines_are_cut_and_nothing_else_repairs() -> None:
    """Two channels (each line's port is both channels'): the channels' rows, worst first,
    each losing what the cut took."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with demo(seconds=15, rate=100_000, recovery=False, channels=2) as (metrics, cfg, result), \
            page(f"http://{metrics}/") as (tab, errors):  # fmt: skip
        tab.wait_for_function("() => Number(document.getElementById('delivered').textContent"
                              ".replace(/,/g, '')) > 0", timeout=60_000)  # fmt: skip
        assert tab.inner_text("#lost-ranges") == "none"
        tab.wait_for_selector("#channel-2", state="visible", timeout=10_000)
        with cut(cfg.line_a.port, cfg.line_b.port):
            time.sleep(1.0)
        tab.wait_for_function("() => document.getElementById('lost-ranges').textContent"
                              ".startsWith('[')", timeout=15_000)  # fmt: skip
        tab.wait_for_selector("#event-log li[data-event='gap_lost']", state="attached")
        assert number(tab, "#lost-messages") > 0
        for n in (1, 2):  # lost: the fourth column
            tab.wait_for_function(f"() => Number(document.querySelector(\"#channel-{n} "
                                  f"td[data-col='3']\").textContent.replace(/,/g, '')) > 0",
                                  timeout=15_000)  # fmt: skip
        assert tab.inner_text("#channels-unheard") == "0"
        tab.screenshot(path=str(ARTIFACTS / "dashboard-gap-lost.png"), full_page=True)
    assert not errors, errors
    assert result["delivered"] < result["published"]
