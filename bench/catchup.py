"""Journal catch-up and conflated fan-out: two of issue 8's distribution targets.

``catchup``: a server (io/soupbin.SoupServer, in its own process) holds a journal of a synthetic
day's ITCH messages and keeps publishing live at ``--live-rate``; a client (the subscriber
library's session machine on a plain socket, in its own process) logs in at 1 and reads until it
has caught up with where the journal stood at its login. Reported: catch-up messages/s and its
ratio to the live rate (target: >= 10x), each process's CPU seconds.

``conflated``: the ``events`` stream's fan-out (FanOut with a catalog: symbol subscriptions and the
slow-consumer policies) in a process pinned to one core, publishing BBO changes for
``--symbols`` symbols at ``--bbo-rate``, to ``--clients`` clients (4 processes on the other core)
whose user's policy is ``conflate`` and whose backlog cap is small: they cannot take every update,
so each gets its symbols' latest BBO as fast as it reads. Reported: the rate the source held
against the one it was asked for (one core serving everyone: the target), records delivered/s,
BBO changes conflated, the server's CPU share, its memory per client, and, for a sample of
clients, whether their last BBO per symbol is the source's last.

    .venv/bin/python bench/catchup.py [--messages 5000000] [--live-rate 300000]
                                      [--clients 5000] [--bbo-rate 100000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import selectors
import socket
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

SUBSCRIBERS = 4
SAMPLED = 2  # clients per subscriber process whose every record is kept and checked


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "catchup", "subject": "tickerplant", **fields}), flush=True)


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_self() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def more_files() -> None:
    """Thousands of sockets in one process: raise the open-file limit to the hard one."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- catch-up ----------------------------------------------------------------------------------


def catchup_server(port: int, messages: int, live_rate: float, pipe: Connection) -> None:
    from tickerplant.distribute.fanout import FanOut
    from tickerplant.distribute.journal import Journal
    from tickerplant.exchange.synthetic import SyntheticMarket
    from tickerplant.io.loop import run_loop
    from tickerplant.io.soupbin import SoupServer

    chunks = list(SyntheticMarket(3, 500).chunks(messages + int(live_rate * 60), 1000))
    journal = Journal(b"CATCHUP001")
    while len(journal) < messages:
        journal.append(chunks.pop(0))

    async def main() -> None:
        server = SoupServer(FanOut(journal), "127.0.0.1", port)
        await server.start()
        pipe.send(len(journal))
        start = time.monotonic()
        sent = 0
        cpu = self_cpu()
        while not pipe.poll() and chunks:  # live, paced in ms ticks, until told to stop
            due = int((time.monotonic() - start) * live_rate)
            while sent < due and chunks:
                sent += journal.append(chunks.pop(0))
            server.publish()
            await asyncio.sleep(0.001)
        pipe.recv()
        pipe.send({"cpu": self_cpu() - cpu, "live": sent / (time.monotonic() - start)})
        await server.close()

    run_loop(main())


def catchup_client(port: int, until: int, pipe: Connection) -> None:
    from tickerplant.receive.events import Batch
    from tickerplant.session.soupbin import SoupClientSession
    from tickerplant.wire.soupbintcp import Framer, Side, encode_sequenced

    # Load the framing kernel first (numba's cache): the clock is for reading, not loading.
    warm = Framer(Side.SERVER)
    warm.feed(encode_sequenced(b"\x00\x01x"))
    warm.next_sequenced()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    now = time.monotonic()
    session = SoupClientSession(now, sequence=1)
    sock.sendall(session.data_to_send(now))
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    got = 0
    cpu = self_cpu()
    start = time.perf_counter()
    while got < until:
        n = sock.recv_into(buf)
        if not n:
            break
        session.receive_data(view[:n], time.monotonic())
        while (event := session.next_event()) is not None:
            if isinstance(event, Batch):
                got = event.end - 1
        out = session.data_to_send(time.monotonic())  # heartbeats
        if out:
            sock.sendall(out)
    seconds = time.perf_counter() - start
    pipe.send({"messages": got, "seconds": seconds, "cpu": self_cpu() - cpu})
    sock.close()


