"""Wire to client latency, issue 19's two measures in one run: (a) as a packet capture sees it,
and (b) from our own timestamps, the client's wake-up included.

The exchange simulator publishes a synthetic day at ``--rate`` on both lines (loss injected on
line A with ``--drop-a``), ``tickerplant run`` with its defaults serves it, ``--clients``
clients on one stream from now only drain their sockets (one process, heartbeating), and
dumpcap on ``lo`` keeps both lines and the TCP segments the plant sends to ``--sampled`` of the
clients.

(a) ``wire_to_client``: the kernel's timestamps on ``lo``, never our clocks. tshark reads the
capture: each MoldUDP64 packet's sequence and count (the first copy of a message on either line
is its wire time), and each segment's bytes (reassembled per connection, the SoupBinTCP framing
walked: the segment that carried a message's last byte is its time at the client's socket).

(b) ``sent_to_read``: the exchange logs each data packet it sends on each line with
``time.monotonic_ns()`` just before the send call (``tickerplant exchange --sent-log``), and the
sampled clients keep the bytes they read and ``time.monotonic_ns()`` just after each read
returns; both are CLOCK_MONOTONIC, one clock across processes. A message runs from the send call
of its first copy (the earliest over the lines) to the return of the read that delivered its
last byte: the kernel both ways (the multicast send and the TCP receive), the plant, and the
client's wake-up (its select, and the reads of the sockets ready before its own). Where (a)
starts and stops on ``lo`` itself, (b) adds the sending kernel's path to ``lo`` and everything on
the client's side of the socket, so it runs a little above (a).

On ``events`` a record is timed from the first copy of the ``itch`` message that raised it (its
``source``). A message never on either line (lost on both, repaired by re-request or replay) has
no wire time and was in no send call: it is counted, not timed, in both.

One JSON object per line: p50, p99, p99.9 and max per run and measure (``subject`` tickerplant:
the anchors are other products' published figures, see issue 19), and each measure's histogram
(log buckets, 4 per octave, from 1 us). ``--repeat`` runs rounds and the summary gives each
round's figures and their median.

    .venv/bin/python bench/wire_latency.py --rate 100000 --clients 10 --seconds 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.npyio import NpzFile

from tickerplant.endpoint import Endpoint
from tickerplant.wire.blocks import offsets_of
from tickerplant.wire.soupbintcp import LoginRequest, encode

BENCH = "wire_latency"
MEASURES = ("wire_to_client", "sent_to_read")  # (a), (b)
QUANTILES = ("p50", "p99", "p99.9", "max")
LOGIN = encode(LoginRequest(b"", b"", b"", 0))
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# Reads the clients record at most (3 x 8 bytes each): past it they go on reading, unrecorded.
RECORDED_READS = 20_000_000

# The drain-only clients: one process, a connection from each local port given (so that a
# capture can be filtered to them before they connect, and hold their handshakes and logins),
# each logged in from now (sequence 0), heartbeating every second and reading everything into
# one buffer until the server closes. The first ``sampled`` also keep what they read, and each
# of their reads (the socket, its stream's bytes so far, the clock just after it returned); at
# the end all of it goes to the .npz file ``out``. Every client's byte count goes to stdout.
CLIENTS = r"""
import selectors, socket, sys, time
from array import array
import numpy as np
host, port, deadline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out, sampled, cap = sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
login = b"L" + b" " * 6 + b" " * 10 + b" " * 10 + b"0".rjust(20)
sel = selectors.DefaultSelector()
socks = []
for local in sys.argv[7:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(local)))
    s.connect((host, port))
    s.sendall(len(login).to_bytes(2, "big") + login)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    socks.append(s)
print("connected", flush=True)
got = {s: 0 for s in socks}
index = {s: i for i, s in enumerate(socks)}
kept = [bytearray() for _ in socks[:sampled]]
which, ends, stamps = array("q"), array("q"), array("q")
room = cap
now_ns = time.monotonic_ns
buf = bytearray(1 << 20)
view = memoryview(buf)
beat, open_ = time.monotonic() + 1, set(socks)
end = time.monotonic() + deadline
while open_ and time.monotonic() < end:
    for key, _ in sel.select(0.2):
        s = key.fileobj
        try:
            k = s.recv_into(buf)
            ns = now_ns()
        except (BlockingIOError, ConnectionError):
            k = 0 if s in open_ else -1
        if k == 0:
            sel.unregister(s)
            open_.discard(s)
        elif k > 0:
            got[s] += k
            i = index[s]
            if i < sampled and room:
                room -= 1
                kept[i] += view[:k]
                which.append(i)
                ends.append(got[s])
                stamps.append(ns)
    if time.monotonic() >= beat:
        beat += 1
        for s in open_:
            try:
                s.send(b"\x00\x01R")
            except OSError:
                pass
