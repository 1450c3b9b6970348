"""Tier-2 between real hosts: an exchange host, a plant host and three edge hosts on one segment
(network namespaces on a Linux bridge, ``netns.bridged``), each a process of its own.

Edge 1 loses 5 % of its tier-2 datagrams, edge 2 has tier-2 line A cut (nftables, at each edge's
prerouting), edge 3 is killed and started again mid-run. A client on every edge reads the
``events`` stream from 1 to its End of Session, one of them moving from edge 1 to edge 2 on the
way: each gets exactly the plant's events journal, as the plant wrote it to its file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import ports
from netns import Host, bridged
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.ops import passwords
from tickerplant.wire import events as ev

pytestmark = [pytest.mark.netns, pytest.mark.slow]

MESSAGES = 300_000
RATE = 100_000
RUN_SECONDS = 90.0  # the plant and the edges stop by themselves after this, whatever happens
JOIN_TIMEOUT = 30.0
CLIENT = str(Path(__file__).with_name("eventsclient.py"))
PASSWORD = "s3cret"
MOVE_AT = 3000  # the moving client leaves edge 1 after this record


def _toml(host: Host, where: dict[str, Endpoint]) -> str:
    return "\n".join(f'{k} = "{v}"' for k, v in where.items()) + f'\ninterface = "{host.address}"'


def _start(host: Host, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(host.command(sys.executable, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _done(proc: subprocess.Popen[str], what: str, timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{what} did not finish in {timeout} s: {err[-2000:]}") from None
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}): {err[-2000:]}"
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def test_three_edges_one_lossy_one_cut_one_restarted_serve_the_plants_journal_exactly(
    tmp_path: Path,
) -> None:
    with bridged(["exchange", "plant", "edge1", "edge2", "edge3"]) as hosts:
        exchange, plant = hosts["exchange"], hosts["plant"]
        edges = [hosts[f"edge{n}"] for n in (1, 2, 3)]
        p = ports(exchange.address)
        own = ports(plant.address, channels=4)  # events, itch, glimpse, the edges' events
        tier2_a = Endpoint("239.195.10.1", own.line_a.port)
        tier2_b = Endpoint("239.195.10.2", own.line_b.port)
        events = Endpoint(plant.address, own.replay.port)
        journal = tmp_path / "journal"
        # Clients from other hosts log in as users: the plant's edges, the edges' readers.
        stored = passwords.hash_password(PASSWORD)
        (tmp_path / "plant.toml").write_text(f"""
[feed]
{_toml(plant, {"line_a": p.line_a, "line_b": p.line_b, "rerequest": p.rerequest,
               "replay": p.replay})}
[itch]
listen = "{plant.address}:{own.replay.port + 1}"
[glimpse]
listen = "{plant.address}:{own.replay.port + 2}"
[users]
edge = "{stored}"
[events]
listen = "{events}"
journal_dir = "{journal}"
depth = 0
[tier2]
rerequest = "{own.rerequest}"
heartbeat_interval = 0.2
end_of_session_seconds = 2.0
[tier2.line_a]
group = "{tier2_a.host}"
port = {tier2_a.port}
interface = "{plant.address}"
[tier2.line_b]
group = "{tier2_b.host}"
port = {tier2_b.port}
interface = "{plant.address}"
""")  # fmt: skip
        edge_port = own.replay.port + 3
        for host in edges:
            (tmp_path / f"{host.netns}.toml").write_text(f"""
[feed]
{_toml(host, {"line_a": tier2_a, "line_b": tier2_b, "rerequest": own.rerequest,
              "replay": events})}
