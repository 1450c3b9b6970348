"""ITCH files: writer and chunked reader round trips, and each kind of damage with its offset."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from tickerplant.capture.itch_file import (
    INFLATERS,
    ItchFile,
    ItchFileError,
    ItchWriter,
    inflater,
    read_chunks,
)
from tickerplant.wire import itch
from tickerplant.wire.blocks import iter_messages, join_messages


def sample_messages(n: int, seed: int = 1) -> list[bytes]:
    """Messages of every type with random field bytes (any bytes decode as ITCH fields)."""
    rng = random.Random(seed)
    letters = sorted(itch.LENGTHS)
    out = []
    for i in range(n):
        letter = letters[i % len(letters)] if i < len(letters) else rng.choice(letters)
        body = rng.randbytes(itch.LENGTHS[letter] - 1)
        out.append(letter.encode() + body)
    return out


def write_file(path: Path, messages: list[bytes]) -> bytes:
    with ItchWriter(path) as w:
        for m in messages:
            w.write_message(m)
    return path.read_bytes()


def test_round_trip_messages(tmp_path: Path) -> None:
    msgs = sample_messages(500)
    path = tmp_path / "day.itch"
    with ItchWriter(path) as w:
        for m in msgs:
            w.write_message(m)
        assert w.messages == 500
    raw = path.read_bytes()
    assert raw == join_messages(msgs)
    assert w.bytes_written == len(raw)
    chunks = list(read_chunks(path))
    assert len(chunks) == 1
    assert [itch.decode(m) for m in iter_messages(chunks[0])] == [itch.decode(m) for m in msgs]


def test_write_blocks_and_messages_interleave(tmp_path: Path) -> None:
    msgs = sample_messages(120, seed=2)
    path = tmp_path / "mixed.itch"
    with ItchWriter(path) as w:
        w.write_blocks(join_messages(msgs[:50]))
        w.write_message(msgs[50])
        w.write_blocks(memoryview(join_messages(msgs[51:])))
        assert w.messages == 120
    assert b"".join(read_chunks(path)) == join_messages(msgs)


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 13, 14, 37, 51, 64, 1000, 4 << 20])
def test_any_chunk_size_yields_whole_messages(tmp_path: Path, chunk_bytes: int) -> None:
    msgs = sample_messages(300, seed=3)
    raw = write_file(tmp_path / "c.itch", msgs)
    chunks = list(read_chunks(tmp_path / "c.itch", chunk_bytes=chunk_bytes))
    assert b"".join(chunks) == raw
    seen: list[bytes] = []
    for chunk in chunks:
        assert chunk, "no empty chunks"
        seen.extend(iter_messages(chunk))  # raises if a chunk ends inside a message
        # A chunk is what one read completed, plus at most one carried message.
        assert len(chunk) <= chunk_bytes + 2 + max(itch.LENGTHS.values())
    assert seen == msgs
    if chunk_bytes < len(raw):
        assert len(chunks) > 1


def test_empty_file_yields_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty.itch").write_bytes(b"")
    assert list(read_chunks(tmp_path / "empty.itch")) == []


def test_chunk_bytes_must_be_positive(tmp_path: Path) -> None:
    (tmp_path / "x.itch").write_bytes(b"")
    with pytest.raises(ValueError, match="chunk_bytes"):
        list(read_chunks(tmp_path / "x.itch", chunk_bytes=0))


# --- damage: the error names the offset of the bad block, whatever the chunking ---

CHUNKINGS = [1, 5, 40, 4 << 20]


def damaged(tmp_path: Path, bad: bytes) -> tuple[Path, int, int]:
    """A file of good messages, ``bad`` bytes, then more good messages; (path, offset, good)."""
    head = join_messages(sample_messages(40, seed=4))
    tail = join_messages(sample_messages(10, seed=5))
    path = tmp_path / "bad.itch"
    path.write_bytes(head + bad + tail)
    return path, len(head), 40


def read_until_error(path: Path, chunk_bytes: int) -> tuple[int, str]:
    """Messages delivered before the error, and the error's text."""
    delivered = 0
    with pytest.raises(ItchFileError) as err:
        for chunk in read_chunks(path, chunk_bytes=chunk_bytes):
            delivered += sum(1 for _ in iter_messages(chunk))
    return delivered, str(err.value)


