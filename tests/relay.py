"""A line relay for the loss matrix: what nftables cannot do to a packet (reorder it, send it
twice), done in user space on the feed's host.

It joins the exchange's A and B groups on the host's network interface and sends every datagram
on, unchanged, to a group of the same line on the host's loopback, where the feed listens:
``--dup`` percent of them twice, ``--reorder`` percent held back and sent after the next one of
the same line. It runs until SIGTERM, then prints what it did as one JSON line.

    python tests/relay.py --interface 10.1.2.2 --line 239.1.1.1:30001=239.7.1.1:30001 \\
        --line 239.1.1.2:30002=239.7.1.2:30002 --dup 5 --reorder 5 --seed 1
"""

from __future__ import annotations

import argparse
import json
import random
import selectors
import signal
import socket
import struct
import sys
from dataclasses import asdict, dataclass


@dataclass
class Counts:
    received: int = 0
    sent: int = 0
    duplicated: int = 0
    reordered: int = 0


def receiver(group: str, port: int, interface: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((group, port))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton(interface)))
    sock.setblocking(False)
    return sock


def endpoint(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interface", required=True, help="the host's address facing the exchange")
    parser.add_argument("--line", action="append", required=True, metavar="IN=OUT")
    parser.add_argument("--dup", type=float, default=0.0, help="percent sent twice")
    parser.add_argument("--reorder", type=float, default=0.0, help="percent sent after the next")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    out.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    selector = selectors.DefaultSelector()
    held: dict[int, bytes] = {}  # a line's datagram held back, sent after its next
    counts = Counts()
    key_targets: dict[int, tuple[str, int]] = {}
    for n, line in enumerate(args.line):
        source, target = line.split("=")
        key_targets[n] = endpoint(target)
        selector.register(receiver(*endpoint(source), args.interface), selectors.EVENT_READ,
                          (n, endpoint(target)))
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    print(json.dumps({"ready": True}), flush=True)
    while not stopping:
        ready = selector.select(timeout=0.02)
        if not ready:  # a line quiet a while: what it held goes now (no next to follow)
            for line, late in list(held.items()):
                out.sendto(late, key_targets[line])
                counts.sent += 1
            held.clear()
        for key, _ in ready:
            line, target = key.data
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            while True:
                try:
                    datagram = sock.recv(65536)
                except BlockingIOError:
                    break
                counts.received += 1
                if line not in held and rng.random() * 100 < args.reorder:
                    held[line] = datagram
                    counts.reordered += 1
                    continue
                copies = 2 if rng.random() * 100 < args.dup else 1
                counts.duplicated += copies - 1
                for _ in range(copies):
                    out.sendto(datagram, target)
                    counts.sent += 1
                late = held.pop(line, None)
                if late is not None:
                    out.sendto(late, target)
                    counts.sent += 1
    print(json.dumps(asdict(counts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