def run_catchup(messages: int, live_rate: float) -> None:
    port = free_port()
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    server = ctx.Process(target=catchup_server, args=(port, messages, live_rate, there))
    server.start()
    held = here.recv()
    mine, theirs = ctx.Pipe()
    client = ctx.Process(target=catchup_client, args=(port, held, theirs))
    client.start()
    result = mine.recv()
    client.join()
    here.send("stop")
    served = here.recv()
    server.join()
    rate = result["messages"] / result["seconds"]
    emit(metric="catchup_messages_per_second", value=round(rate), unit="msgs/s",
         journal=held, seconds=round(result["seconds"], 3), client_cpu=round(result["cpu"], 2),
         server_cpu=round(served["cpu"], 2))  # fmt: skip
    emit(metric="live_messages_per_second", value=round(served["live"]), unit="msgs/s",
         asked=live_rate)  # fmt: skip
    emit(metric="catchup_over_live", value=round(rate / served["live"], 1), unit="x",
         target=10)  # fmt: skip


# ---- conflated BBO to many clients --------------------------------------------------------------


def conflated_server(port: int, clients: int, symbols: int, bbo_rate: float, seconds: float,
                     pipe: Connection) -> None:  # fmt: skip
    os.sched_setaffinity(0, {0})
    more_files()
    from tickerplant.distribute.fanout import FanOut, FanOutLimits, Policy
    from tickerplant.distribute.journal import Journal
    from tickerplant.io.loop import run_loop
    from tickerplant.io.soupbin import SoupServer
    from tickerplant.wire import events as ev

    class Everything:
        def locate(self, symbol: bytes) -> int | None:
            return None

        def images(self, locates: list[int]) -> Callable[[], bytes]:
            return lambda: b""

    journal = Journal(b"CONFLATE01")
    rng = np.random.default_rng(1)
    last = np.zeros(symbols + 1, dtype=np.int64)  # the last bid per locate: what clients end on

    async def main() -> None:
        limits = FanOutLimits(max_backlog=64 << 10, max_connections=clients + 10,
                              max_per_address=clients + 10, write_deadline=60)  # fmt: skip
        server = SoupServer(FanOut(journal, limits=limits, catalog=Everything(),
                                   policy=Policy.CONFLATE), "127.0.0.1", port)  # fmt: skip
        await server.start()
        before = rss_self()
        pipe.send("listening")
        while server.fanout.counters.logins < clients:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        per_client = (rss_self() - before) / clients
        pipe.recv()  # "go"
        cpu = self_cpu()
        start = time.monotonic()
        sent = 0
        ticks: list[float] = []  # when the source got the loop back: its waits
        while time.monotonic() - start < seconds:
            ticks.append(time.monotonic())
            n = int((time.monotonic() - start) * bbo_rate) - sent
            if n > 0:
                block = ev.blocks(ev.BBO, n)
                block["sequence"] = journal.next_sequence + np.arange(n)
                locates = rng.integers(1, symbols + 1, n)
                block["locate"] = locates
                bids = journal.next_sequence + np.arange(n)
                block["bid_price"] = bids
                block["bid_size"] = 100
                block["ask_price"] = bids + 1
                block["ask_size"] = 100
                journal.append(block.tobytes())
                last[locates] = bids  # the later of repeated locates wins, as in the stream
                server.publish()
                sent += n
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - start
        used = self_cpu() - cpu
        server.end_session()  # clients read the rest (conflated), then End of Session
        end = time.monotonic() + 60
        while len(server.fanout) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        counters = server.counters
        waits = np.diff(np.array(ticks)) if len(ticks) > 1 else np.zeros(1)
        pipe.send({"sent": sent, "seconds": elapsed, "cpu": used, "per_client": per_client,
                   "waits": [float(np.median(waits)), float(np.percentile(waits, 99)),
                             float(waits.max()), len(ticks)],
                   "conflated": counters.conflated_updates, "conflating": counters.conflating,
                   "delivered": counters.messages_sent, "last": last.tolist(),
                   "cut": counters.slow_consumers})  # fmt: skip
        await server.close()

    run_loop(main())


