"""``tickerplant recovery``: the exchange's re-request and replay servers in a process apart from
its publisher, following the journal file the publisher writes; killed and started again, it
answers the same."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from harness import ports, recovery_host, source_stream
from tickerplant.client import subscribe
from tickerplant.exchange.child import ExchangeProcess
from tickerplant.receive.events import Batch
from tickerplant.wire import moldudp64 as mold
from tickerplant.wire.blocks import iter_messages

MESSAGES = 100_000


@pytest.mark.slow
def test_a_recovery_host_apart_from_the_publisher_answers_re_requests_and_replays(
    tmp_path: Path,
) -> None:
    p = ports()
    source = list(iter_messages(source_stream(41, 50, MESSAGES)))

    def ask(first: int, count: int) -> list[bytes]:
        """A re-request, answered (retried while the host starts)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.2)
            for _ in range(100):
                sock.sendto(mold.encode_request(session, first, count), p.rerequest.pair)
                try:
                    packet = mold.decode_packet(sock.recv(2048))
                except TimeoutError:
                    continue
                return list(iter_messages(packet.blocks))
        raise AssertionError("no answer to a re-request in 20 s")

    async def replayed() -> list[bytes]:
        got: list[bytes] = []
        async for record in subscribe(p.replay, first=1, retry=0.1):
            if isinstance(record, Batch):
                got.extend(iter_messages(record.blocks))
        return got

    async def main() -> list[bytes]:
        async with ExchangeProcess(
            p.line_a, p.line_b, None, None, "--messages", str(MESSAGES), "--seed", "41",
            "--symbols", "50", "--rate", "200000", "--eos-seconds", "1",
            "--journal-dir", str(tmp_path),
        ) as exchange:  # fmt: skip
            await exchange.summary()
        return await asyncio.wait_for(replayed(), 60)

    session = mold.session_bytes("TP00000001")
    host = recovery_host(tmp_path, p)
    try:
        got = asyncio.run(main())  # the session whole, then End of Session: the file is marked
        assert got == source
        assert ask(500, 3) == source[499:502]
        host.kill()  # killed, and started again: it reads the file back and answers the same
        host.wait()
        host = recovery_host(tmp_path, p)
        assert ask(99_990, 20) == source[99_989:]  # (to the end: 11 of the 20 exist)
    finally:
        host.kill()
        host.wait()
