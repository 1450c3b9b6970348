"""Prometheus metrics: every registered figure exported under its name, type and labels, read by
prometheus-client's own parser from a real listener; during the demo, counters move."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness import ports, wait_until
from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.io.web import WebServer
from tickerplant.ops.figures import EXCHANGE, REGISTRY, Kind
from tickerplant.ops.metrics import Snapshot
from tickerplant.receive.feed import FeedSession, FeedSessionConfig

TYPES = {Kind.COUNTER: "counter", Kind.GAUGE: "gauge", Kind.HISTOGRAM: "histogram"}
SIMULATOR = {f.name for f in EXCHANGE} | {"session"}
EXPORTED = {n for n, f in REGISTRY.items() if f.kind is not Kind.INFO} - SIMULATOR | {"session"}


def scrape(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def check_families(families: dict[str, object], names: set[str]) -> None:
    for name in names:
        figure = REGISTRY[name]
        if figure.kind is Kind.INFO:  # the text format has it as a gauge named *_info
            info = families[f"tickerplant_{name}_info"]
            assert [set(s.labels) for s in info.samples] == [{"session"}]  # type: ignore[attr-defined]
            continue
        family = families.get(f"tickerplant_{name}")
        assert family is not None, name
        assert family.type == TYPES[figure.kind], name  # type: ignore[attr-defined]
        for sample in family.samples:  # type: ignore[attr-defined]
            assert set(sample.labels) - {"le"} == set(figure.labels), (name, sample)
            if figure.kind is Kind.COUNTER:
                assert sample.name == f"tickerplant_{name}_total"


def test_a_feed_sessions_figures_are_served_by_name_type_and_label() -> None:
    session = FeedSession(FeedSessionConfig())
    snapshot = Snapshot()
    figures = session.figures()
    figures["repair_latency_seconds"]["line"] = {"count": 2, "sum": 3e-5, "buckets": [
        [1e-5, 1], [2.5e-5, 2], ["+Inf", 2]]}  # fmt: skip
    figures["line_state"] = {"a": "up", "b": "quiet"}
    snapshot.set(figures)
    web = WebServer(Endpoint("127.0.0.1", 0), snapshot)
    try:
        families = scrape(web.url)
        check_families(families, EXPORTED & set(figures))
        states = {s.labels["line"]: s.value for s in families["tickerplant_line_state"].samples}
        assert states == {"a": 2.0, "b": 1.0}
        latency = families["tickerplant_repair_latency_seconds"]
        buckets = {(s.labels["repair"], s.labels["le"]): s.value for s in latency.samples
                   if s.name.endswith("_bucket")}  # fmt: skip
        assert buckets[("line", "1e-05")] == 1 and buckets[("line", "+Inf")] == 2
        assert "process_cpu_seconds" in families  # the process's own, beside ours
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(web.url + "nope", timeout=5)
    finally:
        web.close()


def _value(families: dict[str, Any], name: str) -> float:
    return float(families[name].samples[0].value)


def test_the_listener_is_a_process_of_its_own_serving_the_plants_snapshots_and_figures() -> None:
    from prometheus_client import CollectorRegistry, ProcessCollector

    snapshot = Snapshot()
    session = FeedSession(FeedSessionConfig())
    snapshot.set(session.figures())
    web = WebServer(Endpoint("127.0.0.1", 0), snapshot)
    try:
        assert web.pid != os.getpid()
        # The snapshot it was started with, from the first scrape on: no waiting for it.
        families = scrape(web.url)
        assert _value(families, "tickerplant_delivered_messages") == 0
        ours = CollectorRegistry()
        ProcessCollector(registry=ours)
        start = {m.name: m.samples[0].value for m in ours.collect()}["process_start_time_seconds"]
        # the process figures are the plant's (this process's), not the listener's
        assert _value(families, "process_start_time_seconds") == start
        figures = session.figures()
        figures["delivered_messages"] = 12345
        snapshot.set(figures)
        wait_until(lambda: _value(scrape(web.url), "tickerplant_delivered_messages") == 12345,
                   10, "the listener serving the new snapshot")  # fmt: skip
    finally:
        web.close()
    assert web._process.returncode == 0  # it ended when the pair closed, not killed
    with pytest.raises(OSError):
        scrape(web.url)


def test_the_listener_ends_with_the_plant_however_it_ends() -> None:
    plant = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from tickerplant.endpoint import Endpoint\n"
        "from tickerplant.io.web import WebServer\n"
        "from tickerplant.ops.metrics import Snapshot\n"
        "web = WebServer(Endpoint('127.0.0.1', 0), Snapshot())\n"
        "print(web.pid, web.url, flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert plant.stdout is not None
        pid, url = plant.stdout.readline().split()
        assert "tickerplant_delivered_messages" not in scrape(url)  # serving, no figures yet
        plant.kill()  # SIGKILL: no close, no atexit
        plant.wait()
        wait_until(lambda: _ended(pid), 10, "the listener ending with the plant")
    finally:
        plant.kill()
        plant.wait()


def _ended(pid: str) -> bool:
    """Gone, or a zombie nobody reaps (an orphan's parent here may be a container's init)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" in f.read().lower()
    except FileNotFoundError:
        return True


