"""``python -m tickerplant.warm``: fill numba's on-disk cache with every kernel the demo, the plant
and the exchange load, so that their first run loads machine code instead of compiling it (~20 s
on a two-core machine, with nothing on screen and every counter at zero meanwhile).

It runs a short demo on ports of its own: the plant in this process and the exchange in a child,
each compiling and caching exactly the kernels, with exactly the argument types, that a real run
asks for. A list of kernels to call by hand would drift from the call sites (a readonly array or
another dtype is another signature, compiled again on the day). ``make`` runs it after ``pip
install``; run it again after editing a kernel.
"""

from __future__ import annotations

import socket
import sys
import time

from tickerplant.demo import DemoConfig, run_demo
from tickerplant.endpoint import LINE_A, LINE_B, Endpoint
from tickerplant.io.loop import run_loop
from tickerplant.jit import PLAIN_PYTHON
from tickerplant.ops import logs

# Enough for every stage to see a batch, a gap and a repair; the compiling is what takes time.
SECONDS = 1.0
RATE = 50_000


def _free(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config() -> DemoConfig:
    """The demo on free ports (a demo or a test may hold the default ones), serving no metrics."""
    udp, tcp = socket.SOCK_DGRAM, socket.SOCK_STREAM
    return DemoConfig(
        seconds=SECONDS, rate=RATE, metrics=None,
        line_a=Endpoint(LINE_A.host, _free(udp)), line_b=Endpoint(LINE_B.host, _free(udp)),
        rerequest=Endpoint("127.0.0.1", _free(udp)), replay=Endpoint("127.0.0.1", _free(tcp)),
        itch=Endpoint("127.0.0.1", _free(tcp)), glimpse=Endpoint("127.0.0.1", _free(tcp)),
        events=Endpoint("127.0.0.1", _free(tcp)),
    )  # fmt: skip


def main() -> int:
    if PLAIN_PYTHON:
        print("tickerplant.warm: NUMBA_DISABLE_JIT is set: no kernels to compile", file=sys.stderr)
        return 0
    logs.setup(level="error")  # the demo's own slow consumers and reconnects are no news here
    started = time.monotonic()
    result = run_loop(run_demo(config()))
    took = time.monotonic() - started
    if not result["identical"]:
        # The cache holds whatever compiled; a run that went wrong may not have reached them all.
        print(f"tickerplant.warm: the warm-up demo's verdict is NOT identical ({took:.1f} s):"
              " kernels it did not reach compile on first use", file=sys.stderr)  # fmt: skip
        return 1
    print(f"tickerplant.warm: kernels compiled into numba's cache ({took:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
