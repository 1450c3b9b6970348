"""ITCH 5.0 codec: layouts against the spec, round trips for every type, clear errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickerplant.wire import itch

SPEC_LENGTHS = {
    "S": 12, "R": 39, "H": 25, "Y": 20, "L": 26, "V": 35, "W": 12, "K": 28, "J": 35, "h": 21,
    "O": 48, "A": 36, "F": 40, "E": 31, "C": 36, "X": 23, "D": 19, "U": 35, "P": 44, "Q": 40,
    "B": 19, "I": 50, "N": 20,
}  # fmt: skip

LETTERS = sorted(SPEC_LENGTHS)


def test_every_spec_type_has_its_spec_length() -> None:
    assert set(itch.MESSAGE_TYPES) == set(SPEC_LENGTHS)
    assert itch.LENGTHS == SPEC_LENGTHS


def test_message_lengths_table_for_kernels() -> None:
    table = itch.MESSAGE_LENGTHS
    assert table.dtype == np.int16 and table.shape == (256,)
    for letter, size in SPEC_LENGTHS.items():
        assert table[ord(letter)] == size
    assert np.count_nonzero(table) == len(SPEC_LENGTHS)
    assert table[ord("z")] == 0 and table[0] == 0


def test_fields_tile_each_message_without_gaps() -> None:
    for letter, fields in itch.LAYOUTS.items():
        at = 1
        for f in fields:
            assert f.offset == at, (letter, f)
            at += f.size
        assert at == SPEC_LENGTHS[letter]
        assert [f.name for f in fields[:3]] == ["stock_locate", "tracking_number", "timestamp"]


@pytest.mark.parametrize(
    ("letter", "field", "expected"),
    [
        ("A", "stock_locate", 1),
        ("A", "tracking_number", 3),
        ("A", "timestamp", 5),
        ("A", "order_reference", 11),
        ("A", "side", 19),
        ("A", "shares", 20),
        ("A", "stock", 24),
        ("A", "price", 32),
        ("F", "attribution", 36),
        ("E", "executed_shares", 19),
        ("E", "match_number", 23),
        ("C", "printable", 31),
        ("C", "execution_price", 32),
        ("X", "cancelled_shares", 19),
        ("U", "new_order_reference", 19),
        ("U", "shares", 27),
        ("U", "price", 31),
        ("P", "match_number", 36),
        ("Q", "cross_type", 39),
        ("R", "round_lot_size", 21),
        ("R", "inverse_indicator", 38),
        ("O", "near_execution_time", 32),
        ("I", "price_variation_indicator", 49),
        ("V", "level_3", 27),
    ],
)
def test_offsets_match_the_spec(letter: str, field: str, expected: int) -> None:
    assert itch.offset(letter, field) == expected


def test_offset_of_unknown_names() -> None:
    with pytest.raises(itch.ItchError, match="unknown message type 'Z'"):
        itch.offset("Z", "price")
    with pytest.raises(itch.ItchError, match="type 'A' has no field 'prise'"):
        itch.offset("A", "prise")


def test_known_add_order_bytes() -> None:
    rec = itch.AddOrder(7, 1, 34_200_000_000_123, 99, "S", 300, "MSFT", 4_012_500)
    raw = itch.encode(rec)
    expected = (
        b"A\x00\x07\x00\x01"
        + (34_200_000_000_123).to_bytes(6, "big")
        + (99).to_bytes(8, "big")
        + b"S"
        + (300).to_bytes(4, "big")
        + b"MSFT    "
        + (4_012_500).to_bytes(4, "big")
    )
    assert raw == expected
    assert itch.decode(raw) == rec
    assert itch.message_type(rec) == "A"


def test_price8_and_u64_fields_keep_full_precision() -> None:
    rec = itch.MwcbDeclineLevel(0, 0, 1, 2**64 - 1, 3_456_789_012_345_678, 1)
    assert itch.decode(itch.encode(rec)) == rec


def test_a_space_char_survives() -> None:
    rec = itch.StockDirectory(
        1, 0, 5, "ZVZZT", "Q", " ", 100, "N", "C", "Z", "P", " ", "N", " ", "N", 0, "N"
    )
    back = itch.decode(itch.encode(rec))
    assert back == rec
    assert isinstance(back, itch.StockDirectory) and back.financial_status_indicator == " "


# --- errors ---


def test_unknown_type_names_the_byte() -> None:
    with pytest.raises(itch.ItchError, match=r"unknown message type 0x7a \('z'\)"):
        itch.decode(b"z" + bytes(20))
    with pytest.raises(itch.ItchError, match="unknown message type 0x00"):
        itch.decode(bytes(12))


def test_wrong_length_names_type_and_lengths() -> None:
    with pytest.raises(itch.ItchError, match="type 'A' is 36 bytes, got 20"):
        itch.decode(b"A" + bytes(19))


def test_empty_message() -> None:
    with pytest.raises(itch.ItchError, match="empty"):
        itch.decode(b"")


def test_encode_rejects_out_of_range_and_bad_text() -> None:
    with pytest.raises(itch.ItchError, match="field timestamp"):
        itch.encode(itch.OrderDelete(1, 0, 1 << 48, 5))
    with pytest.raises(itch.ItchError, match="field shares"):
        itch.encode(itch.AddOrder(1, 0, 1, 5, "B", -1, "A", 1))
    with pytest.raises(itch.ItchError, match="field stock: 'TOOLONGXX' is longer than 8"):
        itch.encode(itch.AddOrder(1, 0, 1, 5, "B", 1, "TOOLONGXX", 1))
    with pytest.raises(itch.ItchError, match="field side: a char is one byte"):
        itch.encode(itch.AddOrder(1, 0, 1, 5, "BS", 1, "A", 1))
    with pytest.raises(itch.ItchError, match="field stock_locate: expected int"):
        itch.encode(itch.OrderDelete("1", 0, 1, 5))  # type: ignore[arg-type]


def test_encode_rejects_foreign_tuples() -> None:
    with pytest.raises(itch.ItchError, match=r"not an ITCH 5\.0 record"):
        itch.encode((1, 2, 3))  # type: ignore[arg-type]


# --- property tests, strategies derived from the layout table ---


def _value(f: itch.Field) -> st.SearchStrategy[Any]:
    if f.kind == "char":
        return st.characters(min_codepoint=0, max_codepoint=255)
    if f.kind == "alpha":
        text = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=f.size)
        # On the wire trailing spaces are padding, so a record never carries them.
        return text.map(lambda s: s.rstrip(" "))
    return st.integers(min_value=0, max_value=(1 << (8 * f.size)) - 1)


def _records(letter: str) -> st.SearchStrategy[Any]:
    cls = itch.MESSAGE_TYPES[letter]
    return st.tuples(*(_value(f) for f in itch.LAYOUTS[letter])).map(lambda t: cls._make(t))


@pytest.mark.parametrize("letter", LETTERS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_decode_of_encode_is_identity(letter: str, data: st.DataObject) -> None:
    rec = data.draw(_records(letter))
    raw = itch.encode(rec)
    assert len(raw) == SPEC_LENGTHS[letter] and raw[:1] == letter.encode()
    assert itch.decode(raw) == rec


@pytest.mark.parametrize("letter", LETTERS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_encode_of_decode_is_identity(letter: str, data: st.DataObject) -> None:
    body = data.draw(
        st.binary(min_size=SPEC_LENGTHS[letter] - 1, max_size=SPEC_LENGTHS[letter] - 1)
    )
    raw = letter.encode() + body
    rec = itch.decode(raw)
    assert type(rec) is itch.MESSAGE_TYPES[letter]
    assert itch.encode(rec) == raw


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_decode_of_arbitrary_bytes_is_a_record_or_an_itch_error(raw: bytes) -> None:
    try:
        rec = itch.decode(raw)
    except itch.ItchError:
        assert len(raw) == 0 or itch.MESSAGE_LENGTHS[raw[0]] != len(raw)
    else:
        assert itch.encode(rec) == raw
