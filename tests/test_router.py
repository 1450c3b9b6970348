"""One port in front of several SoupBinTCP servers: a connection is held until its Login Request
is whole, then served by the server of the session it names (real loopback TCP)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from harness import until
from tickerplant.client import subscribe
from tickerplant.client.subscribe import SubscribeError
from tickerplant.distribute.fanout import FanOut, FanOutLimits
from tickerplant.distribute.journal import Journal
from tickerplant.endpoint import Endpoint
from tickerplant.io.listener import MAX_HELD, Router
from tickerplant.io.soupbin import SoupServer
from tickerplant.receive.events import Batch
from tickerplant.wire import soupbintcp as soup
from tickerplant.wire.blocks import join_messages

SESSIONS = (b"ROUTE00001", b"ROUTE00002", b"ROUTE00003")
LOGIN = soup.encode(soup.LoginRequest(b"", b"", SESSIONS[1], 1))


def test_the_login_at_the_head_of_a_stream_names_its_session_once_it_is_whole() -> None:
    debug = soup.encode(soup.Debug(b"hello"))
    assert soup.login_session(LOGIN) == SESSIONS[1]
    assert soup.login_session(debug + LOGIN + b"more") == SESSIONS[1]  # past a Debug packet
    for cut in (0, 2, 3, len(LOGIN) - 1):
        assert soup.login_session(LOGIN[:cut]) is None  # not yet whole
    blank = soup.encode(soup.LoginRequest(b"", b"", b"", 0))
    assert soup.login_session(blank) == b""  # the current session
    assert soup.login_session(soup.encode(soup.ClientHeartbeat())) == b""  # no login first
    assert soup.login_session(b"\x00\x00L") == b""  # a zero length: no packet at all
    assert soup.login_session(b"\x00\x05L....") == b""  # not a Login Request's length


def servers(login_timeout: float = 5.0) -> list[SoupServer]:
    out = []
    for n, session in enumerate(SESSIONS):
        journal = Journal(session)
        journal.append(join_messages([b"channel %d message %d" % (n, i) for i in range(10)]))
        out.append(SoupServer(FanOut(journal, limits=FanOutLimits(max_connections=4),
                                     login_timeout=login_timeout), "127.0.0.1", 0))  # fmt: skip
    return out


async def _read(endpoint: Endpoint, session: str) -> list[bytes]:
    got: list[bytes] = []
    async for record in subscribe(endpoint, session=session, retry=None):
        if isinstance(record, Batch):
            got.append(record.blocks)
            if len(b"".join(got)) >= len(join_messages([b"channel 0 message 0"] * 10)):
                break
    return got


def test_each_login_is_served_by_the_server_of_the_session_it_names() -> None:
    async def main() -> tuple[list[bytes], list[bytes], str, bytes]:
        routed = servers()
        for server in routed:
            await server.start(listen=False)
        router = Router(routed, "127.0.0.1", 0)
        endpoint = Endpoint("127.0.0.1", await router.start())
        try:
            second = await asyncio.wait_for(_read(endpoint, SESSIONS[1].decode()), 10)
            first = await asyncio.wait_for(_read(endpoint, ""), 10)  # blank: the first
            try:
                await asyncio.wait_for(_read(endpoint, "ROUTE00009"), 10)
                refused = ""
            except SubscribeError as err:
                refused = str(err)
            # A login sent a byte at a time, after a Debug packet, is routed once whole.
            reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
            for byte in soup.encode(soup.Debug(b"hi")) + LOGIN:
                writer.write(bytes([byte]))
                await writer.drain()
            accepted = await asyncio.wait_for(reader.readexactly(2 + 31), 10)
            writer.close()
            return b"".join(first), b"".join(second), refused, accepted
        finally:
            router.close()
            for server in routed:
                await server.close()

    first, second, refused, accepted = asyncio.run(main())
    assert first == join_messages([b"channel 0 message %d" % i for i in range(10)])
    assert second == join_messages([b"channel 1 message %d" % i for i in range(10)])
    assert refused == "login rejected: session not available"
    assert soup.decode(accepted[2], accepted[3:]) == soup.LoginAccepted(SESSIONS[1], 1)


@pytest.mark.parametrize("how", ["quiet", "over the limit", "debug without end"])
def test_a_connection_that_never_logs_in_or_comes_over_the_limit_is_told_and_closed(
    how: str,
) -> None:
    """Held for its login no longer than the login timeout (quiet), no more held at once than
    the first server's connection limit (the fifth of five), and not past MAX_HELD bytes of
    Debug packets."""
    quiet = how != "over the limit"

    async def main() -> tuple[bytes, int]:
        routed = servers(login_timeout=0.2)
        router = Router(routed, "127.0.0.1", 0)
        port = await router.start()
        held = []
        try:
            count = 1 if quiet else 5
            for _ in range(count):
                held.append(await asyncio.open_connection("127.0.0.1", port))
            await until(lambda: router.waiting + router.refused == count, 5,
                        "every connection held or refused")  # fmt: skip
            reader, writer = held[-1]
            if how == "debug without end":
                debug = soup.encode(soup.Debug(b"x" * 1000))
                with contextlib.suppress(ConnectionError):
                    for _ in range(MAX_HELD // len(debug) + 1):
                        writer.write(debug)
                    await writer.drain()
            told = await asyncio.wait_for(reader.read(), 5)  # then EOF
            return told, router.refused
        finally:
            for _, writer in held:
                writer.close()
            router.close()

    told, refused = asyncio.run(main())
    reason = {"quiet": b"no Login Request in time",
              "over the limit": b"too many connections waiting to log in",
              "debug without end": b"no Login Request in the first %d bytes" % MAX_HELD}[how]
    assert soup.decode(told[2], told[3:]) == soup.Debug(reason)
    assert refused == (0 if quiet else 1)
