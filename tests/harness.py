"""Ports and expected streams for integration tests that run the real exchange process."""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tickerplant.book import BookEngine
from tickerplant.book.normalize import records
from tickerplant.client import Events, Lost, Reconnected, Record
from tickerplant.distribute.stream import LOST
from tickerplant.endpoint import Endpoint
from tickerplant.exchange.synthetic import SyntheticMarket
from tickerplant.feed.handler import FeedConfig
from tickerplant.io.multicast import LineConfig
from tickerplant.plant import EventsConfig, GlimpseConfig, PlantConfig, StreamConfig
from tickerplant.plant.tier2 import Tier2Config
from tickerplant.receive.events import Batch
from tickerplant.wire.blocks import iter_messages, offsets_of
from tickerplant.wire.events import RECORD_SIZE, from_blocks, where


@dataclass(frozen=True)
class Ports:
    line_a: Endpoint
    line_b: Endpoint
    rerequest: Endpoint
    replay: Endpoint


_next_port = 0


def _port_band() -> tuple[int, int]:
    """Where a test's own ports go: outside the kernel's ephemeral range, which any socket that
    connects or sends before binding may take (the exchange's line sockets took a re-request
    port of the band 40000-60000 once in a loss-matrix cell: "could not bind")."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    if low >= 30500:
        return 20000, 10000
    if high <= 60000:
        return high + 1, min(5000, 65000 - high)
    return 40000, 20000  # (a machine whose ephemeral range is everything: as before)


_BAND = _port_band()
MAX_SPAN = 64  # ports one call of ports() may take


def ports(host: str = "127.0.0.1", group_base: str = "239.192.90", channels: int = 1) -> Ports:
    """Ports of our own for one test: pid-based so that parallel runs do not meet, and outside
    the ephemeral range (:func:`_port_band`); the replay's is the first of ``channels``."""
    global _next_port
    start, width = _BAND
    span = 3 + channels
    # One modulus for every call, whatever its span: two calls of different spans taken modulo
    # different widths could land on the same ports.
    assert span <= MAX_SPAN, f"at most {MAX_SPAN - 3} channels' ports"
    base = start + (os.getpid() * 13 + _next_port) % (width - MAX_SPAN)
    _next_port += span
    return Ports(
        Endpoint(f"{group_base}.1", base),
        Endpoint(f"{group_base}.2", base + 1),
        Endpoint(host, base + 2),
        Endpoint(host, base + 3),
    )


Said = str | Callable[[], str]  # what was awaited; a callable is asked only on failure


def _said(what: Said) -> str:
    return what if isinstance(what, str) else what()


async def until(condition: Callable[[], object], timeout: float, what: Said,
                interval: float = 0.005) -> None:  # fmt: skip
    """Wait on the running loop until ``condition()`` holds (the loop goes round meanwhile, so
    what the test waits for can happen); past ``timeout`` seconds, fail saying ``what`` did not
    happen. The way tests over sockets synchronise: on the thing itself, never on a sleep."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() >= end:
            raise AssertionError(f"not within {timeout:g} s: {_said(what)}")
        await asyncio.sleep(interval)


def wait_until(condition: Callable[[], object], timeout: float, what: Said,
               interval: float = 0.05) -> None:  # fmt: skip
    """:func:`until` for a test without a loop (a process, a thread, a scrape over HTTP)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= end:
            raise AssertionError(f"not within {timeout:g} s: {_said(what)}")
        time.sleep(interval)


def allow_open_files(n: int) -> None:
    """Let this process hold ``n`` descriptors (the soft limit raised toward the hard one, as
    root's often already is and a user's 1024 is not), or skip saying why."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= n:
        return
    if hard != resource.RLIM_INFINITY and hard < n:
        pytest.skip(f"needs {n} open files; the hard limit is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def source_stream(seed: int, symbols: int, messages: int) -> bytes:
    return b"".join(SyntheticMarket(seed, symbols).chunks(messages))


TSHARK = shutil.which("tshark")
WARM_UP = b"warm-up"  # probes told apart in tshark's summary lines by their length
FENCE = b"fence"


def free_udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


class LiveCapture:
    """tshark (dumpcap underneath) capturing ``interface`` into ``path`` for the given ports,
    started and stopped for sure: probe datagrams to a port of its own until tshark reports one
    (it is really capturing), and after the traffic one more as a fence (everything before it is
    in the file). pcapng unless ``file_format`` says (``pcap``)."""

    def __init__(self, path: Path, udp: list[int], tcp: list[int], interface: str = "lo",
                 file_format: str = "pcapng", link_type: str | None = None) -> None:  # fmt: skip
        self.path = path
        self._probe_rx = free_udp_socket()
        self.probe_port = self._probe_rx.getsockname()[1]
        ports = [f"udp port {p}" for p in [*udp, self.probe_port]] + [f"tcp port {p}" for p in tcp]
        self._probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        assert TSHARK is not None
        self._proc = subprocess.Popen(
            [TSHARK, "-i", interface, "-f", " or ".join(ports), "-w", str(path), "-F", file_format,
             "-P", "-l", "-q", "-B", "64", *(["-y", link_type] if link_type else []),
             # fields, not summary lines: a summary names the protocol a port is registered to
             # (PNIO, TZSP, ENIP... on some ephemeral ports) instead of the port and length
             "-T", "fields", "-e", "udp.dstport", "-e", "udp.length"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        os.set_blocking(self._proc.stdout.fileno(), False)
        self._printed = b"\n"

    def _seen(self, probe: bytes) -> bool:
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], 0.05)
        if ready:
            self._printed += self._proc.stdout.read() or b""
        return f"\n{self.probe_port}\t{8 + len(probe)}\n".encode() in self._printed

    def _probe_until_seen(self, probe: bytes, deadline: float) -> None:
        while not self._seen(probe):
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                pytest.skip(f"tshark cannot capture on lo here: {err.strip()[-300:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tshark reported no {probe!r} probe in time")
            self._probe.sendto(probe, ("127.0.0.1", self.probe_port))
            time.sleep(0.05)

    def start(self) -> None:
        self._probe_until_seen(WARM_UP, time.monotonic() + 30)

    def stop(self) -> None:
        try:
            if self._proc.poll() is None:
                # packets can wait in the kernel's capture buffer: stopping before tshark has
                # shown the fence, sent after everything else, could lose the test's own packets
                self._probe_until_seen(FENCE, time.monotonic() + 10)
        finally:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._probe.close()
            self._probe_rx.close()


class Collected:
    """A subscriber's records: every message by number, lost ranges, reconnects."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.lost: list[tuple[int, int]] = []
        self.reconnects = 0
        self.events = CollectedEvents()  # the same client's events subscription, if any

    def receive(self, record: Record) -> None:
        if isinstance(record, Batch):
            assert record.first == len(self.messages) + 1, "out of order or twice"
            self.messages += iter_messages(record.blocks)
        elif isinstance(record, Lost):
            assert record.start == len(self.messages) + 1
            self.lost.append((record.start, record.end))
            self.messages += [LOST[2:]] * (record.end - record.start)
        elif isinstance(record, Reconnected):
            assert record.sequence == len(self.messages) + 1
            self.reconnects += 1