replay_username = "edge"
replay_password = "{PASSWORD}"
[users]
reader = "{stored}"
[events]
listen = "{host.address}:{edge_port}"
""")  # fmt: skip
        # Edge 1: 5 % of tier-2 lost on both lines; edge 2: tier-2 line A cut.
        for host, rules in ((edges[0], [(tier2_a.port, 5), (tier2_b.port, 5)]),
                            (edges[1], [(tier2_a.port, 100)])):  # fmt: skip
            host.nft("add table inet loss\n"
                     "add chain inet loss pre { type filter hook prerouting priority 0; }\n"
                     + "".join(f"add rule inet loss pre udp dport {port}"
                               + (f" numgen random mod 100 < {pct}" if pct < 100 else "")
                               + " counter drop\n" for port, pct in rules))  # fmt: skip
        running: list[subprocess.Popen[str]] = []

        def start(host: Host, *args: str) -> subprocess.Popen[str]:
            running.append(_start(host, *args))
            return running[-1]

        def edge(host: Host) -> subprocess.Popen[str]:
            proc = start(host, "-m", "tickerplant", "edge", str(tmp_path / f"{host.netns}.toml"),
                         "--seconds", str(RUN_SECONDS), "--json")  # fmt: skip
            host.wait_joined([tier2_a.host, tier2_b.host], JOIN_TIMEOUT, proc)
            return proc

        def client(host: Host, at: Host, name: str, *args: str) -> subprocess.Popen[str]:
            return start(host, CLIENT, f"{at.address}:{edge_port}", str(tmp_path / name),
                         "--user", "reader", "--password", PASSWORD, *args)

        try:
            plant_proc = start(plant, "-m", "tickerplant", "run", str(tmp_path / "plant.toml"),
                               "--seconds", str(RUN_SECONDS), "--json")  # fmt: skip
            try:
                plant.wait_joined([p.line_a.host, p.line_b.host], JOIN_TIMEOUT, plant_proc)
            except RuntimeError as err:
                raise AssertionError(f"{err}: {plant_proc.communicate()[1][-2000:]}") from None
            edge_procs = [edge(host) for host in edges]
            readers = [client(host, host, f"edge{n}.records")
                       for n, host in enumerate(edges, start=1)]  # fmt: skip
            mover = client(edges[0], edges[0], "moved.records", "--until", str(MOVE_AT))

            async def publish() -> dict[str, Any]:
                async with ExchangeProcess(
                    p.line_a, p.line_b, p.rerequest, p.replay,
                    "--interface", exchange.address, "--ttl", "1", "--messages", str(MESSAGES),
                    "--seed", "21", "--rate", str(RATE), "--eos-seconds", "1",
                    netns=exchange.netns,
                ) as published:  # fmt: skip
                    await published.wait_published(MESSAGES // 2)
                    # Edge 3 dies mid-run and starts again: it catches up from the plant.
                    edge_procs[2].send_signal(signal.SIGKILL)
                    edge_procs[2].wait(10)
                    edge_procs[2] = edge(edges[2])
                    return await published.summary(timeout=60)

            summary = asyncio.run(publish())
            assert summary["published"] == MESSAGES
            try:
                first_leg = _done(mover, "the moving client's first leg", 60)
            except AssertionError as err:
                for proc in running:
                    proc.send_signal(signal.SIGTERM)
                said = [proc.communicate(timeout=20)[1][-1500:]
                        for proc in (plant_proc, *edge_procs)]  # fmt: skip
                raise AssertionError(f"{err}\n" + "\n---\n".join(said)) from None
            second = client(edges[0], edges[1], "moved.records", "--first",
                            str(first_leg["next"]))  # fmt: skip
            results = [_done(proc, f"edge {n}'s client", 90)
                       for n, proc in enumerate(readers, start=1)]  # fmt: skip
            moved = _done(second, "the moving client's second leg", 90)
            dropped = [host.nft_counters("loss") for host in edges[:2]]
        finally:
            for proc in running:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in running:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        figures = [json.loads(proc.stdout.read().strip().splitlines()[-1])  # type: ignore
                   for proc in edge_procs]  # fmt: skip
    (events_file,) = journal.glob("*.events")
    whole = ev.from_blocks(events_file.read_bytes()).tobytes()
    sha = hashlib.sha256(whole).hexdigest()
    count = len(whole) // ev.RECORD_SIZE
    assert count > 10_000
    for n, result in enumerate(results, start=1):
        got = (tmp_path / f"edge{n}.records").read_bytes()
        assert result["records"] == count and result["lost"] == 0, (n, result)
        assert hashlib.sha256(got).hexdigest() == sha, f"edge {n}'s client"
    assert results[2]["reconnects"] >= 1  # edge 3 went away under it
    assert first_leg["next"] > MOVE_AT and moved["records"] == count - first_leg["records"]
    assert hashlib.sha256((tmp_path / "moved.records").read_bytes()).hexdigest() == sha
    assert sum(dropped[0].values()) > 0 and sum(dropped[1].values()) > 0
    assert figures[0]["gaps_repaired"]["a"]["rerequest"] + figures[0]["gaps_repaired"]["b"][
        "rerequest"] > 0  # fmt: skip
    assert figures[2]["replays_started"] > 0  # the restarted edge caught up by replay