@pytest.mark.parametrize("chunk_bytes", CHUNKINGS)
def test_length_zero_before_no_message_type(tmp_path: Path, chunk_bytes: int) -> None:
    path, at, good = damaged(tmp_path, b"\x00\x00")  # then the next block's length: 0x00
    delivered, text = read_until_error(path, chunk_bytes)
    assert text == f"offset {at}: length 0, and 0x00 is no ITCH message type to take a length from"
    assert delivered == good


def zero_prefixed(messages: list[bytes], every: int = 1) -> bytes:
    """``messages`` framed with a zero length prefix (on every ``every``-th message)."""
    return b"".join(
        (b"\x00\x00" if i % every == 0 else len(m).to_bytes(2, "big")) + m
        for i, m in enumerate(messages)
    )


@pytest.mark.parametrize("chunk_bytes", CHUNKINGS)
@pytest.mark.parametrize("every", [1, 3])
def test_zero_prefixes_are_taken_from_the_type_and_counted(
    tmp_path: Path, chunk_bytes: int, every: int
) -> None:
    msgs = sample_messages(300, seed=9)
    path = tmp_path / "zero.itch"
    path.write_bytes(zero_prefixed(msgs, every))
    source = ItchFile(path, chunk_bytes)
    assert b"".join(source.chunks()) == join_messages(msgs)
    assert source.inferred_lengths == len(range(0, 300, every))


@pytest.mark.parametrize("chunk_bytes", CHUNKINGS)
def test_zero_prefixed_file_still_names_its_defects(tmp_path: Path, chunk_bytes: int) -> None:
    msgs = sample_messages(40, seed=10)
    head = zero_prefixed(msgs)
    path = tmp_path / "zero.itch"
    # A prefix that disagrees with its type, after zero-prefixed messages
    path.write_bytes(head + b"\x00\x14A" + bytes(19) + zero_prefixed(msgs))
    assert read_until_error(path, chunk_bytes) == (
        40, f"offset {len(head)}: type 'A' is 36 bytes, length says 20")
    # bytes that are not ITCH at all
    path.write_bytes(head + b"\x00\x00zzzz, no ITCH")
    assert read_until_error(path, chunk_bytes) == (
        40, f"offset {len(head)}: length 0, and 0x7a ('z') is no ITCH message type to take a "
        "length from")
    # a last message cut short
    cut = head + b"\x00\x00" + msgs[0][:-3]
    path.write_bytes(cut)
    delivered, text = read_until_error(path, chunk_bytes)
    assert delivered == 40
    assert text == (f"file ends inside a message at offset {len(head)}: length says "
                    f"{len(msgs[0])}, {len(msgs[0]) - 3} bytes follow")
    path.write_bytes(head + b"\x00\x00")  # a zero prefix and then nothing
    assert read_until_error(path, chunk_bytes) == (
        40, f"file ends inside a message at offset {len(head)}: length says 0, 0 bytes follow")


@pytest.mark.parametrize("chunk_bytes", CHUNKINGS)
def test_unknown_type(tmp_path: Path, chunk_bytes: int) -> None:
    path, at, good = damaged(tmp_path, b"\x00\x14z" + bytes(19))
    delivered, text = read_until_error(path, chunk_bytes)
    assert text == f"offset {at}: unknown message type 0x7a ('z')"
    assert delivered == good


@pytest.mark.parametrize("chunk_bytes", CHUNKINGS)
def test_length_disagrees_with_type(tmp_path: Path, chunk_bytes: int) -> None:
    path, at, good = damaged(tmp_path, b"\x00\x14A" + bytes(19))
    delivered, text = read_until_error(path, chunk_bytes)
    assert text == f"offset {at}: type 'A' is 36 bytes, length says 20"
    assert delivered == good


def test_wild_length_fails_without_reading_on(tmp_path: Path) -> None:
    # 60,000 bytes are not in the file: the header alone must condemn the block.
    path, at, _ = damaged(tmp_path, b"\xea\x60A" + bytes(35))
    _, text = read_until_error(path, 4 << 20)
    assert text == f"offset {at}: type 'A' is 36 bytes, length says 60000"


