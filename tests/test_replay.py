"""The SoupBinTCP replay server and client over real loopback TCP."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np
import pytest

from harness import until
from tickerplant.distribute.fanout import FanOut, FanOutLimits
from tickerplant.distribute.journal import Journal
from tickerplant.io.replay_client import ReplayClient, ReplayError
from tickerplant.io.soupbin import SoupServer
from tickerplant.wire.blocks import iter_messages
from tickerplant.wire.soupbintcp import (
    ClientHeartbeat,
    Debug,
    EndOfSession,
    Framer,
    LoginAccepted,
    LoginRequest,
    Packet,
    SequencedData,
    Side,
    encode,
)

SESSION = b"REPLAY0001"
SIZE = 24  # every test message: 8-byte sequence number, then filler


def messages(first: int, count: int) -> bytes:
    """A block stream of ``count`` messages that carry their own sequence numbers."""
    rows = np.zeros((count, 2 + SIZE), dtype=np.uint8)
    rows[:, 1] = SIZE
    rows[:, 2:10] = np.arange(first, first + count, dtype=">u8").view(np.uint8).reshape(count, 8)
    rows[:, 10:] = ord("m")
    return rows.tobytes()


class Received:
    """on_messages for tests: checks each run is contiguous and carries the right messages."""

    def __init__(self, first: int) -> None:
        self.next = first
        self.runs = 0

    def __call__(self, first: int, count: int, blocks: bytes) -> None:
        assert first == self.next, f"run starts at {first}, {self.next} expected"
        assert blocks == messages(first, count)
        self.next += count
        self.runs += 1


def run(
    main: Callable[[], Coroutine[Any, Any, None]], timeout: float = 30.0, uvloop: bool = False
) -> None:
    """On asyncio's own loop, or on uvloop as the commands run (its timers differ: a deadline
    already past gets a plain Handle)."""

    async def bounded() -> None:
        async with asyncio.timeout(timeout):
            await main()

    if uvloop:
        pytest.importorskip("uvloop").run(bounded())
    else:
        asyncio.run(bounded())


async def serving(
    journal: Journal, body: Callable[[SoupServer], Awaitable[None]], **kwargs: Any
) -> None:
    server = SoupServer(FanOut(journal, **kwargs), "127.0.0.1", 0)
    await server.start()
    try:
        await body(server)
    finally:
        await server.close()


def journal_of(count: int) -> Journal:
    journal = Journal(SESSION)
    journal.append(messages(1, count))
    return journal


class RawClient:
    """A hand-driven TCP peer, to act as clients our own ReplayClient would never be."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.framer = Framer(Side.SERVER)

    @classmethod
    async def login(cls, port: int, sequence: int, sock: socket.socket | None = None) -> RawClient:
        if sock is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        else:
            reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(encode(LoginRequest(b"", b"", b"", sequence)))
        return cls(reader, writer)

    async def packets(self, count: int) -> list[Packet]:
        got: list[Packet] = []
        while len(got) < count:
            got.extend(self.framer)
            if len(got) < count:
                data = await self.reader.read(1 << 16)
                assert data, f"closed after {got}"
                self.framer.feed(data)
        return got

    async def rest(self) -> list[Packet]:
        """Everything until the server closes the connection."""
        while data := await self.reader.read(1 << 20):
            self.framer.feed(data)
        return list(self.framer)


def test_fetch_delivers_the_range_in_runs_and_logs_out() -> None:
    async def body(server: SoupServer) -> None:
        got = Received(1)
        client = ReplayClient("127.0.0.1", server.port, SESSION, got)
        assert await client.fetch(1, 5000, timeout=10) == 5000
        assert client.stop_reason == "complete"
        assert got.next == 5001
        assert got.runs < 5000 // 10  # batches, not one call per message
        await until(lambda: server.clients == 0, 5, "the client gone after its logout")
        assert server.counters.logins == 1

    run(lambda: serving(journal_of(5000), body))


def test_fetch_of_a_middle_range_delivers_exactly_that_range() -> None:
    async def body(server: SoupServer) -> None:
        got = Received(100)
        client = ReplayClient("127.0.0.1", server.port, b"", got)
        assert await client.fetch(100, 250, timeout=10) == 250
        assert got.next == 251

    run(lambda: serving(journal_of(5000), body))


def test_late_join_fetches_from_one_to_the_current_end() -> None:
    async def body(server: SoupServer) -> None:
        got = Received(1)
        client = ReplayClient("127.0.0.1", server.port, SESSION, got)
        end = await client.next_sequence(timeout=5)
        assert end == 3001
        assert got.runs == 0
        assert await client.fetch(1, end - 1, timeout=10) == 3000

    run(lambda: serving(journal_of(3000), body))


def test_a_caught_up_client_gets_what_is_published_next() -> None:
    journal = journal_of(1000)

    async def body(server: SoupServer) -> None:
        got = Received(1)
        client = ReplayClient("127.0.0.1", server.port, SESSION, got)
        fetch = asyncio.create_task(client.fetch(1, 1500, timeout=10))
        await until(lambda: got.next == 1001, 5, lambda: f"1000 messages fetched ({got.next - 1})")
        for first in range(1001, 1501, 100):
            journal.append(messages(first, 100))
            server.publish()
        assert await fetch == 1500
        assert got.next == 1501

    run(lambda: serving(journal, body))