def test_a_listener_gone_is_logged_and_the_plant_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    snapshot = Snapshot()
    web = WebServer(Endpoint("127.0.0.1", 0), snapshot)
    try:
        web._process.kill()
        web._process.wait()
        with caplog.at_level("WARNING", logger="tickerplant.web"):
            snapshot.set({"delivered_messages": 1})  # from the loop: must not raise
        assert "metrics listener" in caplog.text and "takes no figures" in caplog.text
    finally:
        web.close()


def test_a_listener_that_stops_reading_costs_the_loop_a_skipped_snapshot_never_a_wait() -> None:
    import signal

    snapshot = Snapshot()
    web = WebServer(Endpoint("127.0.0.1", 0), snapshot)
    os.kill(web.pid, signal.SIGSTOP)
    try:
        big = {"lost_ranges": [[i, i + 1] for i in range(2000)]}  # ~20 KB a snapshot
        for _ in range(2000):  # the pair holds a few: a blocking send would wait here for good
            snapshot.set(big)
        assert web.skipped > 0
    finally:
        os.kill(web.pid, signal.SIGCONT)
        web.close()
    assert web._process.returncode == 0


def test_a_port_in_use_is_a_config_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConfigError, match="cannot listen on"):
            WebServer(Endpoint("127.0.0.1", s.getsockname()[1]), Snapshot())


@pytest.mark.slow
def test_the_demo_serves_every_documented_metric_and_its_counters_move() -> None:
    from test_demo import _free_port
    from tickerplant.demo import DemoConfig, run_demo

    p = ports()
    metrics = Endpoint("127.0.0.1", _free_port())
    cfg = DemoConfig(seconds=6, rate=200_000, line_a=p.line_a, line_b=p.line_b,
                     rerequest=p.rerequest, replay=p.replay,
                     itch=Endpoint("127.0.0.1", _free_port()),
                     glimpse=Endpoint("127.0.0.1", _free_port()),
                     events=Endpoint("127.0.0.1", _free_port()), metrics=metrics)  # fmt: skip
    scrapes: list[dict[str, object]] = []
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set() and len(scrapes) < 200:
            try:
                got = scrape(f"http://{metrics}/")
            except OSError:
                got = {}
            delivered = got.get("tickerplant_delivered_messages")
            if delivered is not None and delivered.samples[0].value > 0:  # type: ignore[attr-defined]
                scrapes.append(got)
            time.sleep(0.1)

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        result = asyncio.run(run_demo(cfg))
    finally:
        done.set()
        thread.join()
    assert result["identical"]
    assert len(scrapes) >= 5
    first, last = scrapes[0], scrapes[-1]
    check_families(last, EXPORTED)

    def value(families: dict[str, object], name: str, **labels: str) -> float:
        return sum(s.value for s in families[name].samples  # type: ignore[attr-defined]
                   if s.name == name + "_total" and labels.items() <= s.labels.items())

    for name, labels in [("tickerplant_delivered_messages", {}),
                         ("tickerplant_packets", {"source": "a"}),
                         ("tickerplant_gaps_repaired", {"source": "a"}),
                         ("tickerplant_sent_messages", {"stream": "itch"})]:  # fmt: skip
        assert value(last, name, **labels) > value(first, name, **labels), name