if not room:
    print(f"clients: recorded the first {cap} reads only, then read on", file=sys.stderr)
np.savez(out, which=np.array(which, dtype=np.int64), ends=np.array(ends, dtype=np.int64),
         ns=np.array(stamps, dtype=np.int64), capped=np.array(not room),
         **{f"stream{i}": np.frombuffer(bytes(b), dtype=np.uint8) for i, b in enumerate(kept)})
print(" ".join(str(got[s]) for s in socks), flush=True)
"""


def free_ports(count: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> list[int]:
    """``count`` distinct free ports: held open while picked (a port freed and asked for again
    may come back, and two clients bound to one port cannot both connect to the plant)."""
    socks = [socket.socket(socket.AF_INET, kind) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Setup:
    line_a: Endpoint
    line_b: Endpoint
    rerequest: Endpoint
    replay: Endpoint
    itch: Endpoint
    events: Endpoint
    glimpse: Endpoint

    @classmethod
    def free(cls) -> Setup:
        a, b, rerequest = free_ports(3, socket.SOCK_DGRAM)
        replay, itch, events, glimpse = free_ports(4)
        return cls(Endpoint("239.192.96.1", a), Endpoint("239.192.96.2", b),
                   *(Endpoint("127.0.0.1", p) for p in (rerequest, replay, itch, events, glimpse)))

    def config(self, settings: list[str]) -> str:
        """``tickerplant run``'s config: these addresses, ``settings`` (``table.key=TOML``, to
        try one away from its default), every other setting its default."""
        tables: dict[str, list[str]] = {
            "feed": [f'line_a = "{self.line_a}"', f'line_b = "{self.line_b}"',
                     f'rerequest = "{self.rerequest}"', f'replay = "{self.replay}"'],
            "itch": [f'listen = "{self.itch}"'], "events": [f'listen = "{self.events}"'],
            "glimpse": [f'listen = "{self.glimpse}"'],
        }  # fmt: skip
        for setting in settings:
            key, _, value = setting.partition("=")
            table, _, name = key.rpartition(".")
            tables.setdefault(table, []).append(f"{name} = {value}")
        return "".join(f"[{t}]\n" + "".join(f"{line}\n" for line in lines)
                       for t, lines in tables.items())  # fmt: skip


def wait_listening(endpoint: Endpoint, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((endpoint.host, endpoint.port), timeout=1).close()
            return
        except OSError as err:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout} s: {what} listening on {endpoint}"
                                   ) from err
            time.sleep(0.05)


class Capture:
    """dumpcap on lo into ``path``, capturing once it says so, stopped by SIGINT; what it says
    goes to a file beside the capture (a pipe nobody reads while it runs could fill and stall
    it)."""

    def __init__(self, path: Path, filter_: str) -> None:
        dumpcap = shutil.which("dumpcap")
        if dumpcap is None:
            sys.exit("dumpcap is not installed (apt-get install tshark)")
        self.path = path
        self._said = path.with_suffix(".txt")
        with self._said.open("w") as said:
            self._proc = subprocess.Popen(
                [dumpcap, "-i", "lo", "-f", filter_, "-w", str(path), "-B", "512"],
                stderr=said)  # fmt: skip
        deadline = time.monotonic() + 30
        while "File:" not in self._said.read_text():  # once the interface is open, filter set
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dumpcap did not start: {self._said.read_text()}")
            time.sleep(0.05)

    def stop(self) -> str:
        """Stop; what dumpcap said of packets received and dropped."""
        time.sleep(1.0)  # what the kernel still holds for it goes to the file first
        self._proc.send_signal(signal.SIGINT)
        self._proc.wait(30)
        return " ".join(self._said.read_text().split())


def tshark(*args: str) -> list[list[str]]:
    out = subprocess.run(["tshark", *args], check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def first_copies(cap: Path, setup: Setup) -> tuple[int, F64]:
    """(first number, the time of each message's first copy on either line; nan: never)."""
    rows = tshark("-r", str(cap), "-d", f"udp.port=={setup.line_a.port},moldudp64",
                  "-d", f"udp.port=={setup.line_b.port},moldudp64",
                  "-Y", f"(udp.dstport == {setup.line_a.port}"
                  f" || udp.dstport == {setup.line_b.port})"
                  " && moldudp64.count > 0 && moldudp64.count < 65535",
                  "-T", "fields", "-e", "frame.time_epoch", "-e", "moldudp64.sequence",
                  "-e", "moldudp64.count")  # fmt: skip
    times = np.array([float(r[0]) for r in rows])
    seqs = np.array([int(r[1]) for r in rows], dtype=np.int64)
    counts = np.array([int(r[2]) for r in rows], dtype=np.int64)
    return earliest(seqs, counts, times)


def sent_copies(log: Path) -> tuple[int, F64]:
    """(first number, the monotonic time in seconds of the send call that carried each
    message's first copy on either line; nan: never), from the exchange's ``--sent-log``."""
    sent = np.load(log, allow_pickle=False)
    return earliest(sent["first"], sent["count"], sent["ns"] * 1e-9)


def earliest(seqs: I64, counts: I64, times: F64) -> tuple[int, F64]:
    """Packets (first number, count, time) as (the first number, the earliest time of each
    message among the packets that carried it; nan: none did)."""
    first = int(seqs.min())
    end = int((seqs + counts).max())
    out = np.full(end - first, np.inf)
    numbers = np.repeat(seqs - first, counts) + _ramp(counts)
    np.minimum.at(out, numbers, np.repeat(times, counts))
    out[np.isinf(out)] = np.nan
    return first, out


def _ramp(counts: I64) -> I64:
    """0, 1, ... count-1 for each count, concatenated."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum()), dtype=np.int64) - starts


def client_times(cap: Path, server: int, client: int, stream: str
                 ) -> tuple[I64, F64, int]:  # fmt: skip
    """Each Sequenced Data message the plant sent one client: its itch number (events: the
    source of the record) and the time of the segment that carried its last byte; and the
    stream's bytes (to check against what the client read)."""
    rows = tshark("-r", str(cap), "-o", "tcp.desegment_tcp_streams:FALSE",
                  "-Y", f"tcp.srcport=={server} && tcp.dstport=={client} && tcp.len > 0",
                  "-T", "fields", "-e", "frame.time_epoch", "-e", "tcp.seq", "-e", "tcp.payload")
    segments = sorted(((int(r[1]), float(r[0]), bytes.fromhex(r[2])) for r in rows),
                      key=lambda s: s[0])  # fmt: skip
    data = bytearray()
    ends: list[int] = []
    times: list[float] = []
    for seq, at, payload in segments:
        start = seq - 1  # relative sequence numbers: the first byte is 1
        if start > len(data):  # a segment the capture lacks: nothing after it can be placed
            raise RuntimeError(f"the capture to client port {client} lacks stream bytes "
                               f"[{len(data)}, {start})")  # fmt: skip
        if start + len(payload) <= len(data):
            continue  # a retransmission of what we have
        data += payload[len(data) - start :]
        ends.append(len(data))
        times.append(at)
    numbers, at_client = delivered(bytes(data), np.array(ends), np.array(times), stream)
    return numbers, at_client, len(data)


def client_reads(reads: NpzFile, client: int, stream: str) -> tuple[I64, F64, int]:
    """What the clients' file ``reads`` (an open .npz) says of sampled client ``client``: each
    Sequenced Data message's number (events: its source) and the monotonic time in seconds of
    the read that delivered its last byte; and the bytes it kept."""
    mine = reads["which"] == client
    data = reads[f"stream{client}"].tobytes()
    numbers, at = delivered(data, reads["ends"][mine], reads["ns"][mine] * 1e-9, stream)
    return numbers, at, len(data)


def delivered(data: bytes, ends: I64, times: F64, stream: str) -> tuple[I64, F64]:
    """A stream that arrived in pieces (``ends[i]``: its bytes once piece ``i`` had come, at
    ``times[i]``): each Sequenced Data message's number (events: its source) and the time of the
    piece that carried its last byte."""
    numbers, last_byte = _walk(data, stream)
    return numbers, times[np.searchsorted(ends, last_byte, side="right")]


def latencies(numbers: I64, at: F64, first: int, sent: F64) -> F64:
    """``at`` less each message's time in ``sent`` (indexed from number ``first``); nan where
    it has none."""
    index = numbers - first
    known = (index >= 0) & (index < sent.shape[0])
    since = np.full(numbers.shape[0], np.nan)
    since[known] = sent[index[known]]
    late: F64 = at - since
    return late


def by_second(late: F64, since: F64) -> list[float]:
    """The p99 of ``late`` in each second of the run (``since`` its start): when it was late
    (an attacked round: as the attackers came, or throughout)."""
    known = ~np.isnan(late)
    second = np.floor(since[known]).astype(np.int64)
    late = late[known]
    return [float(np.percentile(late[second == i], 99)) if np.any(second == i) else 0.0
            for i in range(int(second.max()) + 1 if second.size else 0)]


def summary(parts: list[F64]) -> dict[str, Any]:
    """Quantiles and histogram of the timed latencies in ``parts``; the untimed counted."""
    lat = np.concatenate(parts)
    untimed = int(np.isnan(lat).sum())
    lat = lat[~np.isnan(lat)]
    return {"timed": int(lat.shape[0]), "untimed": untimed,
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "p99.9": float(np.percentile(lat, 99.9)), "max": float(lat.max()),
            "histogram": histogram(lat)}  # fmt: skip


def _walk(data: bytes, stream: str) -> tuple[I64, I64]:
    """The SoupBinTCP packets of a server's stream: each Sequenced Data's number (events: its
    record's source) and the offset of its last byte. Packets are framed as blocks are (a u16
    length first), so the compiled block walk finds them; the rest is vectorised."""
    offsets, _ = offsets_of(data)
    raw = np.frombuffer(data, dtype=np.uint8)
    kinds = raw[offsets + 2]
    last = offsets + 1 + ((raw[offsets].astype(np.int64) << 8) | raw[offsets + 1])
    sequenced = np.flatnonzero(kinds == ord("S"))
    accepted = np.flatnonzero(kinds == ord("A"))
    if not accepted.shape[0] or (sequenced.shape[0] and sequenced[0] < accepted[0]):
        raise RuntimeError("the stream does not begin with its Login Accepted")
    at = int(offsets[accepted[0]])
    first = int(data[at + 13 : at + 33])  # session (10), then the sequence number (20, ASCII)
    if stream == "events":  # the record's source, u64 little-endian 10 bytes into it
        where = offsets[sequenced][:, None] + 3 + 10 + np.arange(8)
        got = raw[where].copy().view("<u8").reshape(-1).astype(np.int64)
    else:
        got = first + np.arange(sequenced.shape[0], dtype=np.int64)
    return got, last[sequenced]


# What the plant counted in a round: how it got through it (gaps on its lines, clients it cut or
# left to catch up).
PLANT_FIGURES = ("gaps_seen", "lost_messages", "slow_consumers", "over_budget_cuts",
                 "deferred_pushes", "too_old_logins", "gc_collections")


def histogram(seconds: F64) -> list[list[float]]:
    """Log buckets, 4 per octave from 1 us: [upper bound in seconds, count] where count > 0."""
    edges = 1e-6 * 2.0 ** (np.arange(0, 4 * 24) / 4)
    counts, _ = np.histogram(np.clip(seconds, 0, edges[-1]), bins=np.concatenate([[0], edges]))
    return [[float(f"{e:.3g}"), int(c)] for e, c in zip(edges, counts, strict=True) if c]


class Attack:
    """``bench/hostile.py`` on one core against every port of the plant, and beside it a login
    every half second from 127.0.0.1 (answered within 100 ms?) and the plant's RSS."""

    def __init__(self, setup: Setup, plant: int) -> None:
        self.process = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, str(Path(__file__).parent / "hostile.py"),
             "--ports", *(str(e.port) for e in (setup.itch, setup.events, setup.glimpse))],
            stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self.process.stdout is not None
        self.ready = json.loads(self.process.stdout.readline())
        self.logins: list[float | None] = []
        self.rss = 0
        self._stop = threading.Event()
        self._probe = threading.Thread(target=self._probing, args=(setup.itch.port, plant))
        self._probe.start()

    def _probing(self, port: int, plant: int) -> None:
        while not self._stop.wait(0.5):
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    sock.sendall(LOGIN)
                    answered = sock.recv(3)[2:3] == b"A"
            except OSError:
                answered = False
            self.logins.append(time.monotonic() - started if answered else None)
            with open(f"/proc/{plant}/status") as f:
                rss = next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS:"))
            self.rss = max(self.rss, rss)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._probe.join()
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=60)
        answered = [t for t in self.logins if t is not None]
        return {"established": self.ready, "done": json.loads(out.strip().splitlines()[-1]),
                "logins": len(self.logins), "answered": len(answered),
                "within_100ms": sum(t <= 0.1 for t in answered),
                "login_max": max(answered, default=None), "plant_rss_peak": self.rss}


