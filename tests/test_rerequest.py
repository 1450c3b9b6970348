"""The re-request policy (fake clock, no sockets) and its UDP server (real loopback socket)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tickerplant.distribute.journal import Journal
from tickerplant.distribute.rerequest import RerequestLimits, Rerequests
from tickerplant.io.rerequest import RerequestServer
from tickerplant.wire.blocks import join_messages
from tickerplant.wire.moldudp64 import (
    HEADER,
    MAX_PACKET,
    decode_packet,
    encode_request,
    session_bytes,
)

SESSION = session_bytes("RQTEST")
SOURCE = ("127.0.0.1", 40000)


def message(sequence: int) -> bytes:
    """A message that names its own sequence number; lengths vary from 12 to 50 bytes."""
    return b"T" + sequence.to_bytes(8, "big") + b"." * (3 + sequence % 39)


def journal_of(count: int) -> Journal:
    journal = Journal(SESSION)
    journal.append(join_messages([message(s) for s in range(1, count + 1)]))
    return journal


def messages_in(packets: list[bytes], first: int) -> list[bytes]:
    """The messages of response packets, checking each is well formed and they follow on."""
    out: list[bytes] = []
    expect = first
    for raw in packets:
        assert len(raw) <= MAX_PACKET
        packet = decode_packet(raw)
        assert packet.session == SESSION
        assert packet.sequence == expect
        out.extend(packet.messages)
        expect += packet.count
    return out


def test_one_policy_answers_each_session_it_serves_from_that_session_s_journal() -> None:
    """An exchange's channels share a re-request server: the request names the session."""
    other = Journal(session_bytes("RQTEST2"))
    other.append(join_messages([b"X" + message(s)[1:] for s in range(1, 31)]))
    policy = Rerequests(journal_of(20))
    policy.add(other)
    answer = policy.handle(encode_request(other.session, 25, 10), SOURCE, 0.0)
    assert [decode_packet(p).session for p in answer] == [other.session] * len(answer)
    got = [m for p in answer for m in decode_packet(p).messages]
    assert got == [b"X" + message(s)[1:] for s in range(25, 31)]
    assert messages_in(policy.handle(encode_request(SESSION, 18, 10), SOURCE, 0.0), 18) == [
        message(s) for s in range(18, 21)]  # fmt: skip
    assert policy.handle(encode_request(session_bytes("RQTEST3"), 1, 1), SOURCE, 0.0) == []
    assert policy.counters.wrong_session == 1 and policy.counters.answered == 2
    with pytest.raises(ValueError, match="served already"):
        policy.add(other)


def test_a_request_is_answered_with_the_messages_asked_for() -> None:
    policy = Rerequests(journal_of(100))
    packets = policy.handle(encode_request(SESSION, 5, 10), SOURCE, 0.0)
    assert messages_in(packets, 5) == [message(s) for s in range(5, 15)]
    c = policy.counters
    assert (c.requests, c.answered, c.messages, c.packets) == (1, 1, 10, len(packets))
    assert c.bytes == sum(map(len, packets))
    assert c.capped == 0 and c.refused == 0


def test_a_long_request_gets_the_head_of_its_range_in_packets_that_fit() -> None:
    policy = Rerequests(journal_of(5000), RerequestLimits(max_messages=1000))
    packets = policy.handle(encode_request(SESSION, 1, 4000), SOURCE, 0.0)
    assert messages_in(packets, 1) == [message(s) for s in range(1, 1001)]
    assert len(packets) > 1
    assert policy.counters.capped == 1
    # the client asks again for the rest
    more = policy.handle(encode_request(SESSION, 1001, 3000), SOURCE, 0.0)
    assert messages_in(more, 1001)[0] == message(1001)