def test_login_at_zero_starts_with_the_next_message_published() -> None:
    journal = journal_of(50)

    async def body(server: SoupServer) -> None:
        raw = await RawClient.login(server.port, 0)
        assert await raw.packets(1) == [LoginAccepted(SESSION, 51)]
        journal.append(messages(51, 2))
        server.publish()
        assert await raw.packets(2) == [SequencedData(m) for m in iter_messages(messages(51, 2))]
        raw.writer.close()

    run(lambda: serving(journal, body))


def test_login_beyond_the_end_waits_for_that_message() -> None:
    journal = journal_of(1000)

    async def body(server: SoupServer) -> None:
        got = Received(1101)
        client = ReplayClient("127.0.0.1", server.port, SESSION, got)
        fetch = asyncio.create_task(client.fetch(1101, 1200, timeout=10))
        await until(lambda: server.counters.logins == 1, 5, "the client logged in")
        journal.append(messages(1001, 300))
        server.publish()
        assert await fetch == 1200
        assert got.next == 1201

    run(lambda: serving(journal, body))


def test_end_of_session_after_catching_up_and_for_later_logins() -> None:
    journal = journal_of(2000)

    async def body(server: SoupServer) -> None:
        got = Received(1)
        client = ReplayClient("127.0.0.1", server.port, SESSION, got)
        server.end_session()
        assert await client.fetch(1, 9999, timeout=10) == 2000
        assert client.stop_reason.startswith("end of session")
        raw = await RawClient.login(server.port, 1990)
        rest = await raw.rest()
        assert rest[0] == LoginAccepted(SESSION, 1990)
        assert len(rest) == 1 + 11 + 1 and rest[-1] == EndOfSession()
        assert server.counters.sessions_ended == 2

    run(lambda: serving(journal, body))


def test_a_wrong_password_is_rejected() -> None:
    async def body(server: SoupServer) -> None:
        bad = ReplayClient("127.0.0.1", server.port, SESSION, Received(1), "feed", "nope")
        with pytest.raises(ReplayError, match="not authorized"):
            await bad.fetch(1, 10, timeout=5)
        good = ReplayClient("127.0.0.1", server.port, SESSION, Received(1), "feed", "s3cret")
        assert await good.fetch(1, 10, timeout=5) == 10
        assert server.counters.rejected == 1

    run(lambda: serving(journal_of(10), body, credentials=(b"feed", b"s3cret")))


def test_another_session_is_not_available() -> None:
    async def body(server: SoupServer) -> None:
        client = ReplayClient("127.0.0.1", server.port, b"YESTERDAY", Received(1))
        with pytest.raises(ReplayError, match="session not available"):
            await client.fetch(1, 10, timeout=5)

    run(lambda: serving(journal_of(10), body))


def test_a_fetch_that_times_out_returns_how_far_it_got() -> None:
    async def body(server: SoupServer) -> None:
        client = ReplayClient("127.0.0.1", server.port, SESSION, Received(1))
        assert await client.fetch(1, 5000, timeout=0.5) == 1000
        assert client.stop_reason == "timeout"
        await until(lambda: server.clients == 0, 5, "the client logged out and closed")

    run(lambda: serving(journal_of(1000), body))


def test_an_exception_in_on_messages_comes_back_from_fetch() -> None:
    def broken(first: int, count: int, blocks: bytes) -> None:
        raise KeyError("downstream bug")

    async def body(server: SoupServer) -> None:
        client = ReplayClient("127.0.0.1", server.port, SESSION, broken)
        with pytest.raises(KeyError, match="downstream bug"):
            await client.fetch(1, 100, timeout=5)
        await until(lambda: server.clients == 0, 5, "the broken client's connection closed")

    run(lambda: serving(journal_of(100), body))


def test_many_clients_at_once_each_get_their_own_range() -> None:
    async def body(server: SoupServer) -> None:
        starts = [1, 5000, 10000, 15000, 19999]
        sinks = [Received(s) for s in starts]
        clients = [ReplayClient("127.0.0.1", server.port, SESSION, g) for g in sinks]
        fetches = [c.fetch(s, 20000, 10) for c, s in zip(clients, starts, strict=True)]
        ends = await asyncio.gather(*fetches)
        assert ends == [20000] * 5
        assert all(g.next == 20001 for g in sinks)

    run(lambda: serving(journal_of(20000), body))


def test_a_client_that_breaks_the_protocol_is_told_why_and_closed() -> None:
    async def body(server: SoupServer) -> None:
        raw = await RawClient.login(server.port, 1)
        raw.writer.write(encode(ClientHeartbeat()) + b"\x00\x01Q")
        rest = await raw.rest()
        assert isinstance(rest[-1], Debug) and b"unknown_type" in rest[-1].text
        await until(lambda: server.counters.protocol_errors == 1 and server.clients == 0, 5,
                    "the protocol error counted and the connection closed")

    run(lambda: serving(journal_of(5), body))