def conflated_subscriber(port: int, count: int, pipe: Connection) -> None:
    """``count`` connections reading as fast as one process can; the first SAMPLED keep their
    records to check their last BBO per symbol."""
    os.sched_setaffinity(0, {1})
    more_files()
    from tickerplant.wire import events as ev
    from tickerplant.wire import soupbintcp as soup

    login = soup.encode(soup.LoginRequest(b"", b"", b"", 1))
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(login)
        sock.setblocking(False)
        socks.append(sock)
    sel = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sel.register(sock, selectors.EVENT_READ, i)
    kept: dict[int, list[bytes]] = {i: [] for i in range(min(SAMPLED, count))}
    received = [0] * count
    buf = bytearray(1 << 18)
    pipe.send("ready")
    open_ = count
    beat = time.monotonic() + 1
    give_up = time.monotonic() + 180
    while open_ and time.monotonic() < give_up:
        if time.monotonic() >= beat:
            beat += 1
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(b"\x00\x01R")
        for key, _ in sel.select(timeout=0.2):
            i = key.data
            try:
                n = socks[i].recv_into(buf)
            except (BlockingIOError, ConnectionError):
                continue
            if n == 0:  # after End of Session: the server's FIN
                sel.unregister(socks[i])
                socks[i].close()
                open_ -= 1
                continue
            received[i] += n
            if i in kept:
                kept[i].append(bytes(buf[:n]))
    packet = 3 + ev.RECORD_SIZE  # Sequenced Data: length, 'S', record
    lasts = []
    for parts in kept.values():
        framer = soup.Framer(soup.Side.SERVER)
        framer.feed(b"".join(parts))
        blocks = []
        ended = False
        while True:  # heartbeats and the rest between runs of Sequenced Data
            _, run = framer.next_sequenced()
            blocks.append(run)
            other = framer.next_packet()
            ended = ended or isinstance(other, soup.EndOfSession)
            if other is None and not run:
                break
        records = ev.from_blocks(b"".join(blocks))
        bbo = ev.view(records, ev.BBO)
        final: dict[int, int] = {}
        for locate, bid in zip(bbo["locate"].tolist(), bbo["bid_price"].tolist(), strict=True):
            final[locate] = bid
        lasts.append({"final": final, "ended": ended})
    pipe.send({"bytes": sum(received), "records": sum(received) // packet, "cpu": self_cpu(),
               "lasts": lasts})  # fmt: skip


def run_conflated(clients: int, symbols: int, bbo_rate: float, seconds: float) -> None:
    port = free_port()
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    server = ctx.Process(target=conflated_server,
                         args=(port, clients, symbols, bbo_rate, seconds, there))  # fmt: skip
    server.start()
    assert here.recv() == "listening"
    pipes, procs = [], []
    for k in range(SUBSCRIBERS):
        mine, theirs = ctx.Pipe()
        count = clients // SUBSCRIBERS + (1 if k < clients % SUBSCRIBERS else 0)
        proc = ctx.Process(target=conflated_subscriber, args=(port, count, theirs))
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    for pipe in pipes:
        assert pipe.recv() == "ready"
    here.send("go")
    served = here.recv()
    subs = [pipe.recv() for pipe in pipes]
    for proc in (*procs, server):
        proc.join()
    last = served["last"]
    sampled = [got for s in subs for got in s["lasts"]]
    symbols_updated = sum(1 for x in last if x)
    stale = [sum(last[loc] != bid for loc, bid in got["final"].items())
             + symbols_updated - len(got["final"]) for got in sampled]  # fmt: skip
    fresh = stale.count(0)
    held = served["sent"] / served["seconds"]
    emit(metric="conflated_source_rate", value=round(held), unit="bbo/s", asked=bbo_rate,
         clients=clients, symbols=symbols, held=round(held / bbo_rate, 3))  # fmt: skip
    median, p99, longest, ticks = served["waits"]
    emit(metric="conflated_source_wait_seconds", value=round(longest, 4), unit="s",
         median=round(median, 4), p99=round(p99, 4), ticks=ticks)  # fmt: skip
    emit(metric="conflated_server_cpu_share", value=round(served["cpu"] / served["seconds"], 3),
         unit="cores", clients=clients, pinned_to=1)  # fmt: skip
    delivered = served["delivered"]
    emit(metric="conflated_records_delivered_per_second",
         value=round(delivered / served["seconds"]), unit="records/s", clients=clients,
         received=sum(s["records"] for s in subs),
         subscriber_cpu=[round(s["cpu"], 2) for s in subs])  # fmt: skip
    emit(metric="conflated_updates", value=served["conflated"], unit="bbo",
         clients_conflating=served["conflating"], cut=served["cut"])  # fmt: skip
    emit(metric="conflated_memory_per_client", value=round(served["per_client"]), unit="bytes",
         clients=clients)  # fmt: skip
    emit(metric="conflated_sampled_clients_ending_on_the_last_bbo", value=fresh,
         unit="clients", of=len(sampled), stale_symbols=stale,
         ended=[got["ended"] for got in sampled])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5_000_000)
    parser.add_argument("--live-rate", type=float, default=300_000)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--bbo-rate", type=float, default=100_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--only", choices=("catchup", "conflated"))
    args = parser.parse_args()
    if args.only != "conflated":
        run_catchup(args.messages, args.live_rate)
    if args.only != "catchup":
        run_conflated(args.clients, args.symbols, args.bbo_rate, args.seconds)


if __name__ == "__main__":
    main()
