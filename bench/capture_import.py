"""Capture import: packets/s from a pcap of both MoldUDP64 lines to the arbitrated stream.

The capture (written once into bench/data): the generated day's first ``--messages`` messages,
``--per`` to a packet, on lines A and B, each line losing ``--loss`` of its packets (never the same
packet on both, so that the stream is whole), Ethernet frames in a microsecond pcap. Subjects, on
the same file in the same rounds:

- tickerplant: ``CaptureFeed`` (the listing pass, then arbitration through the feed session) to
  the last message, the stream checked against the day;
- dpkt: the usual Python way, ``dpkt.pcap.Reader`` + ``dpkt.ethernet.Ethernet`` per packet, the
  MoldUDP64 header unpacked, first copy kept, early packets held until the gap before them fills;
  its stream checked too;
- tshark: ``tshark -T fields -e moldudp64.sequence`` with both ports decoded as MoldUDP64,
  extracting the sequence numbers only (no stream).

Target: tickerplant >= 10x the dpkt loop. Rounds interleave the subjects; figures are medians and
the ratio is the median of each round's ratio. One JSON object per line.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from book_throughput import DATA, make_file
from plant_run import emitter
from tickerplant.capture.itch_file import read_chunks
from tickerplant.capture.lines import CaptureFeed
from tickerplant.wire import moldudp64 as mold
from tickerplant.wire.blocks import offsets_of

BENCH = "capture_import"
PORTS = (31001, 31002)
GROUPS = ("239.192.77.1", "239.192.77.2")


emit = emitter(BENCH)


def make_capture(path: Path, stream: bytes, per: int, loss: float) -> int:
    """Write the capture; returns its packet count."""
    offsets, _ = offsets_of(stream)
    bounds = [*offsets[::per].tolist(), len(stream)]
    rng = np.random.default_rng(7)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    packets = 0
    t = 1_764_000_000 * 1_000_000
    session = b"BENCH00001"
    for k in range(len(bounds) - 1):
        seq = k * per + 1
        count = min(per, len(offsets) - k * per)
        payload = mold.encode_blocks(session, seq, count, stream[bounds[k] : bounds[k + 1]])
        lost_a = False
        for line in (0, 1):
            t += 1
            if not lost_a and rng.random() < loss:  # never on both: the stream stays whole
                lost_a = line == 0
                continue
            udp = struct.pack(">HHHH", 40000, PORTS[line], 8 + len(payload), 0) + payload
            group = bytes(map(int, GROUPS[line].split(".")))
            ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 1, 17, 0,
                             bytes([10, 0, 0, 1]), group)  # fmt: skip
            frame = bytes(6) + bytes(6) + b"\x08\x00" + ip + udp
            out.append(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame),
                                   len(frame)) + frame)  # fmt: skip
            packets += 1
    path.write_bytes(b"".join(out))
    return packets


def ours(path: Path) -> tuple[int, str, int]:
    feed = CaptureFeed(path)
    digest = hashlib.sha256()
    for blocks, _ in feed.chunks():
        digest.update(blocks)
    packets = feed.summary.counters.packets
    lost = feed.figures()["lost_messages"]
    feed.close()
    return packets, digest.hexdigest(), lost


def dpkt_loop(path: Path) -> tuple[int, str, int]:
    import dpkt

    digest = hashlib.sha256()
    expected = 1
    held: dict[int, tuple[int, bytes]] = {}
    packets = 0
    with path.open("rb") as f:
        for _, buf in dpkt.pcap.Reader(f):
            packets += 1
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP) or not isinstance(ip.data, dpkt.udp.UDP):
                continue
            udp = ip.data
            if udp.dport not in PORTS:
                continue
            data = udp.data
            seq, count = struct.unpack_from(">QH", data, 10)
            if count in (0, 0xFFFF) or seq + count <= expected:
                continue  # heartbeat, end of session, or the other line's copy came first
            if seq > expected:
                held.setdefault(seq, (count, data[20:]))
                continue
            digest.update(data[20:])  # every copy is framed alike: seq == expected here
            expected = seq + count
            while expected in held:
                count, blocks = held.pop(expected)
                digest.update(blocks)
                expected += count
    return packets, digest.hexdigest(), len(held)


def tshark(path: Path) -> tuple[int, str, int]:
    exe = shutil.which("tshark")
    assert exe is not None
    args = [exe, "-r", str(path), "-T", "fields", "-e", "moldudp64.sequence"]
    for port in PORTS:
        args += ["-d", f"udp.port=={port},moldudp64"]
    out = subprocess.run(args, capture_output=True, check=True, timeout=3600).stdout
    return out.count(b"\n"), "", 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2_600_000)  # > 1M packets
    ap.add_argument("--per", type=int, default=5, help="messages per packet")
    ap.add_argument("--loss", type=float, default=0.01, help="each line's packet loss")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    day = DATA / "synthetic-5000000-500.itch"
    make_file(day, 5_000_000, 500, seed=1)
    stream = b"".join(read_chunks(day))
    cut = offsets_of(stream)[0]
    if args.messages < len(cut):
        stream = stream[: int(cut[args.messages])]
    path = DATA / f"capture-{args.messages}-{args.per}-{args.loss}.pcap"
    if not path.exists():
        make_capture(path, stream, args.per, args.loss)
    want = hashlib.sha256(stream).hexdigest()
    subjects = {"tickerplant": ours}
    try:
        import dpkt  # noqa: F401

        subjects["dpkt"] = dpkt_loop
    except ImportError as err:
        emit("dpkt", "skipped", 0, "", reason=str(err))
    if shutil.which("tshark"):
        subjects["tshark"] = tshark
    else:
        emit("tshark", "skipped", 0, "", reason="tshark is not installed")
    info = {"file": path.name, "bytes": path.stat().st_size, "messages": args.messages}
    ours(path)  # compiled kernels loaded, the file in the page cache
    seconds: dict[str, list[float]] = {name: [] for name in subjects}
    ratios: dict[str, list[float]] = {name: [] for name in subjects if name != "tickerplant"}
    packets = 0
    for _ in range(args.rounds):
        for name, run in subjects.items():
            t0 = time.perf_counter()
            packets, digest, left = run(path)
            seconds[name].append(time.perf_counter() - t0)
            if digest:
                assert digest == want and left == 0, (name, left)
        for name in ratios:
            ratios[name].append(seconds[name][-1] / seconds["tickerplant"][-1])
    info["packets"] = packets
    for name, runs in seconds.items():
        med = statistics.median(runs)
        emit(name, "packets_per_s", round(packets / med), "packets/s",
             runs_s=[round(r, 3) for r in runs], **info)  # fmt: skip
    for name, rs in ratios.items():
        ratio = statistics.median(rs)
        emit("tickerplant", f"speedup_over_{name}", round(ratio, 2), "x",
             target=10 if name == "dpkt" else None,
             ratios=[round(r, 2) for r in rs], **info)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