class CollectedEvents:
    """An events subscriber's records, checked in order and once each, and what it was told."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.lost: list[tuple[int, int]] = []
        self.reconnects = 0
        self.next = 1

    def receive(self, record: Record) -> None:
        if isinstance(record, Events):
            got = record.records
            assert (got["flags"] == 0).all(), "an image sent to a client replaying from 1"
            assert got["sequence"].tolist() == list(range(self.next, self.next + len(got)))
            self.records.append(got.tobytes())
            self.next += len(got)
        elif isinstance(record, Lost):
            assert record.sequence == self.next
            self.lost.append((record.start, record.end))
            self.next += 1
        elif isinstance(record, Reconnected):
            assert record.sequence == self.next
            self.reconnects += 1
        else:
            raise AssertionError(f"{record} for a client that keeps up")


def day_of_events(source: bytes) -> bytes:
    """The records the books raise for ``source``, numbered from 1, without block lengths."""
    engine = BookEngine()
    out, sequence, itch = [], 1, 1
    for chunk in chunks_of(source):
        count, blocks = records(engine.process(chunk), sequence, itch, chunk)
        out.append(blocks)
        sequence += count
        itch += len(list(iter_messages(chunk)))
    return bytes(from_blocks(b"".join(out)).tobytes())


def unnumbered(rows: np.ndarray, mask: np.ndarray) -> bytes:
    """The records (a RECORD array) where ``mask`` is true, whole, their numbers zeroed: records
    compared by what they say."""
    raw = where(rows, mask).view(np.uint8).reshape(-1, RECORD_SIZE).copy()
    raw[:, 2:10] = 0
    return raw.tobytes()


def chunks_of(source: bytes, size: int = 1 << 20) -> list[bytes]:
    """``source`` cut into block streams of about ``size`` bytes, at message boundaries."""
    offsets, end = offsets_of(source)
    cuts = [int(offsets[i]) for i in range(0, len(offsets), max(1, size // 30))] + [end]
    return [source[a:b] for a, b in itertools.pairwise(cuts) if b > a]


def recovery_host(journal_dir: Path, p: Ports) -> subprocess.Popen[bytes]:
    """``tickerplant recovery`` serving ``p``'s re-request and replay from ``journal_dir``."""
    return subprocess.Popen(
        [sys.executable, "-m", "tickerplant", "recovery", "--journal-dir", str(journal_dir),
         "--rerequest", str(p.rerequest), "--replay", str(p.replay)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def tier2_plant(lines: str, tier2_lines: str, channels: int, depth: int = 5) -> PlantConfig:
    """A plant of ``channels`` channels of an exchange on groups ``lines``.1 and .2 at ports of
    our own, with tier-2 on ``tier2_lines``.1 and .2 (5 % loss injected on each), its own
    re-request port, quick heartbeats and a short End of Session."""
    p = ports(group_base=lines, channels=channels)
    t = ports(group_base=tier2_lines)
    tier2 = Tier2Config(LineConfig(t.line_a.host, t.line_a.port, drop=0.05),
                        LineConfig(t.line_b.host, t.line_b.port, drop=0.05),
                        rerequest=t.rerequest, heartbeat_interval=0.2,
                        end_of_session_seconds=1.0)  # fmt: skip
    anywhere = Endpoint("127.0.0.1", 0)
    return PlantConfig(
        FeedConfig(p.line_a, p.line_b, rerequest=p.rerequest, replay=p.replay),
        StreamConfig(anywhere), GlimpseConfig(anywhere),
        events=EventsConfig(anywhere, depth=depth), channels=channels, tier2=tier2,
    )  # fmt: skip


def unheard_plant_figures(channels: int, group: str) -> dict[str, Any]:
    """The figures of a plant of ``channels`` channels (channel 1's line A on ``group``) that
    was made but not started: nothing heard."""
    from tickerplant.plant import Plant

    async def figures() -> dict[str, Any]:
        anywhere = Endpoint("127.0.0.1", 0)
        plant = Plant(PlantConfig(FeedConfig(Endpoint(group, 40001), None),
                                  StreamConfig(anywhere), GlimpseConfig(anywhere),
                                  events=EventsConfig(anywhere), channels=channels))  # fmt: skip
        return plant.figures()

    return asyncio.run(figures())
