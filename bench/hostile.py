"""Hostile clients on every TCP port of a plant (issue 21), for ``bench/wire_latency.py
--hostile``: run pinned to one core (``taskset -c 1``) while a good client is timed.

On each of ``--ports`` (itch, events, glimpse) from loopback addresses of their own:
``--idle`` connections that never log in (127.0.0.3), ``--stalled`` that log in from 1 and never
read (127.0.0.2, a small receive buffer), ``--half`` that send half a Login Request and stop
(127.0.0.4), and, until told to stop, a stream of garbage and oversize frames on fresh
connections (127.0.0.5) and logins with a wrong password (127.0.0.6: refused or throttled where
the plant has users; accepted where it has none). Runs until SIGTERM, then prints one JSON line
of what it did.

    taskset -c 1 python bench/hostile.py --ports 31010 31012 31011 [--idle 1000] [--stalled 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import socket
import sys
import time

from tickerplant.wire.soupbintcp import LoginRequest, encode


def connect(port: int, source: str, rcvbuf: int = 0) -> socket.socket | None:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(2)
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", type=int, nargs="+", required=True)
    parser.add_argument("--idle", type=int, default=1000, help="connections never logging in")
    parser.add_argument("--stalled", type=int, default=1000, help="logged in, never reading")
    parser.add_argument("--half", type=int, default=100, help="half a login, then nothing")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    _, most = resource.getrlimit(resource.RLIMIT_NOFILE)  # thousands of sockets held
    resource.setrlimit(resource.RLIMIT_NOFILE, (most, most))
    rng = random.Random(args.seed)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    held: list[socket.socket] = []
    done = {"idle": 0, "stalled": 0, "half": 0, "garbage": 0, "wrong_passwords": 0,
            "refused": 0}  # fmt: skip
    login = encode(LoginRequest(b"", b"", b"", 1))
    plan = [("idle", args.idle, "127.0.0.3"), ("stalled", args.stalled, "127.0.0.2"),
            ("half", args.half, "127.0.0.4")]  # fmt: skip
    for kind, count, source in plan:
        for i in range(count):
            if stopping:
                break
            sock = connect(args.ports[i % len(args.ports)], source,
                           4096 if kind == "stalled" else 0)  # fmt: skip
            if sock is None:
                done["refused"] += 1
                continue
            if kind == "stalled":
                sock.sendall(login)
            elif kind == "half":
                sock.sendall(login[: len(login) // 2])
            held.append(sock)
            done[kind] += 1
    print(json.dumps({"ready": True, **done}), flush=True)
    while not stopping:  # garbage, oversize frames and wrong passwords, on fresh connections
        port = rng.choice(args.ports)
        wrong = rng.random() < 0.5
        sock = connect(port, "127.0.0.6" if wrong else "127.0.0.5")
        if sock is None:
            done["refused"] += 1
            time.sleep(0.01)
            continue
        try:
            if wrong:
                sock.sendall(encode(LoginRequest(b"good", b"wrong", b"", 1)))
                done["wrong_passwords"] += 1
            else:
                sock.sendall(rng.choice([os.urandom(rng.randrange(1, 300)),
                                         b"\xff\xff" + os.urandom(200)]))  # 64 KiB announced
                done["garbage"] += 1
        except OSError:
            done["refused"] += 1
        sock.close()
        time.sleep(0.002)
    for sock in held:
        sock.close()
    print(json.dumps(done), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
