"""SoupBinTCP wire codec: exact bytes, liberal parsing, the framer under any split, the kernels."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickerplant.wire.blocks import iter_messages, join_messages
from tickerplant.wire.soupbintcp import (
    LAYOUTS,
    ClientHeartbeat,
    Debug,
    Defect,
    EndOfSession,
    Framer,
    Kind,
    Layout,
    LoginAccepted,
    LoginRejected,
    LoginRequest,
    LogoutRequest,
    MalformedPacket,
    Packet,
    SequencedData,
    ServerHeartbeat,
    Side,
    UnsequencedData,
    decode,
    encode,
    encode_sequenced,
)

# --- exact bytes, as the spec lays them out --------------------------------------------------


def test_login_request_is_47_bytes_with_spec_padding() -> None:
    wire = encode(LoginRequest(b"alice", b"secret", b"", 1234))
    assert wire[:2] == (47).to_bytes(2, "big")
    assert wire[2:3] == b"L"
    assert wire[3:9] == b"alice "
    assert wire[9:19] == b"secret    "
    assert wire[19:29] == b" " * 10
    assert wire[29:49] == b" " * 16 + b"1234"  # numeric: right-justified, spaces on the left
    assert len(wire) == 49


def test_login_accepted_layout() -> None:
    wire = encode(LoginAccepted(b"SESSION1", 1))
    assert wire == b"\x00\x1fA" + b"SESSION1  " + b" " * 19 + b"1"


@pytest.mark.parametrize(
    ("packet", "wire"),
    [
        (LoginRejected(b"S"), b"\x00\x02JS"),
        (SequencedData(b"xyz"), b"\x00\x04Sxyz"),
        (ServerHeartbeat(), b"\x00\x01H"),
        (EndOfSession(), b"\x00\x01Z"),
        (UnsequencedData(b""), b"\x00\x01U"),
        (ClientHeartbeat(), b"\x00\x01R"),
        (LogoutRequest(), b"\x00\x01O"),
        (Debug(b"hello"), b"\x00\x06+hello"),
    ],
)
def test_short_packets(packet: Packet, wire: bytes) -> None:
    assert encode(packet) == wire


def test_every_type_in_the_table_has_its_spec_name_and_sender() -> None:
    table = {chr(code): (lay.name, lay.sender) for code, lay in LAYOUTS.items()}
    assert table == {
        "A": ("Login Accepted", Side.SERVER),
        "J": ("Login Rejected", Side.SERVER),
        "S": ("Sequenced Data", Side.SERVER),
        "H": ("Server Heartbeat", Side.SERVER),
        "Z": ("End of Session", Side.SERVER),
        "L": ("Login Request", Side.CLIENT),
        "U": ("Unsequenced Data", Side.CLIENT),
        "R": ("Client Heartbeat", Side.CLIENT),
        "O": ("Logout Request", Side.CLIENT),
        "+": ("Debug", Side.EITHER),
    }
    assert LAYOUTS[ord("L")].fixed_size == 46


@pytest.mark.parametrize(
    ("packet", "field"),
    [
        (LoginRequest(b"toolong", b"", b"", 0), "username"),
        (LoginRequest(b"", b"p" * 11, b"", 0), "password"),
        (LoginAccepted(b"S" * 11, 0), "session"),
        (LoginAccepted(b"", 10**20), "sequence"),
        (LoginAccepted(b"", -1), "sequence"),
    ],
)
def test_fields_that_do_not_fit_are_refused_by_name(packet: Packet, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        encode(packet)


def test_a_message_too_long_for_the_length_field_is_refused() -> None:
    with pytest.raises(ValueError, match="u16"):
        encode(SequencedData(bytes(0xFFFF)))
    assert len(encode(SequencedData(bytes(0xFFFE)))) == 0x10001


# --- liberal input ------------------------------------------------------------------------------


def test_numbers_padded_on_the_right_or_with_nuls_are_read() -> None:
    # Nasdaq's own Python library pads numbers on the right; some send NULs.
    payload = b"bob   " + b"pw        " + b"SESS\x00\x00\x00\x00\x00\x00" + b"42".ljust(20, b" ")
    assert decode(ord("L"), payload) == LoginRequest(b"bob", b"pw", b"SESS", 42)
    payload = b"SESS      " + b"\x00" * 17 + b"777"
    assert decode(ord("A"), payload) == LoginAccepted(b"SESS", 777)


def test_a_blank_sequence_number_reads_as_zero() -> None:
    assert decode(ord("L"), b" " * 46) == LoginRequest(b"", b"", b"", 0)


def test_a_non_numeric_sequence_number_is_a_defect() -> None:
    with pytest.raises(MalformedPacket, match="sequence") as err:
        decode(ord("A"), b" " * 10 + b"12x".rjust(20))
    assert err.value.defect is Defect.BAD_NUMBER


def test_a_fixed_layout_with_the_wrong_size_is_a_defect() -> None:
    with pytest.raises(MalformedPacket) as err:
        decode(ord("H"), b"x")
    assert err.value.defect is Defect.BAD_SIZE
    with pytest.raises(MalformedPacket) as err:
        decode(ord("L"), b" " * 45)
    assert err.value.defect is Defect.BAD_SIZE


# --- round trips for every type --------------------------------------------------------------


def _field(kind: Kind, size: int) -> st.SearchStrategy[bytes] | st.SearchStrategy[int]:
    if kind is Kind.NUMERIC:
        return st.integers(0, 10**size - 1)
    inner = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=size)
    # what decode returns: padding (spaces, NULs) stripped from both ends
    return inner.map(lambda s: s.strip(" ").encode())


def _packet(layout: Layout) -> st.SearchStrategy[Packet]:
    parts: list[st.SearchStrategy[bytes] | st.SearchStrategy[int]] = [
        _field(f.kind, f.size) for f in layout.fields
    ]
    if layout.tail:
        parts.append(st.binary(max_size=300))
    return st.tuples(*parts).map(lambda values: layout.record(*values))


packets = st.one_of(*(_packet(layout) for layout in LAYOUTS.values()))


@given(packets)
def test_every_type_round_trips(packet: Packet) -> None:
    wire = encode(packet)
    assert int.from_bytes(wire[:2], "big") == len(wire) - 2
    framer = Framer(Side.EITHER)
    framer.feed(wire)
    assert framer.next_packet() == packet
    assert framer.next_packet() is None
    assert framer.buffered == 0


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@given(st.lists(packets, max_size=20), st.lists(st.integers(0, 10**6), max_size=30))
def test_framer_yields_the_same_packets_whatever_the_split(
    sent: list[Packet], cuts: list[int]
) -> None:
    stream = b"".join(encode(p) for p in sent)
    framer = Framer(Side.EITHER)
    got: list[Packet] = []
    for piece in _cut(stream, cuts):
        framer.feed(piece)
        got.extend(framer)
    assert got == sent
    assert framer.buffered == 0


server_packets = st.one_of(
    st.binary(max_size=80).map(SequencedData),
    st.just(ServerHeartbeat()),
    st.binary(max_size=20).map(Debug),
)


@given(st.lists(server_packets, max_size=40), st.lists(st.integers(0, 10**6), max_size=30))
def test_fast_path_takes_runs_of_sequenced_data_whatever_the_split(
    sent: list[Packet], cuts: list[int]
) -> None:
    """What a client sees: next_sequenced for runs of S, next_packet for everything else."""
    stream = b"".join(encode(p) for p in sent)
    framer = Framer(Side.SERVER)
    got: list[Packet] = []
    for piece in _cut(stream, cuts):
        framer.feed(piece)
        while True:
            count, blocks = framer.next_sequenced()
            messages = list(iter_messages(blocks))
            assert len(messages) == count
            got.extend(SequencedData(m) for m in messages)
            packet = framer.next_packet()
            if packet is None:
                break
            got.append(packet)
    assert got == sent


@given(st.lists(st.binary(max_size=300), max_size=50))
def test_encode_sequenced_matches_one_packet_per_message(messages: list[bytes]) -> None:
    blocks = join_messages(messages)
    wire = encode_sequenced(blocks)
    assert wire == b"".join(encode(SequencedData(m)) for m in messages)
    framer = Framer(Side.SERVER)
    framer.feed(wire)
    assert framer.next_sequenced() == (len(messages), blocks)


def test_encode_sequenced_refuses_a_truncated_stream_or_a_message_without_room() -> None:
    with pytest.raises(ValueError, match="offset 5"):
        encode_sequenced(join_messages([b"abc"]) + b"\x00\x09ab")
    with pytest.raises(ValueError, match="offset 0"):
        encode_sequenced(join_messages([bytes(0xFFFF)]))
    with pytest.raises(ValueError, match="offset 0"):
        encode_sequenced(b"\x00")


def test_next_sequenced_stops_before_anything_else() -> None:
    stream = encode_sequenced(join_messages([b"a", b"bb"])) + encode(ServerHeartbeat())
    stream += encode(SequencedData(b"ccc"))
    framer = Framer(Side.SERVER)
    framer.feed(stream[:-1])  # the last packet incomplete
    assert framer.next_sequenced() == (2, join_messages([b"a", b"bb"]))
    assert framer.next_sequenced() == (0, b"")
    assert framer.next_packet() == ServerHeartbeat()
    assert framer.next_sequenced() == (0, b"")
    framer.feed(stream[-1:])
    assert framer.next_sequenced() == (1, join_messages([b"ccc"]))


# --- what the framer refuses -------------------------------------------------------------


def _defect(sender: Side, data: bytes, max_length: int | None = None) -> MalformedPacket:
    framer = Framer(sender, max_length)
    framer.feed(data)
    with pytest.raises(MalformedPacket) as err:
        list(framer)
    # nothing after a bad packet can be trusted: the framer stays broken
    framer.feed(encode(ClientHeartbeat()))
    with pytest.raises(MalformedPacket):
        framer.next_packet()
    return err.value


def test_zero_length_is_refused() -> None:
    assert _defect(Side.SERVER, b"\x00\x00H").defect is Defect.ZERO_LENGTH


def test_oversize_is_refused_before_the_payload_arrives() -> None:
    err = _defect(Side.SERVER, b"\x01\x00S", max_length=255)
    assert err.defect is Defect.OVERSIZE
    assert "256" in str(err)
    # a client's packets are small: a server's framer has a low default
    assert _defect(Side.CLIENT, b"\x20\x00U").defect is Defect.OVERSIZE
    # and the fast path leaves an oversize S for next_packet to refuse
    framer = Framer(Side.SERVER, max_length=10)
    framer.feed(encode(SequencedData(b"x" * 20)))
    assert framer.next_sequenced() == (0, b"")
    with pytest.raises(MalformedPacket):
        framer.next_packet()


def test_unknown_type_is_refused() -> None:
    err = _defect(Side.EITHER, b"\x00\x01Q")
    assert err.defect is Defect.UNKNOWN_TYPE
    assert "'Q'" in str(err)


def test_a_packet_from_the_wrong_side_is_refused() -> None:
    err = _defect(Side.SERVER, encode(LoginRequest(b"", b"", b"", 0)))
    assert err.defect is Defect.WRONG_SENDER
    assert "Login Request" in str(err)
    assert _defect(Side.CLIENT, encode(ServerHeartbeat())).defect is Defect.WRONG_SENDER


def test_bad_fields_break_the_stream() -> None:
    bad = b"\x00\x1fA" + b" " * 10 + b"nope".rjust(20)
    assert _defect(Side.SERVER, bad).defect is Defect.BAD_NUMBER


def test_max_length_must_fit_the_length_field() -> None:
    with pytest.raises(ValueError, match="max_length"):
        Framer(Side.SERVER, 0x10000)


def test_a_fixed_size_packet_announcing_more_is_refused_from_its_header() -> None:
    framer = Framer(Side.CLIENT)
    framer.feed(b"\x0f\xa0R")  # a client heartbeat (no payload) announcing 4,000 bytes
    with pytest.raises(MalformedPacket) as err:
        framer.next_packet()
    assert err.value.defect is Defect.BAD_SIZE


def test_sequenced_data_from_a_client_is_not_taken_as_messages() -> None:
    framer = Framer(Side.CLIENT)
    framer.feed(b"\x00\x04Sabc")
    assert framer.next_sequenced() == (0, b"")
    with pytest.raises(MalformedPacket) as err:
        framer.next_packet()
    assert err.value.defect is Defect.WRONG_SENDER