def test_every_grafana_expression_names_a_metric_the_plant_exports() -> None:
    import json
    import re
    from pathlib import Path

    import tickerplant.ops

    path = Path(tickerplant.ops.__file__).parent / "grafana" / "tickerplant.json"
    dashboard = json.loads(path.read_text())
    exported = {f"tickerplant_{n}" + ("_total" if REGISTRY[n].kind is Kind.COUNTER else "")
                for n in EXPORTED} | {"tickerplant_session_info"}  # fmt: skip
    exported |= {f"tickerplant_{n}_{s}" for n in EXPORTED if REGISTRY[n].kind is Kind.HISTOGRAM
                 for s in ("bucket", "sum", "count")}  # fmt: skip
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    assert len(expressions) > 20
    for expr in expressions:
        names = re.findall(r"\btickerplant_[a-z0-9_]+", expr)
        assert names, expr
        for name in names:
            assert name in exported, (name, expr)
        # labels used in the expression are the figure's own
        for name in names:
            figure = REGISTRY[re.sub(r"^tickerplant_|_(total|bucket|sum|count|info)$", "", name)]
            for label in re.findall(r"by \(([^)]*)\)", expr):
                used = {x.strip() for x in label.split(",")} - {"le"}
                assert used <= set(figure.labels), (expr, used)


@pytest.mark.slow
def test_the_exchange_simulator_serves_its_own_figures() -> None:
    import subprocess
    import sys

    from test_demo import _free_port

    p = ports()
    metrics = Endpoint("127.0.0.1", _free_port())
    exchange = subprocess.Popen(
        [sys.executable, "-m", "tickerplant", "exchange", "--line-a", str(p.line_a), "--line-b",
         str(p.line_b), "--no-rerequest", "--no-replay", "--messages", "600000", "--rate",
         "100000", "--drop-a", "0.05", "--metrics", str(metrics), "--eos-seconds", "0.5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    scrapes: list[dict[str, Any]] = []

    def published(families: dict[str, Any]) -> float:
        found = families.get("tickerplant_published_messages")
        return float(found.samples[0].value) if found is not None else 0.0

    def moved() -> bool:
        """Scraped again: kept if more is published than by the last one kept (none: 0)."""
        try:
            got = scrape(f"http://{metrics}/")
        except OSError:
            return False  # not listening yet (the exchange loads its kernels first)
        if published(got) > (published(scrapes[-1]) if scrapes else 0):
            scrapes.append(got)
        return len(scrapes) == 2

    try:
        wait_until(moved, 60, lambda: f"two scrapes of the exchange publishing, {len(scrapes)}"
                   " so far", interval=0.2)  # fmt: skip
    finally:
        exchange.wait(60)
    check_families(scrapes[-1], SIMULATOR)
    first, last = (s["tickerplant_published_messages"].samples[0].value for s in scrapes)
    assert last > first
    samples = scrapes[-1]["tickerplant_line_dropped_packets"].samples
    dropped = {s.labels["line"]: s.value for s in samples}
    assert dropped["a"] > 0 and dropped["b"] == 0  # the loss injected on A only


def test_several_channels_are_each_exported_by_number_not_only_the_worst_few() -> None:
    """A plant of 7 channels (not started): its channels' own series, labelled by channel,
    for every one of them (the worst five are the table's and the dashboard's)."""
    from harness import unheard_plant_figures
    from tickerplant.ops.metrics import family

    now = unheard_plant_figures(7, "239.192.98.1")
    assert len(now["channels"]) == 5
    numbers = [str(n) for n in range(1, 8)]
    for name in ("channel_delivered_messages", "channel_lost_messages", "channel_open_gaps"):
        metric = family(REGISTRY[name], now[name])
        assert metric is not None
        assert sorted(s.labels["channel"] for s in metric.samples) == sorted(numbers), name
    states = family(REGISTRY["channel_line_state"], now["channel_line_state"])
    assert states is not None
    assert {(s.labels["channel"], s.labels["line"]) for s in states.samples} == {
        (n, "a") for n in numbers}


def test_a_line_whose_channels_disagree_is_exported_as_its_worst_state() -> None:
    from tickerplant.ops.metrics import family

    metric = family(REGISTRY["line_state"], {"a": "down,up", "b": "quiet,up"})
    assert metric is not None
    assert {s.labels["line"]: s.value for s in metric.samples} == {"a": 0.0, "b": 1.0}