@pytest.mark.parametrize("chunk_bytes", CHUNKINGS)
def test_file_ends_inside_a_message(tmp_path: Path, chunk_bytes: int) -> None:
    msgs = sample_messages(30, seed=6)
    raw = join_messages(msgs)
    last = 2 + len(msgs[-1])
    path = tmp_path / "cut.itch"
    path.write_bytes(raw[:-10])
    delivered, text = read_until_error(path, chunk_bytes)
    assert text.startswith(f"file ends inside a message at offset {len(raw) - last}:")
    assert delivered == 29


def test_file_ends_inside_a_length_field(tmp_path: Path) -> None:
    raw = join_messages(sample_messages(3, seed=7))
    path = tmp_path / "stray.itch"
    path.write_bytes(raw + b"\x00")
    _, text = read_until_error(path, 4 << 20)
    assert text == f"file ends inside a message at offset {len(raw)}: 1 byte of a length field"


# --- the writer refuses what it cannot vouch for ---


def test_writer_rejects_bad_messages(tmp_path: Path) -> None:
    with ItchWriter(tmp_path / "w.itch") as w:
        with pytest.raises(ItchFileError, match="unknown message type 0x7a"):
            w.write_message(b"z" + bytes(10))
        with pytest.raises(ItchFileError, match="type 'D' is 19 bytes, got 18"):
            w.write_message(b"D" + bytes(17))
        with pytest.raises(ItchFileError, match="empty message"):
            w.write_message(b"")
        good = join_messages(sample_messages(3, seed=8))
        with pytest.raises(ItchFileError, match=f"block stream offset {len(good)}: length 0"):
            w.write_blocks(good + b"\x00\x00")
        with pytest.raises(ItchFileError, match=f"block stream offset {len(good)}: a message cut"):
            w.write_blocks(good + b"\x00\x13D")
        assert w.messages == 0
    assert (tmp_path / "w.itch").read_bytes() == b""


def test_writer_closes_on_exit(tmp_path: Path) -> None:
    with ItchWriter(tmp_path / "c.itch") as w:
        w.write_message(sample_messages(1)[0])
    with pytest.raises(ValueError, match="closed file"):
        w.write_message(sample_messages(1)[0])


# --- gzip, told by its magic bytes ------------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [7, 1000, 1 << 20])
def test_gzip_reads_as_the_plain_file_whatever_its_name(tmp_path: Path, chunk_bytes: int) -> None:
    import gzip

    raw = write_file(tmp_path / "day.itch", sample_messages(3000))
    packed = tmp_path / "day.itch"  # no .gz suffix: the magic bytes decide
    packed.write_bytes(gzip.compress(raw[:20000]) + gzip.compress(raw[20000:]))  # two members
    assert b"".join(read_chunks(packed, chunk_bytes)) == raw


def test_gzip_on_standard_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gzip
    import io
    import sys

    raw = write_file(tmp_path / "day.itch", sample_messages(500))

    class Stdin:
        buffer = io.BytesIO(gzip.compress(raw))

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert b"".join(read_chunks("-", 4096)) == raw


def test_hostile_gzip_names_its_defect_and_delivers_what_came_before(tmp_path: Path) -> None:
    import gzip

    raw = write_file(tmp_path / "day.itch", sample_messages(3000))
    packed = gzip.compress(raw)
    cases = {
        "cut.gz": (packed[: len(packed) // 2], "gzip stream cut short"),
        "garbage.gz": (gzip.compress(bytes(range(256)) * 100), "offset (in the decompressed"),
        "broken.gz": (packed[:10] + b"\xff" * 200 + packed[210:], "broken gzip data"),
        "trailing.gz": (packed + b"not gzip", "are not gzip"),
    }
    for name, (data, told) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        got = b""
        with pytest.raises(ItchFileError, match=re.escape(told)):
            for chunk in read_chunks(path, 4096):
                got += chunk
        assert raw.startswith(got), name  # whole messages only, the file's own


@pytest.mark.parametrize("name", sorted(INFLATERS))
def test_every_installed_inflater_reads_the_same_and_names_the_same_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    import gzip

    monkeypatch.setenv("TICKERPLANT_INFLATE", name)
    assert inflater()[0] == name
    raw = join_messages(sample_messages(2000, seed=12))
    path = tmp_path / "day.gz"
    path.write_bytes(gzip.compress(raw))
    assert b"".join(read_chunks(path, 4096)) == raw
    path.write_bytes(gzip.compress(raw)[:-100])
    with pytest.raises(ItchFileError, match="gzip stream cut short"):
        list(read_chunks(path))
