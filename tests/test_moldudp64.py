import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickerplant.wire import moldudp64 as mold
from tickerplant.wire.blocks import join_messages, offsets_of

SESSION = mold.session_bytes("TEST000001")
messages = st.lists(st.binary(min_size=0, max_size=60), min_size=1, max_size=40)


@given(st.integers(1, 2**63 - 1), messages)
def test_packet_round_trip(sequence: int, msgs: list[bytes]) -> None:
    raw = mold.encode_packet(SESSION, sequence, msgs)
    packet = mold.decode_packet(raw)
    assert (packet.session, packet.sequence, packet.count) == (SESSION, sequence, len(msgs))
    assert packet.messages == msgs
    assert mold.encode_blocks(SESSION, sequence, len(msgs), packet.blocks) == raw


@given(st.integers(1, 2**62))
def test_heartbeat_end_of_session_and_request(sequence: int) -> None:
    hb = mold.decode_packet(mold.encode_heartbeat(SESSION, sequence))
    assert hb.is_heartbeat and hb.sequence == sequence and hb.messages == []
    eos = mold.decode_packet(mold.encode_end_of_session(SESSION, sequence))
    assert eos.is_end_of_session and eos.sequence == sequence
    req = mold.decode_request(mold.encode_request(SESSION, sequence, 17))
    assert req == mold.Request(SESSION, sequence, 17)


GOOD = mold.encode_packet(SESSION, 5, [b"abc", b"de"])


@pytest.mark.parametrize(
    ("raw", "defect"),
    [
        (b"", mold.Defect.SHORT_HEADER),
        (GOOD[:19], mold.Defect.SHORT_HEADER),
        (GOOD[:-1], mold.Defect.TRUNCATED_BLOCK),
        (GOOD[:21], mold.Defect.TRUNCATED_BLOCK),
        (GOOD[:25], mold.Defect.COUNT_MISMATCH),  # one whole block of the two announced
        (GOOD + b"\x00", mold.Defect.COUNT_MISMATCH),  # a stray byte after the blocks
        (GOOD + b"\x00\x00", mold.Defect.COUNT_MISMATCH),  # a third block the count denies
        (mold.encode_heartbeat(SESSION, 3) + b"x", mold.Defect.COUNT_MISMATCH),
        (mold.HEADER.pack(SESSION, 1, 1), mold.Defect.COUNT_MISMATCH),
        (mold.encode_packet(SESSION, 0, [b"x"]), mold.Defect.BAD_SEQUENCE),
        (mold.encode_heartbeat(SESSION, 2**63), mold.Defect.BAD_SEQUENCE),
        (mold.encode_packet(SESSION, 2**64 - 1, [b"x"]), mold.Defect.BAD_SEQUENCE),
    ],
)
def test_decoder_names_the_defect(raw: bytes, defect: mold.Defect) -> None:
    with pytest.raises(mold.MalformedPacket) as err:
        mold.decode_packet(raw)
    assert err.value.defect is defect


@pytest.mark.parametrize(
    "raw",
    [b"short", mold.encode_request(SESSION, 1, 0), mold.encode_request(SESSION, 0, 5),
     mold.encode_request(SESSION, 1, 0xFFFF), mold.encode_request(SESSION, 1, 3) + b"\x00"],
)
def test_bad_requests_rejected(raw: bytes) -> None:
    with pytest.raises(mold.MalformedPacket):
        mold.decode_request(raw)


def test_scan_packets_checks_a_drained_batch() -> None:
    slots = np.zeros((4, 64), dtype=np.uint8)
    datagrams = [GOOD, GOOD[:10], mold.encode_heartbeat(SESSION, 9), bytes(64)]
    lengths = np.zeros(4, dtype=np.int64)
    for i, d in enumerate(datagrams):
        slots[i, : len(d)] = np.frombuffer(d, dtype=np.uint8)
        lengths[i] = len(d)
    seqs, counts = np.zeros(4, np.int64), np.zeros(4, np.int64)
    defects = np.zeros(4, np.int8)
    mold.scan_packets(slots, lengths, 4, seqs, counts, defects)
    assert list(defects) == [0, mold.Defect.SHORT_HEADER, 0, mold.Defect.TRUNCATED_DATAGRAM]
    assert (seqs[0], counts[0], seqs[2], counts[2]) == (5, 2, 9, 0)


@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=200))
def test_pack_runs_fits_every_packet_and_keeps_every_message(msgs: list[bytes]) -> None:
    stream = join_messages(msgs)
    arr = np.frombuffer(stream, dtype=np.uint8)
    starts, counts = np.zeros(len(msgs), np.int64), np.zeros(len(msgs), np.int64)
    budget = mold.MAX_PACKET - mold.HEADER_LEN
    n, consumed = mold.pack_runs(arr, budget, starts, counts)
    assert consumed == len(stream) and counts[:n].sum() == len(msgs)
    rebuilt: list[bytes] = []
    seq = 1
    for i in range(n):
        end = int(starts[i + 1]) if i + 1 < n else len(stream)
        packet = mold.encode_blocks(SESSION, seq, int(counts[i]), stream[int(starts[i]) : end])
        assert len(packet) <= mold.MAX_PACKET
        decoded = mold.decode_packet(packet)
        rebuilt += decoded.messages
        seq += decoded.count
    assert rebuilt == msgs


def test_offsets_of_stops_at_an_incomplete_block() -> None:
    stream = join_messages([b"ab", b"cde"]) + b"\x00\x05ab"
    offsets, consumed = offsets_of(stream)
    assert list(offsets) == [0, 4] and consumed == 9


@given(st.binary(max_size=200))
def test_any_datagram_decodes_or_names_its_defect_and_the_batch_check_agrees(raw: bytes) -> None:
    try:
        packet = mold.decode_packet(raw)
        expected = mold.Defect.NONE
        assert mold.encode_blocks(packet.session, packet.sequence, packet.count,
                                  packet.blocks) == raw
    except mold.MalformedPacket as err:
        expected = err.defect
    slots = np.zeros((1, 256), dtype=np.uint8)
    slots[0, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    seqs, counts = np.zeros(1, np.int64), np.zeros(1, np.int64)
    defects = np.zeros(1, np.int8)
    mold.scan_packets(slots, np.array([len(raw)], np.int64), 1, seqs, counts, defects)
    assert defects[0] == expected
