"""Wire to client latency as a packet capture sees it, issue 19's measure (a): the kernel's
timestamps, never our clocks.

The exchange simulator publishes a synthetic day at ``--rate`` on both lines (loss injected on
line A with ``--drop-a``), ``tickerplant run`` with its defaults serves it, ``--clients``
clients on one stream from now only drain their sockets (one process, heartbeating), and
dumpcap on ``lo`` keeps both lines and the TCP segments the plant sends to ``--sampled`` of the
clients. Afterwards tshark reads the capture: each MoldUDP64 packet's sequence and count (the
first copy of a message on either line is its wire time), and each segment's bytes (reassembled
per connection, the SoupBinTCP framing walked: the segment that carried a message's last byte is
its time at the client's socket). On ``events`` a record is timed from the first copy of the
``itch`` message that raised it (its ``source``). A message never on either line (lost on both,
repaired by re-request or replay) has no wire time: it is counted, not timed.

One JSON object per line: p50, p99, p99.9 and max per run (``subject`` tickerplant: the
anchors are other products' published figures, see issue 19), and the histogram (log buckets, 4
per octave, from 1 us). ``--repeat`` runs rounds and the summary gives each round's figures and
their median.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tickerplant.endpoint import Endpoint
from tickerplant.wire.blocks import offsets_of

BENCH = "wire_latency"

# The drain-only clients: one process, a connection from each local port given (so that a
# capture can be filtered to them before they connect, and hold their handshakes and logins),
# each logged in from now (sequence 0), heartbeating every second and reading everything into
# one buffer until the server closes.
CLIENTS = r"""
import selectors, socket, sys, time
host, port, deadline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
login = b"L" + b" " * 6 + b" " * 10 + b" " * 10 + b"0".rjust(20)
sel = selectors.DefaultSelector()
socks = []
for local in sys.argv[4:]:
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
buf = bytearray(1 << 20)
beat, open_ = time.monotonic() + 1, set(socks)
end = time.monotonic() + deadline
while open_ and time.monotonic() < end:
    for key, _ in sel.select(0.2):
        s = key.fileobj
        try:
            k = s.recv_into(buf)
        except (BlockingIOError, ConnectionError):
            k = 0 if s in open_ else -1
        if k == 0:
            sel.unregister(s)
            open_.discard(s)
        elif k > 0:
            got[s] += k
    if time.monotonic() >= beat:
        beat += 1
        for s in open_:
            try:
                s.send(b"\x00\x01R")
            except OSError:
                pass
print(" ".join(str(got[s]) for s in socks), flush=True)
"""


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        udp, tcp = socket.SOCK_DGRAM, socket.SOCK_STREAM
        return cls(Endpoint("239.192.96.1", free_port(udp)),
                   Endpoint("239.192.96.2", free_port(udp)),
                   Endpoint("127.0.0.1", free_port(udp)), Endpoint("127.0.0.1", free_port(tcp)),
                   Endpoint("127.0.0.1", free_port(tcp)), Endpoint("127.0.0.1", free_port(tcp)),
                   Endpoint("127.0.0.1", free_port(tcp)))  # fmt: skip

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


def first_copies(cap: Path, setup: Setup) -> tuple[int, npt.NDArray[np.float64]]:
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
    first = int(seqs.min())
    end = int((seqs + counts).max())
    out = np.full(end - first, np.inf)
    numbers = np.repeat(seqs - first, counts) + _ramp(counts)
    np.minimum.at(out, numbers, np.repeat(times, counts))
    out[np.isinf(out)] = np.nan
    return first, out


def _ramp(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """0, 1, ... count-1 for each count, concatenated."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum()), dtype=np.int64) - starts


def client_times(cap: Path, server: int, client: int, stream: str
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], int]:  # fmt: skip
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
    numbers, last_byte = _walk(bytes(data), stream)
    where = np.searchsorted(np.array(ends), last_byte, side="right")
    return numbers, np.array(times)[where], len(data)


