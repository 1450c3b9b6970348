"""SoupBinTCP session machines paired in memory, on a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import pytest

from tickerplant.errors import ConfigError, LocalProtocolError
from tickerplant.receive.events import Batch
from tickerplant.session.soupbin import (
    CloseCause,
    Closed,
    DebugReceived,
    Event,
    LoggedIn,
    LoginReceived,
    ProtocolViolated,
    Rejected,
    SoupClientSession,
    SoupServerSession,
    SoupSession,
    State,
    UnsequencedReceived,
)
from tickerplant.wire.blocks import join_messages
from tickerplant.wire.soupbintcp import (
    Debug,
    Framer,
    ServerHeartbeat,
    Side,
    UnsequencedData,
    encode,
    encode_sequenced,
)

SESSION = b"20240102A"


def drain(session: SoupSession) -> list[Event]:
    events: list[Event] = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def transfer(sender: SoupSession, receiver: SoupSession, now: float) -> bytes:
    data = sender.data_to_send(now)
    receiver.receive_data(data, now)
    return data


def roundtrip(client: SoupClientSession, server: SoupServerSession, now: float) -> None:
    """Move bytes both ways until neither side has anything to say."""
    while transfer(client, server, now) + transfer(server, client, now):
        pass


def logged_in(now: float = 0.0, first: int = 1) -> tuple[SoupClientSession, SoupServerSession]:
    client = SoupClientSession(now, username=b"u", password=b"p", sequence=first)
    server = SoupServerSession(SESSION, now, (b"u", b"p"))
    transfer(client, server, now)
    assert drain(server) == [LoginReceived(b"u", b"", first)]
    server.accept(first)
    transfer(server, client, now)
    assert drain(client) == [LoggedIn(SESSION, first)]
    return client, server


def test_login_then_sequenced_data_counts_up_from_login_accepted() -> None:
    client, server = logged_in(first=7)
    assert client.state is server.state is State.ACTIVE
    blocks = join_messages([b"one", b"two", b"three"])
    server.send_sequenced(encode_sequenced(blocks), 3)
    server.send_sequenced(encode_sequenced(join_messages([b"four"])), 1)
    transfer(server, client, 0.1)
    assert drain(client) == [Batch(7, 4, blocks + join_messages([b"four"]))]
    assert client.next_sequence == server.next_sequence == 11


def test_sequenced_data_split_byte_by_byte_arrives_whole_and_in_order() -> None:
    client, server = logged_in(first=1)
    messages = [bytes([i]) * (i % 7) for i in range(40)]
    server.send_sequenced(encode_sequenced(join_messages(messages)), len(messages))
    server.send_debug(b"midway")
    server.send_sequenced(encode_sequenced(join_messages([b"last"])), 1)
    data = server.data_to_send(0.0)
    got: list[bytes] = []
    debug: list[bytes] = []
    expected_first = 1
    for i in range(len(data)):
        client.receive_data(data[i : i + 1], 0.0)
        for event in drain(client):
            if isinstance(event, Batch):
                assert event.first == expected_first  # runs are contiguous
                expected_first = event.end
                got.append(event.blocks)
            else:
                assert isinstance(event, DebugReceived)
                debug.append(event.text)
    assert b"".join(got) == join_messages([*messages, b"last"])
    assert debug == [b"midway"]
    assert client.next_sequence == 42


def test_login_with_blank_session_and_sequence_zero_lets_the_server_choose() -> None:
    client = SoupClientSession(0.0)
    server = SoupServerSession(SESSION, 0.0)  # no credentials: anyone
    transfer(client, server, 0.0)
    assert drain(server) == [LoginReceived(b"", b"", 0)]
    server.accept(1000)
    transfer(server, client, 0.0)
    assert drain(client) == [LoggedIn(SESSION, 1000)]


def test_login_for_the_named_session_is_accepted() -> None:
    client = SoupClientSession(0.0, session=SESSION, sequence=3)
    server = SoupServerSession(SESSION.ljust(10), 0.0)
    transfer(client, server, 0.0)
    assert drain(server) == [LoginReceived(b"", SESSION, 3)]


@pytest.mark.parametrize(
    ("credentials", "username", "password", "reason"),
    [
        ((b"u", b"p"), b"u", b"wrong", b"A"),
        ((b"u", b"p"), b"x", b"p", b"A"),
        (lambda u, p: u == b"ok", b"no", b"", b"A"),
    ],
)
def test_bad_credentials_are_rejected_not_authorized(
    credentials: tuple[bytes, bytes], username: bytes, password: bytes, reason: bytes
) -> None:
    client = SoupClientSession(0.0, username=username, password=password)
    server = SoupServerSession(SESSION, 0.0, credentials)
    roundtrip(client, server, 0.0)
    assert drain(server) == [Closed(CloseCause.LOGIN_REJECTED, f"rejected with {reason!r}")]
    assert drain(client) == [
        Rejected(reason),
        Closed(CloseCause.LOGIN_REJECTED, f"rejected with {reason!r}"),
    ]
    assert client.closed and server.closed


def test_callable_credentials_let_the_right_user_in() -> None:
    client = SoupClientSession(0.0, username=b"ok")
    server = SoupServerSession(SESSION, 0.0, lambda u, p: u == b"ok")
    transfer(client, server, 0.0)
    assert drain(server) == [LoginReceived(b"ok", b"", 0)]


def test_another_session_is_rejected_session_not_available() -> None:
    client = SoupClientSession(0.0, session=b"OLDSESSION")
    server = SoupServerSession(SESSION, 0.0)
    roundtrip(client, server, 0.0)
    assert [type(e) for e in drain(client)] == [Rejected, Closed]
    assert client.state is State.CLOSED


def test_the_application_may_reject_a_login_itself() -> None:
    client = SoupClientSession(0.0)
    server = SoupServerSession(SESSION, 0.0)
    transfer(client, server, 0.0)
    drain(server)
    server.reject(b"S")
    transfer(server, client, 0.0)
    assert drain(client)[0] == Rejected(b"S")


def test_server_heartbeats_after_one_second_of_silence() -> None:
    _, server = logged_in(now=10.0)
    assert server.get_timer() == 11.0  # heartbeat due; the dead-link deadline is later
    server.handle_timer(10.99)
    assert server.data_to_send(10.99) == b""
    server.handle_timer(11.0)
    assert server.data_to_send(11.0) == encode(ServerHeartbeat())
    assert server.get_timer() == 12.0


def test_sending_data_postpones_the_heartbeat() -> None:
    _, server = logged_in(now=0.0)
    server.send_sequenced(encode_sequenced(join_messages([b"x"])), 1)
    server.data_to_send(0.8)
    server.handle_timer(1.2)
    assert server.data_to_send(1.2) == b""
    assert server.get_timer() == pytest.approx(1.8)


def test_heartbeats_keep_an_idle_link_alive_for_a_minute() -> None:
    client, server = logged_in(now=0.0)
    now = 0.0
    client_saw = 0
    while now < 60.0:
        now = min(t for t in (client.get_timer(), server.get_timer()) if t is not None)
        client.handle_timer(now)
        server.handle_timer(now)
        client_saw += transfer(server, client, now).count(b"\x00\x01H")
        transfer(client, server, now)
    assert client.state is server.state is State.ACTIVE
    assert 55 <= client_saw <= 61
    assert drain(client) == drain(server) == []


def test_silence_for_fifteen_seconds_is_a_dead_link() -> None:
    client, server = logged_in(now=0.0)
    for now in (1.0, 2.0, 14.9):
        client.handle_timer(now)
        client.data_to_send(now)  # the client keeps talking, the server hears nothing
    assert not client.closed
    client.handle_timer(15.0)
    assert client.closed
    assert drain(client) == [Closed(CloseCause.DEAD_LINK, "nothing heard for 15.0 s")]
    server.handle_timer(15.0)
    assert drain(server) == [Closed(CloseCause.DEAD_LINK, "nothing heard for 15.0 s")]


def test_no_login_within_the_timeout_closes_with_a_reason() -> None:
    server = SoupServerSession(SESSION, 100.0, login_timeout=5.0)
    assert server.get_timer() == 105.0
    server.handle_timer(104.9)
    assert not server.closed
    server.handle_timer(105.0)
    assert drain(server) == [Closed(CloseCause.LOGIN_TIMEOUT, "no Login Request in time")]
    framer = Framer(Side.SERVER)
    framer.feed(server.data_to_send(105.0))
    assert framer.next_packet() == Debug(b"no Login Request in time")
    assert server.get_timer() is None


def test_logout_closes_both_sides() -> None:
    client, server = logged_in()
    client.logout()
    assert drain(client) == [Closed(CloseCause.LOGOUT, "logged out")]
    transfer(client, server, 0.0)
    assert drain(server) == [Closed(CloseCause.LOGOUT, "the client logged out")]


def test_end_of_session_closes_both_sides_at_the_next_sequence_number() -> None:
    client, server = logged_in(first=5)
    server.send_sequenced(encode_sequenced(join_messages([b"a", b"b"])), 2)
    server.end_session()
    assert [type(e) for e in drain(server)] == [Closed]
    transfer(server, client, 0.0)
    events = drain(client)
    assert events == [
        Batch(5, 2, join_messages([b"a", b"b"])),
        Closed(CloseCause.END_OF_SESSION, "session over at 7"),
    ]
    with pytest.raises(LocalProtocolError):
        server.send_sequenced(b"", 0)


def test_debug_and_unsequenced_data_reach_the_application() -> None:
    client, server = logged_in()
    client.send_debug(b"hello server")
    server.receive_data(client.data_to_send(0.0) + encode(UnsequencedData(b"order")), 0.0)
    assert drain(server) == [DebugReceived(b"hello server"), UnsequencedReceived(b"order")]


def _expect_protocol_error(session: SoupSession, data: bytes, reason: str) -> None:
    session.receive_data(data, 0.0)
    events = drain(session)
    assert isinstance(events[0], ProtocolViolated)
    assert reason in events[0].reason
    assert events[-1] == Closed(CloseCause.PROTOCOL_ERROR, events[0].reason)
    # the peer is told why before the close
    framer = Framer(Side.EITHER)
    framer.feed(session.data_to_send(0.0))
    assert list(framer)[-1] == Debug(events[0].reason.encode())
    session.receive_data(encode(Debug(b"ignored once closed")), 0.0)
    assert drain(session) == []


def test_junk_from_the_client_earns_a_reason_and_a_close() -> None:
    server = SoupServerSession(SESSION, 0.0)
    _expect_protocol_error(server, b"\x00\x01Q", "unknown_type")


def test_a_client_sending_before_login_breaks_the_protocol() -> None:
    server = SoupServerSession(SESSION, 0.0)
    _expect_protocol_error(server, encode(UnsequencedData(b"x")), "before a Login Request")


def test_a_second_login_breaks_the_protocol() -> None:
    _, server = logged_in()
    _expect_protocol_error(server, SoupClientSession(0.0).data_to_send(0.0), "second Login")


def test_sequenced_data_before_login_accepted_breaks_the_protocol() -> None:
    client = SoupClientSession(0.0)
    client.data_to_send(0.0)
    data = encode_sequenced(join_messages([b"early"]))
    _expect_protocol_error(client, data, "before Login Accepted")


def test_a_second_login_accepted_breaks_the_protocol() -> None:
    client, _ = logged_in()
    again = SoupServerSession(SESSION, 0.0)
    again.receive_data(SoupClientSession(0.0).data_to_send(0.0), 0.0)
    again.accept(1)
    _expect_protocol_error(client, again.data_to_send(0.0), "after Login Accepted")


def test_a_zero_length_packet_to_the_client_breaks_the_protocol() -> None:
    client, _ = logged_in()
    _expect_protocol_error(client, b"\x00\x00", "zero_length")


def test_calls_at_the_wrong_time_raise_locally() -> None:
    server = SoupServerSession(SESSION, 0.0)
    with pytest.raises(LocalProtocolError):
        server.accept(1)
    with pytest.raises(LocalProtocolError):
        server.send_sequenced(b"", 0)
    client, server = logged_in()
    with pytest.raises(LocalProtocolError):
        server.accept(1)
    client.logout()
    with pytest.raises(LocalProtocolError):
        client.logout()
    with pytest.raises(LocalProtocolError):
        client.send_debug(b"too late")


def test_heartbeat_interval_must_be_shorter_than_the_dead_link_time() -> None:
    with pytest.raises(ConfigError, match=r"dead_after.*heartbeat_interval"):
        SoupClientSession(0.0, heartbeat_interval=20.0)
