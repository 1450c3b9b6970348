"""Fan-out: aggregate messages/s delivered to N clients on loopback, tickerplant vs Redis vs NATS.

Every client receives every message (40 bytes each). The subjects, in the same invocation, with
the same subscriber harness:

- tickerplant: the plant's SoupBinTCP server (io/soupbin.SoupServer: one FanOut, encode once per
  batch, one send per client per batch) in its own process, publishing batches of messages into
  its journal as fast as its clients take them (it waits while a client's queue is over 4 MiB:
  memory stays bounded, as the peers' own flow control does for them);
- redis: Debian's redis-server (pub/sub, output buffer limits off), fed by a pipelined raw
  publisher process;
- nats: Debian's nats-server (core pub/sub, max_pending and write_deadline raised so nobody is
  cut), fed by a batched raw publisher process.

Subscribers are 4 processes sharing the N connections; each reads with recv_into under epoll and
counts bytes: every frame of a subject has the same size, so messages = bytes // frame (cheaper
than any parser, and exact for this traffic). Aggregate = messages received by all clients over
the time from the first byte to the last. Each process's CPU seconds are reported, so a reader
can see what limited a run (2 cores here: a flat-out source and its subscribers share them), and
the server is judged per CPU: messages delivered per CPU-second of its own process
(``delivered_per_server_cpu_second``), beside Redis's and NATS's server processes.

    .venv/bin/python bench/fanout_throughput.py [--clients 10,100,1000] [--deliveries 20000000]

Memory per idle client: the serving process's RSS once every client is logged in, before anything
is published, less its RSS before they connected, over the clients.

Latency runs (``--latency-clients``): the source publishes at a fixed delivered rate (100k msgs/s
over all clients), each message stamped with CLOCK_MONOTONIC when it is sent, and each subscriber
takes arrival minus stamp for every message (found by its frame header): p50, p99,
p99.9 in microseconds, the source's own pacing (1 ms ticks, batches of what is due) included
alike for every subject.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import re
import resource
import selectors
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from plant_run import cpu_of, emit

SIZE = 40
SUBSCRIBERS = 4
PAYLOAD = b"m" * SIZE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss(pid: int) -> int:
    """Resident bytes of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ---- the protocols, as the subscribers and publishers speak them ------------------------------

def soup_login() -> bytes:
    from tickerplant.wire import soupbintcp as soup

    return soup.encode(soup.LoginRequest(b"", b"", b"", 0))


FRAMES = {
    "tickerplant": 2 + 1 + SIZE,  # SoupBinTCP Sequenced Data
    "redis": len(b"*3\r\n$7\r\nmessage\r\n$2\r\nmd\r\n$40\r\n") + SIZE + 2,
    "nats": len(b"MSG md 1 40\r\n") + SIZE + 2,
}
# What precedes a payload in each protocol's frame; in a latency run a payload's first 8 bytes
# are its send time.
HEADERS = {"tickerplant": b"\x00\x29S", "redis": b"$40\r\n", "nats": b"MSG md 1 40\r\n"}


def stamped() -> bytes:
    """A payload carrying CLOCK_MONOTONIC now (one clock for every process on this host)."""
    return time.monotonic_ns().to_bytes(8, "little") + PAYLOAD[8:]


def due(start: float, per_second: float, messages: int) -> int:
    """Messages that should have gone by now to hold ``per_second`` from ``start``."""
    return min(messages, int((time.monotonic() - start) * per_second) + 1)