def test_bytes_sent_per_request_are_bounded() -> None:
    limits = RerequestLimits(max_messages=200)
    policy = Rerequests(journal_of(5000), limits)
    packets = policy.handle(encode_request(SESSION, 1, 0xFFFE), SOURCE, 0.0)
    largest = max(len(message(s)) for s in range(1, 5001))
    most = 200 * (2 + largest) + len(packets) * HEADER.size
    assert sum(map(len, packets)) <= most
    assert len(packets) <= -(-most // (MAX_PACKET - HEADER.size)) + 1


def test_a_request_running_past_the_end_gets_what_exists() -> None:
    policy = Rerequests(journal_of(50))
    packets = policy.handle(encode_request(SESSION, 45, 100), SOURCE, 0.0)
    assert messages_in(packets, 45) == [message(s) for s in range(45, 51)]
    assert policy.handle(encode_request(SESSION, 51, 10), SOURCE, 0.0) == []
    assert policy.counters.beyond_end == 1


@pytest.mark.parametrize(
    ("datagram", "defect"),
    [
        (b"", "short_header"),
        (encode_request(SESSION, 1, 5)[:19], "short_header"),
        (encode_request(SESSION, 1, 5) + b"\x00", "count_mismatch"),
        (encode_request(SESSION, 1, 0), "count_mismatch"),
        (encode_request(SESSION, 1, 0xFFFF), "count_mismatch"),
        (encode_request(SESSION, 0, 5), "count_mismatch"),
    ],
)
def test_malformed_requests_are_refused_and_counted_by_defect(datagram: bytes, defect: str) -> None:
    policy = Rerequests(journal_of(10))
    assert policy.handle(datagram, SOURCE, 0.0) == []
    assert policy.counters.malformed == {defect: 1}
    assert policy.counters.answered == 0


def test_a_request_for_another_session_is_refused() -> None:
    policy = Rerequests(journal_of(10))
    assert policy.handle(encode_request(session_bytes("OTHER"), 1, 5), SOURCE, 0.0) == []
    assert policy.counters.wrong_session == 1


def test_each_source_has_its_own_budget_that_refills_with_time() -> None:
    limits = RerequestLimits(max_messages=500, source_rate=1000.0, source_burst=1000.0)
    policy = Rerequests(journal_of(5000), limits)
    ask = encode_request(SESSION, 1, 500)
    assert policy.handle(ask, SOURCE, 0.0)
    assert policy.handle(ask, SOURCE, 0.0)
    assert policy.handle(ask, SOURCE, 0.0) == []
    assert policy.counters.rate_limited_source == 1
    # another address is not held back by the first one's greed; another port of it is
    assert policy.handle(ask, ("127.0.0.2", 40000), 0.0)
    assert policy.handle(ask, ("127.0.0.1", 40001), 0.0) == []
    # half a second refills 500 messages
    assert messages_in(policy.handle(ask, SOURCE, 0.5), 1) == [message(s) for s in range(1, 501)]


def test_a_partly_spent_budget_answers_the_head_of_the_range() -> None:
    limits = RerequestLimits(max_messages=1000, source_rate=100.0, source_burst=300.0)
    policy = Rerequests(journal_of(5000), limits)
    assert len(messages_in(policy.handle(encode_request(SESSION, 1, 200), SOURCE, 0.0), 1)) == 200
    assert len(messages_in(policy.handle(encode_request(SESSION, 1, 800), SOURCE, 0.0), 1)) == 100
    assert policy.counters.capped == 1


def test_all_sources_together_are_capped() -> None:
    limits = RerequestLimits(max_messages=100, total_rate=10.0, total_burst=250.0)
    policy = Rerequests(journal_of(1000), limits)
    ask = encode_request(SESSION, 1, 100)
    answered = sum(
        sum(map(len, messages_in(policy.handle(ask, (f"10.0.0.{i}", 1), 0.0), 1))) > 0
        for i in range(1, 11)
    )
    assert answered == 3  # 100 + 100 + 50, then nothing for the other seven addresses
    assert policy.counters.messages == 250
    assert policy.counters.rate_limited_total == 7


def test_the_source_table_is_bounded() -> None:
    limits = RerequestLimits(max_messages=100, source_rate=1.0, source_burst=100.0, max_sources=2)
    policy = Rerequests(journal_of(1000), limits)
    ask = encode_request(SESSION, 1, 100)
    assert policy.handle(ask, ("10.0.0.1", 1), 0.0)
    assert policy.handle(ask, ("10.0.0.1", 1), 0.0) == []
    policy.handle(ask, ("10.0.0.2", 1), 0.0)
    policy.handle(ask, ("10.0.0.3", 1), 0.0)  # forgets 10.0.0.1, seen longest ago
    assert policy.handle(ask, ("10.0.0.1", 1), 0.0)


# --- the server, on a real loopback socket -------------------------------------------------


async def _exchange_with_server() -> None:
    journal = journal_of(3000)
    # A budget that does not refill within the test (a message every 1,000 s): what is refused
    # is refused whatever the clock says. Refilling with time is the policy's, tested above
    # with ``now`` given.
    limits = RerequestLimits(max_messages=500, source_rate=0.001, source_burst=500.0)
    server = RerequestServer(journal, "127.0.0.1", 0, limits)
    port = await server.start()
    loop = asyncio.get_running_loop()

    def socket_from(address: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((address, 0))
        sock.connect(("127.0.0.1", port))
        return sock

    client = socket_from("127.0.0.1")
    other = socket_from("127.0.0.2")  # another source address: a budget of its own

    async def answer(sequence: int, count: int, via: socket.socket = client) -> list[bytes]:
        """Ask for a range and collect the reply until it holds ``count`` messages."""
        via.send(encode_request(SESSION, sequence, count))
        got: list[bytes] = []
        expect = sequence
        while len(got) < count:
            raw = await asyncio.wait_for(loop.sock_recv(via, 2048), 2.0)
            packet = decode_packet(raw)
            # a reply to an earlier, refused request would arrive first and fail here
            assert packet.sequence == expect, (packet.sequence, expect)
            got.extend(packet.messages)
            expect += packet.count
        return got

    try:
        assert await answer(7, 3) == [message(s) for s in (7, 8, 9)]
        refused = [
            encode_request(SESSION, 1, 5)[:12],  # short
            encode_request(SESSION, 1, 5) + b"junk",  # trailing bytes
            encode_request(SESSION, 1, 0),  # count 0
            encode_request(session_bytes("WRONG"), 1, 5),  # wrong session
        ]
        for datagram in refused:
            client.send(datagram)
        assert await answer(100, 2) == [message(100), message(101)]
        c = server.counters
        assert c.malformed == {"short_header": 1, "count_mismatch": 2}
        assert c.wrong_session == 1

        # 5 messages spent; the rest of the burst goes to this request, the next is refused
        assert len(await answer(1000, 495)) == 495
        client.send(encode_request(SESSION, 1, 500))
        # Another address is answered meanwhile; the refused request was handled before it (one
        # socket, in order), so a reply to it would be waiting by now: there is none.
        assert await answer(2000, 10, other) == [message(s) for s in range(2000, 2010)]
        assert c.rate_limited_source == 1
        with pytest.raises(BlockingIOError):
            client.recv(2048)
        assert c.answered == 4
        assert c.requests == 9
    finally:
        client.close()
        other.close()
        await server.close()


def test_server_answers_good_requests_and_refuses_bad_ones_on_a_real_socket() -> None:
    asyncio.run(_exchange_with_server())