def _walk(data: bytes, stream: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
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


def histogram(seconds: npt.NDArray[np.float64]) -> list[list[float]]:
    """Log buckets, 4 per octave from 1 us: [upper bound in seconds, count] where count > 0."""
    edges = 1e-6 * 2.0 ** (np.arange(0, 4 * 24) / 4)
    counts, _ = np.histogram(np.clip(seconds, 0, edges[-1]), bins=np.concatenate([[0], edges]))
    return [[float(f"{e:.3g}"), int(c)] for e, c in zip(edges, counts, strict=True) if c]


def one_run(args: argparse.Namespace, work: Path, index: int) -> dict[str, Any]:
    setup = Setup.free()
    config = work / f"plant{index}.toml"
    config.write_text(setup.config(args.set))
    command = ["-m", "tickerplant"] if not args.gc_off else [
        "-c", "import gc, sys; from tickerplant.cli import main; gc.disable(); sys.exit(main())"]
    plant = subprocess.Popen([sys.executable, *command, "run", str(config), "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    clients = None
    capture = None
    try:
        wait_listening(setup.itch, 60, "the plant")
        stream = setup.events if args.stream == "events" else setup.itch
        ports = [free_port() for _ in range(args.clients)]
        sampled = ports[: args.sampled]
        lines = f"udp dst port {setup.line_a.port} or udp dst port {setup.line_b.port}"
        tcp = " or ".join(f"dst port {p}" for p in sampled)
        cap = work / f"run{index}.pcapng"
        capture = Capture(cap, f"{lines} or (tcp src port {stream.port} and ({tcp}))")
        clients = subprocess.Popen([sys.executable, "-c", CLIENTS, stream.host, str(stream.port),
                                    str(args.seconds + 120), *map(str, ports)],
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert clients.stdout is not None
        if clients.stdout.readline().strip() != "connected":
            raise RuntimeError("the clients did not connect")
        exchange = subprocess.run(
            [sys.executable, "-m", "tickerplant", "exchange", "--json",
             "--line-a", str(setup.line_a), "--line-b", str(setup.line_b),
             "--rerequest", str(setup.rerequest), "--replay", str(setup.replay),
             "--rate", str(args.rate), "--messages", str(int(args.rate * args.seconds)),
             "--drop-a", str(args.drop_a), "--eos-seconds", "1"],
            check=True, capture_output=True, text=True, timeout=args.seconds + 300)  # fmt: skip
        published = json.loads(exchange.stdout)["published"]
        received = [int(n) for n in clients.stdout.readline().split()]  # they end at End of Session
        clients.wait(30)
        said = capture.stop()
        capture = None
    finally:
        if capture is not None:
            capture.stop()
        if clients is not None and clients.poll() is None:
            clients.kill()
        plant.send_signal(signal.SIGTERM)
        out, _ = plant.communicate(timeout=30)
    figures = json.loads(out) if out.strip() else {}
    loop = figures.get("loop_lag_seconds", {})
    first, wire = first_copies(cap, setup)
    latencies = []
    for port, got in zip(sampled, received, strict=False):
        numbers, at, size = client_times(cap, stream.port, port, args.stream)
        if size != got:
            raise RuntimeError(f"the capture holds {size} bytes to client port {port}, it read "
                               f"{got}: dumpcap missed segments ({said})")  # fmt: skip
        index_ = numbers - first
        known = (index_ >= 0) & (index_ < wire.shape[0])
        sent = np.full(numbers.shape[0], np.nan)
        sent[known] = wire[index_[known]]
        latencies.append(at - sent)
    lat = np.concatenate(latencies)
    untimed = int(np.isnan(lat).sum())
    lat = lat[~np.isnan(lat)]
    cap.unlink()
    return {"published": published, "timed": int(lat.shape[0]), "untimed": untimed,
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "p99.9": float(np.percentile(lat, 99.9)), "max": float(lat.max()),
            "histogram": histogram(lat), "dumpcap": said,
            "loop_lag": {k: loop.get(k) for k in ("count", "p50", "p99", "max")}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=100_000, help="messages/s the exchange sends")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--sampled", type=int, default=2, help="clients whose segments are kept")
    parser.add_argument("--stream", choices=("itch", "events"), default="itch")
    parser.add_argument("--drop-a", type=float, default=0.0, help="loss injected on line A")
    parser.add_argument("--repeat", type=int, default=1)
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
            for q in ("p50", "p99", "p99.9", "max"):
                print(json.dumps({**base, "round": i, "metric": f"wire_to_client_{q}",
                                  "value": round(run[q], 7), "unit": "s"}), flush=True)
            print(json.dumps({**base, "round": i, "metric": "wire_to_client_histogram",
                              "value": run["timed"], "unit": "messages",
                              "buckets": run["histogram"], "untimed": run["untimed"],
                              "published": run["published"], "dumpcap": run["dumpcap"],
                              "plant_loop_lag_seconds": run["loop_lag"]}),
                  flush=True)  # fmt: skip
    for q in ("p50", "p99", "p99.9", "max"):
        values = [r[q] for r in rounds]
        print(json.dumps({**base, "metric": f"wire_to_client_{q}_median",
                          "value": round(float(np.median(values)), 7), "unit": "s",
                          "rounds": [round(v, 7) for v in values]}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