def handshake(subject: str, sock: socket.socket) -> None:
    """Subscribe and wait until the server confirms; the bytes until then are not counted."""
    sock.setblocking(True)
    sock.settimeout(30)
    if subject == "tickerplant":
        sock.sendall(soup_login())
        want = 33  # Login Accepted
    elif subject == "redis":
        sock.sendall(b"SUBSCRIBE md\r\n")
        want = len(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nmd\r\n:1\r\n")
    else:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB md 1\r\nPING\r\n')
        got = b""
        while b"PONG\r\n" not in got:
            got += sock.recv(4096)
            if b"PING\r\n" in got:  # the server's RTT probe
                sock.sendall(b"PONG\r\n")
                got = got.replace(b"PING\r\n", b"")
        want = 0
    got = b""
    while len(got) < want:
        got += sock.recv(want - len(got))
    sock.setblocking(False)


def subscriber(
    subject: str, port: int, count: int, messages: int, latency: bool, pipe: Connection
) -> None:
    """``count`` connections; counts bytes after the handshake until each has every message
    (with ``latency``, also each message's send-to-receive time, where its stamp is whole in
    one read)."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        handshake(subject, sock)
    want = messages * FRAMES[subject]
    received = dict.fromkeys(range(count), 0)
    sel = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sel.register(sock, selectors.EVENT_READ, i)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    frame = FRAMES[subject]
    header = re.compile(re.escape(HEADERS[subject]))
    carry = dict.fromkeys(range(count), b"")
    lags: list[np.ndarray[Any, np.dtype[np.int64]]] = []
    pipe.send("ready")
    first = last = 0.0
    open_ = count
    give_up = time.monotonic() + 120
    beat = time.monotonic() + 1.0
    while open_ and time.monotonic() < give_up:
        if subject == "tickerplant" and time.monotonic() >= beat:
            beat += 1.0  # a SoupBinTCP client heartbeats, or the server calls its link dead
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(b"\x00\x01R")
        for key, _ in sel.select(timeout=0.2):
            i = key.data
            try:
                n = socks[i].recv_into(buf)
            except BlockingIOError:
                continue
            if n == 0:
                sel.unregister(socks[i])
                open_ -= 1
                continue
            now = time.perf_counter()
            first = first or now
            last = now
            if latency:
                # Found by their frame's header, not by position: a server's own packets
                # (NATS pings) may sit between frames. The tail of a read waits for the next.
                arrived = time.monotonic_ns()
                data = carry[i] + bytes(view[:n])
                ends = [m.end() for m in header.finditer(data)]
                whole = [e for e in ends if e + 8 <= len(data)]
                if whole:
                    stamps = np.array([int.from_bytes(data[e : e + 8], "little") for e in whole])
                    lags.append(arrived - stamps.astype(np.int64))
                carry[i] = data[whole[-1] + 8 :][-256:] if whole else data[-256:]
            received[i] += n
            if received[i] >= want:
                sel.unregister(socks[i])
                open_ -= 1
    pipe.send({"messages": sum(min(b // frame, messages) for b in received.values()),
               "first": first, "last": last, "cpu": self_cpu(),
               "lags": np.concatenate(lags) if lags else np.zeros(0, np.int64)})
    for sock in socks:
        sock.close()


# ---- publishers --------------------------------------------------------------------------------

def tickerplant_server(
    port: int, clients: int, messages: int, per_second: float, pipe: Connection,
    max_backlog: int = 1 << 30,
) -> None:
    """The SoupBinTCP server in its own process; publishes once told to, then reports its CPU
    and how many slow consumers it cut."""
    from tickerplant.distribute.fanout import FanOut, FanOutLimits
    from tickerplant.distribute.journal import Journal
    from tickerplant.io.loop import run_loop
    from tickerplant.io.soupbin import SoupServer
    from tickerplant.wire.blocks import join_messages

    async def main() -> None:
        limits = FanOutLimits(max_backlog=max_backlog, write_deadline=600)
        server = SoupServer(FanOut(Journal(b"BENCH00001"), limits=limits), "127.0.0.1", port)
        await server.start()
        pipe.send("listening")
        loop = asyncio.get_running_loop()
        while server.fanout.counters.logins < clients:
            await asyncio.sleep(0.01)
        await loop.run_in_executor(None, pipe.recv)  # "go"
        batch = join_messages([PAYLOAD] * 512)
        sent = 0
        journal = server.journal
        start = time.monotonic()
        while sent < messages:
            if per_second:  # paced, stamped as they go
                n = due(start, per_second, messages) - sent
                if n <= 0:
                    await asyncio.sleep(0.001)  # uvloop's timers tick in ms: less would spin
                    continue
                journal.append(join_messages([stamped()] * n))
            else:
                n = 512
                journal.append(batch)
            server.publish()
            sent += n
            await asyncio.sleep(0)
            while not per_second and max(
                (s.backlog for s in server.fanout.subscribers), default=0
            ) > 4 << 20:  # flat out: as fast as the clients take it (paced: no waiting)
                await asyncio.sleep(0.0005)
        pipe.send((self_cpu(), server.counters.slow_consumers))
        await loop.run_in_executor(None, pipe.recv)  # "stop"
        await server.close()

    run_loop(main())


def raw_publisher(
    subject: str, port: int, messages: int, per_second: float, pipe: Connection
) -> None:
    """Batched raw publishes; replies (Redis) and pings (NATS) drained by a thread."""
    import threading

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if subject == "redis":
        head = b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nmd\r\n$40\r\n"
    else:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        head = b"PUB md 40\r\n"
    one = head + PAYLOAD + b"\r\n"

    pings = threading.Semaphore(0)

    def drain() -> None:
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            for _ in range(data.count(b"PING") if subject == "nats" else 0):
                pings.release()  # answered by the sending thread, between whole commands

    threading.Thread(target=drain, daemon=True).start()
    pipe.send("listening")
    pipe.recv()  # "go"
    batch = one * 512
    sent = 0
    start = time.monotonic()
    while sent < messages:
        while pings.acquire(blocking=False):
            sock.sendall(b"PONG\r\n")
        if per_second:  # paced, stamped as they go
            n = due(start, per_second, messages) - sent
            if n <= 0:
                time.sleep(0.0002)
                continue
            sock.sendall((head + stamped() + b"\r\n") * n)
        else:
            n = 512
            sock.sendall(batch)
        sent += n
    pipe.send(self_cpu())
    pipe.recv()  # "stop"
    sock.close()


def start_server(subject: str, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    if subject == "redis":
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--client-output-buffer-limit", "pubsub 0 0 0"]
    else:
        conf = workdir / "nats.conf"
        conf.write_text("max_pending: 1073741824\nwrite_deadline: \"60s\"\n")
        cmd = ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-c", str(conf),
               "-l", str(workdir / "nats.log")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{subject} did not start")


def one_run(
    subject: str, clients: int, messages: int, workdir: Path, rate: float = 0.0,
    stall: bool = False, max_backlog: int = 1 << 30,
) -> dict[str, Any] | None:
    """One run; ``rate`` delivered msgs/s over all clients (0: flat out, no stamps). With
    ``stall`` (ours only), one more client logs in and never reads."""
    ctx = mp.get_context("spawn")
    port = free_port()
    server = None
    if subject != "tickerplant":
        if shutil.which(f"{subject}-server") is None:
            emit(bench="fanout_throughput", subject=subject, metric="skipped", value=0, unit="",
                 reason=f"{subject}-server is not installed (apt-get install {subject}-server)")
            return None
        server = start_server(subject, port, workdir)
    ours, theirs = ctx.Pipe()
    source: Callable[..., None] = tickerplant_server if subject == "tickerplant" else raw_publisher
    per_second = rate / clients
    args = (port, clients + stall, messages, per_second, theirs, max_backlog) if (
        subject == "tickerplant") else (subject, port, messages, per_second, theirs)
    publisher = ctx.Process(target=source, args=args)
    publisher.start()
    theirs.close()  # the child's now: a publisher that dies shows as EOF here, not a hang
    assert ours.recv() == "listening"
    serving = publisher.pid if server is None else server.pid  # ours serves and publishes
    assert serving is not None
    rss_alone = rss(serving)
    pipes, subs = [], []
    for k in range(SUBSCRIBERS):
        share = clients // SUBSCRIBERS + (1 if k < clients % SUBSCRIBERS else 0)
        a, b = ctx.Pipe()
        p = ctx.Process(target=subscriber, args=(subject, port, share, messages, rate > 0, b))
        p.start()
        b.close()
        pipes.append(a)
        subs.append(p)
    for a in pipes:
        assert a.recv() == "ready"
    stalled = None
    if stall:  # logged in, a tiny receive buffer, never read
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(soup_login())
    time.sleep(0.2)  # the last logins settle
    idle_bytes = (rss(serving) - rss_alone) / clients  # logged in, nothing published yet
    cpu_server_before = cpu_of(server.pid) if server else 0.0
    ours.send("go")
    results = [a.recv() for a in pipes]
    cut = 0
    try:
        got = ours.recv()
        publisher_cpu, cut = got if isinstance(got, tuple) else (got, 0)
        ours.send("stop")
    except (EOFError, OSError):
        publisher_cpu = float("nan")  # it died (its traceback is on stderr): the run is incomplete
    if stalled is not None:
        stalled.close()
    publisher.join(30)
    for p in subs:
        p.join(30)
    server_cpu = cpu_of(server.pid) - cpu_server_before if server else 0.0
    if server is not None:
        server.terminate()
        server.wait(10)
    first = min(r["first"] for r in results if r["first"])
    last = max(r["last"] for r in results)
    delivered = sum(r["messages"] for r in results)
    seconds = last - first
    lags = np.concatenate([r["lags"] for r in results]) / 1e3  # µs
    return {"lags_us": lags, "idle_bytes": idle_bytes, "delivered": delivered,
            "expected": clients * messages,
            "seconds": seconds,
            "rate": delivered / seconds if seconds > 0 else 0.0, "cut": cut,
            "cpu": {"publisher": round(publisher_cpu, 2), "server": round(server_cpu, 2),
                    "subscribers": round(sum(r["cpu"] for r in results), 2)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", default="10,100,1000")
    parser.add_argument("--deliveries", type=int, default=20_000_000,
                        help="messages x clients per run (each client gets every message)")
    parser.add_argument("--subjects", default="tickerplant,redis,nats")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--latency-clients", default="10,100",
                        help="latency runs at a fixed rate with these client counts ('' none)")
    parser.add_argument("--latency-rate", type=float, default=100_000.0,
                        help="delivered msgs/s over all clients in latency runs")
    parser.add_argument("--latency-seconds", type=float, default=3.0)
    parser.add_argument("--stall-clients", type=int, default=0,
                        help="also: latency of N reading clients with and without one more that"
                        " never reads (ours, max_backlog 64 KiB), rounds interleaved")
    args = parser.parse_args()
    subjects = args.subjects.split(",")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        for round_ in range(args.rounds):
            if args.stall_clients:
                clients = args.stall_clients
                messages = int(args.latency_rate * args.latency_seconds) // clients
                for stall in (False, True):
                    r = one_run("tickerplant", clients, messages, Path(tmp), args.latency_rate,
                                stall=stall, max_backlog=64 << 10)
                    assert r is not None
                    p50, p99, p999 = np.percentile(r["lags_us"], [50, 99, 99.9]).tolist()
                    for metric, value in (("stall_latency_p50", p50), ("stall_latency_p99", p99),
                                          ("stall_latency_p99.9", p999)):
                        emit(bench="fanout_throughput", subject="tickerplant", metric=metric,
                             value=round(value, 1), unit="us", clients=clients, stalled=stall,
                             cut=r["cut"], complete=r["delivered"] == r["expected"],
                             delivered_per_s=args.latency_rate, round=round_)
            for clients in [int(c) for c in args.latency_clients.split(",") if c]:
                messages = int(args.latency_rate * args.latency_seconds) // clients
                for subject in subjects:
                    r = one_run(subject, clients, messages, Path(tmp), args.latency_rate)
                    if r is None or not r["lags_us"].shape[0]:
                        continue
                    p50, p99, p999 = np.percentile(r["lags_us"], [50, 99, 99.9]).tolist()
                    for metric, value in (("latency_p50", p50), ("latency_p99", p99),
                                          ("latency_p99.9", p999)):
                        emit(bench="fanout_throughput", subject=subject, metric=metric,
                             value=round(value, 1), unit="us", clients=clients,
                             delivered_per_s=args.latency_rate, samples=r["lags_us"].shape[0],
                             complete=r["delivered"] == r["expected"], round=round_)
            for clients in [int(c) for c in args.clients.split(",") if c]:
                messages = max(512, args.deliveries // clients // 512 * 512)
                for subject in subjects:  # interleaved: the same load for every subject
                    r = one_run(subject, clients, messages, Path(tmp))
                    if r is None:
                        continue
                    emit(bench="fanout_throughput", subject=subject, metric="delivered_msgs_per_s",
                         value=round(r["rate"]), unit="msg/s", clients=clients,
                         messages_per_client=messages, complete=r["delivered"] == r["expected"],
                         seconds=round(r["seconds"], 3), cpu_seconds=r["cpu"], round=round_)
                    # Judged per CPU: the aggregate is bounded by clients sharing two cores. Our
                    # server is the process that also publishes (its source's work counted
                    # against it); the peers' servers are processes of their own.
                    cpu = r["cpu"]["server"] or r["cpu"]["publisher"]
                    if cpu > 0:
                        emit(bench="fanout_throughput", subject=subject,
                             metric="delivered_per_server_cpu_second",
                             value=round(r["delivered"] / cpu), unit="msg/cpu-s",
                             clients=clients, server_cpu_seconds=cpu, round=round_)
                    emit(bench="fanout_throughput", subject=subject,
                         metric="memory_per_idle_client", value=round(r["idle_bytes"]),
                         unit="bytes", clients=clients, round=round_)


if __name__ == "__main__":
    main()