def test_no_login_in_time_is_closed() -> None:
    async def body(server: SoupServer) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await reader.read() == encode(Debug(b"no Login Request in time"))
        assert server.counters.timeouts == 1
        writer.close()

    run(lambda: serving(journal_of(5), body, login_timeout=0.2))


def test_a_stuck_live_client_is_dropped_and_the_others_keep_up() -> None:
    journal = journal_of(10)
    per_publish = 2000

    async def body(server: SoupServer) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        stuck = await RawClient.login(server.port, 0, sock=sock)
        assert await stuck.packets(1) == [LoginAccepted(SESSION, 11)]
        got = Received(1)
        healthy = ReplayClient("127.0.0.1", server.port, SESSION, got)
        total = 10 + 200 * per_publish
        fetch = asyncio.create_task(healthy.fetch(1, total, timeout=20))
        first = 11
        rest: list[Packet] = []
        for _ in range(200):  # bounded: the stuck client is dropped long before the end
            journal.append(messages(first, per_publish))
            first += per_publish
            server.publish()
            await asyncio.sleep(0)
            if server.counters.slow_consumers and not rest:
                # it wakes up: what was queued, then why it was dropped, then the close
                rest = await stuck.rest()
        assert server.counters.slow_consumers == 1
        assert await fetch == total
        assert isinstance(rest[-1], Debug) and rest[-1].text.startswith(b"slow consumer")
        assert all(isinstance(p, SequencedData) for p in rest[:-1])

    run(lambda: serving(journal, body, limits=FanOutLimits(max_backlog=256 << 10)))


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="a million messages")
@pytest.mark.parametrize("uvloop", [False, True], ids=["asyncio", "uvloop"])
def test_a_million_messages_replayed_over_loopback(uvloop: bool) -> None:
    count = 1_000_000

    async def body(server: SoupServer) -> None:
        got = Received(1)
        client = ReplayClient("127.0.0.1", server.port, SESSION, got)
        start = time.perf_counter()
        assert await client.fetch(1, count, timeout=60) == count
        elapsed = time.perf_counter() - start
        assert got.next == count + 1
        print(f"replayed {count} messages in {elapsed:.3f} s ({count / elapsed / 1e6:.1f}M/s)")

    run(lambda: serving(journal_of(count), body), timeout=120, uvloop=uvloop)


def test_a_catch_up_of_many_turns_while_publishing_on_uvloop() -> None:
    count, more = 40_000, 2_000  # ~1.4 MB in turns of 4 KiB, each next turn a timer due at once

    async def body(server: SoupServer) -> None:
        got = Received(1)
        client = ReplayClient("127.0.0.1", server.port, SESSION, got)
        fetch = asyncio.ensure_future(client.fetch(1, count + more, timeout=20))
        for first in range(count + 1, count + more + 1, 100):  # live messages meanwhile
            await asyncio.sleep(0.001)
            server.journal.append(messages(first, 100))
            server.publish()
        assert await fetch == count + more
        assert got.next == count + more + 1

    run(lambda: serving(journal_of(count), body, limits=FanOutLimits(turn_bytes=4096)),
        uvloop=True)


def test_a_login_accepted_for_another_session_is_refused() -> None:
    async def main() -> None:
        async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(49)  # the Login Request
            writer.write(encode(LoginAccepted(b"OTHERSESS9", 1)))
            writer.write(encode(SequencedData(b"not ours")))
            await writer.drain()
            await asyncio.sleep(1)
            writer.close()

        server = await asyncio.start_server(impostor, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        got: list[bytes] = []
        client = ReplayClient("127.0.0.1", port, b"SESSION001",
                              lambda first, count, blocks: got.append(blocks))
        try:
            with pytest.raises(ReplayError, match="OTHERSESS9"):
                await client.fetch(1, 1, timeout=5)
        finally:
            server.close()
            await server.wait_closed()
        assert got == []

    asyncio.run(main())


def test_a_server_that_starts_later_than_asked_is_no_complete_replay() -> None:
    """What it sends is handed over, but the run from ``first`` never came: not 'complete'."""

    async def main() -> tuple[int, str, list[tuple[int, int]]]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(49)  # the Login Request
            writer.write(encode(LoginAccepted(b"S000000001", 5)))
            for i in range(5, 11):
                writer.write(encode(SequencedData(b"m%d" % i)))
            await writer.drain()
            await asyncio.sleep(0.5)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        got: list[tuple[int, int]] = []
        client = ReplayClient(
            "127.0.0.1", port, b"S000000001", lambda first, n, blocks: got.append((first, n))
        )
        try:
            last = await client.fetch(1, 10, timeout=3)
        finally:
            server.close()
        return last, client.stop_reason, got

    last, reason, got = asyncio.run(main())
    assert last == 0 and "starts at 5" in reason
    assert sum(n for _, n in got) == 6 and got[0][0] == 5