def one_run(args: argparse.Namespace, work: Path, index: int) -> dict[str, Any]:
    attacked = args.hostile and index % 2 == 1  # rounds alternate: quiet, attacked, quiet...
    setup = Setup.free()
    config = work / f"plant{index}.toml"
    sent_log = work / f"sent{index}.npy"
    reads = work / f"reads{index}.npz"
    config.write_text(setup.config(args.set))
    command = ["-m", "tickerplant"] if not args.gc_off else [
        "-c", "import gc, sys; from tickerplant.cli import main; gc.disable(); sys.exit(main())"]
    plant = subprocess.Popen([sys.executable, *command, "run", str(config), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    clients = None
    capture = None
    attack: Attack | None = None
    attacks: dict[str, Any] = {}
    try:
        wait_listening(setup.itch, 60, "the plant")
        stream = setup.events if args.stream == "events" else setup.itch
        ports = free_ports(args.clients)
        sampled = ports[: args.sampled]
        lines = f"udp dst port {setup.line_a.port} or udp dst port {setup.line_b.port}"
        tcp = " or ".join(f"dst port {p}" for p in sampled)
        cap = work / f"run{index}.pcapng"
        capture = Capture(cap, f"{lines} or (tcp src port {stream.port} and ({tcp}))")
        clients = subprocess.Popen([sys.executable, "-c", CLIENTS, stream.host, str(stream.port),
                                    str(args.seconds + 120), str(reads), str(args.sampled),
                                    str(RECORDED_READS), *map(str, ports)],
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert clients.stdout is not None
        if clients.stdout.readline().strip() != "connected":
            raise RuntimeError("the clients did not connect")
        if attacked:
            attack = Attack(setup, plant.pid)
        exchange = subprocess.run(
            [sys.executable, "-m", "tickerplant", "exchange", "--json",
             "--line-a", str(setup.line_a), "--line-b", str(setup.line_b),
             "--rerequest", str(setup.rerequest), "--replay", str(setup.replay),
             "--rate", str(args.rate), "--messages", str(int(args.rate * args.seconds)),
             "--drop-a", str(args.drop_a), "--eos-seconds", "1", "--sent-log", str(sent_log)],
            check=True, capture_output=True, text=True, timeout=args.seconds + 300)  # fmt: skip
        published = json.loads(exchange.stdout)["published"]
        if attack is not None:
            attacks = attack.stop()
            attack = None
        received = [int(n) for n in clients.stdout.readline().split()]  # they end at End of Session
        clients.wait(30)
        said = capture.stop()
        capture = None
    finally:
        if attack is not None:
            attack.stop()
        if capture is not None:
            capture.stop()
        if clients is not None and clients.poll() is None:
            clients.kill()
        plant.send_signal(signal.SIGTERM)
        out, _ = plant.communicate(timeout=30)
    figures = json.loads(out) if out.strip() else {}
    loop = figures.get("loop_lag_seconds", {})
    first, wire = first_copies(cap, setup)
    sent_first, sent = sent_copies(sent_log)
    seconds: list[list[float]] = []  # each sampled client's p99 (b) in each second of the run
    measured: dict[str, list[F64]] = {m: [] for m in MEASURES}
    with np.load(reads, allow_pickle=False) as recorded:
        capped = bool(recorded["capped"])
        for client, (port, got) in enumerate(zip(sampled, received, strict=False)):
            numbers, at, size = client_times(cap, stream.port, port, args.stream)
            if size != got:
                raise RuntimeError(f"the capture holds {size} bytes to client port {port}, it "
                                   f"read {got}: dumpcap missed segments ({said})")  # fmt: skip
            measured["wire_to_client"].append(latencies(numbers, at, first, wire))
            numbers, at, size = client_reads(recorded, client, args.stream)
            if size != got and not capped:
                raise RuntimeError(f"client port {port} kept {size} bytes of the {got} it read")
            measured["sent_to_read"].append(latencies(numbers, at, sent_first, sent))
            seconds.append(by_second(measured["sent_to_read"][-1], at - sent[0]))
    for done in (cap, sent_log, reads):
        done.unlink()
    return {"published": published, "dumpcap": said, "reads_capped": capped,
            "attacked": attacked, "attacks": attacks,
            "loop_lag": {k: loop.get(k) for k in ("count", "p50", "p99", "max")},
            "plant": {k: figures.get(k) for k in PLANT_FIGURES},
            "p99_by_second": [round(max(v), 4) for v in zip(*seconds, strict=False)],
            **{m: summary(parts) for m, parts in measured.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=100_000, help="messages/s the exchange sends")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--sampled", type=int, default=2,
                        help="clients whose segments are captured (a), whose reads are kept (b)")
    parser.add_argument("--stream", choices=("itch", "events"), default="itch")
    parser.add_argument("--drop-a", type=float, default=0.0, help="loss injected on line A")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--hostile", action="store_true",
                        help="every other round, bench/hostile.py on core 1 against every port "
                        "(issue 21: the good clients' p99 within 20 %% of the quiet rounds')")
    parser.add_argument("--gc-off", action="store_true",
                        help="the plant with the cyclic garbage collector off: its share of "
                        "the tail")
    parser.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                        help="a plant setting away from its default (TOML value), e.g. "
                        "glimpse.refresh=3600")  # fmt: skip
    args = parser.parse_args()
    if shutil.which("tshark") is None:
        sys.exit("tshark is not installed (apt-get install tshark)")
    base = {"bench": BENCH, "subject": "tickerplant", "stream": args.stream, "rate": args.rate,
            "clients": args.clients, "drop_a": args.drop_a, "settings": args.set,
            "gc_off": args.gc_off}  # fmt: skip
    rounds = []
    with tempfile.TemporaryDirectory(prefix="wire-latency-") as tmp:
        for i in range(args.repeat):
            run = one_run(args, Path(tmp), i)
            rounds.append(run)
            # What each measure's figures rest on: the capture for (a), the clients' record of
            # their reads for (b).
            said = {"wire_to_client": {"dumpcap": run["dumpcap"]},
                    "sent_to_read": {"reads_capped": run["reads_capped"]}}  # fmt: skip
            for m in MEASURES:
                got = run[m]
                for q in QUANTILES:
                    print(json.dumps({**base, "round": i, "metric": f"{m}_{q}",
                                      "value": round(got[q], 7), "unit": "s"}), flush=True)
                print(json.dumps({**base, "round": i, "metric": f"{m}_histogram",
                                  "value": got["timed"], "unit": "messages",
                                  "buckets": got["histogram"], "untimed": got["untimed"],
                                  "published": run["published"], **said[m],
                                  "plant_loop_lag_seconds": run["loop_lag"],
                                  "plant": run["plant"],
                                  "p99_by_second": run["p99_by_second"]}),
                      flush=True)  # fmt: skip
    for m in MEASURES:
        for q in QUANTILES:
            values = [r[m][q] for r in rounds]
            print(json.dumps({**base, "metric": f"{m}_{q}_median",
                              "value": round(float(np.median(values)), 7), "unit": "s",
                              "rounds": [round(v, 7) for v in values]}), flush=True)  # fmt: skip
    if args.hostile:
        quiet = [r for r in rounds if not r["attacked"]]
        attacked = [r for r in rounds if r["attacked"]]
        for m in MEASURES:
            calm = float(np.median([r[m]["p99"] for r in quiet]))
            ratios = [round(r[m]["p99"] / calm, 3) for r in attacked]
            row = {**base, "metric": f"{m}_p99_attacked_over_quiet",
                   "value": float(np.median(ratios)) if ratios else None, "unit": "x",
                   "target": 1.2, "rounds": ratios, "attacks": [r["attacks"] for r in attacked]}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
