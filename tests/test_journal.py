import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickerplant.distribute.journal import Journal, JournalGone
from tickerplant.wire.blocks import iter_messages, join_messages

pieces = st.lists(st.lists(st.binary(max_size=20), max_size=12), min_size=1, max_size=8)


@given(pieces, st.integers(-2, 80), st.integers(-1, 80))
def test_any_range_reads_back_what_was_appended(
    parts: list[list[bytes]], sequence: int, count: int
) -> None:
    journal = Journal(b"SESSION001")
    everything: list[bytes] = []
    for i, msgs in enumerate(parts):
        stream = join_messages(msgs)
        # Views of a larger buffer, as the publisher hands them over, and plain bytes.
        piece = memoryview(b"xx" + stream)[2:] if i % 2 else stream
        assert journal.append(piece) == len(msgs)
        everything += msgs
    assert journal.next_sequence == len(everything) + 1
    got, blocks = journal.blocks(sequence, count)
    if sequence < 1 or count <= 0:
        assert (got, blocks) == (0, b"")
        return
    want = everything[sequence - 1 : sequence - 1 + count]
    assert got == len(want)
    assert list(iter_messages(blocks)) == want


def test_stray_bytes_are_refused() -> None:
    journal = Journal(b"SESSION001")
    try:
        journal.append(join_messages([b"abc"]) + b"\x00")
    except ValueError as err:
        assert "stray" in str(err)
    else:
        raise AssertionError("a partial block was journaled")
    assert len(journal) == 0


@given(pieces, st.integers(0, 200), st.integers(0, 400), st.integers(1, 80), st.integers(1, 80),
       st.sampled_from([1, 3, 64]), st.sampled_from([1, 2, 1 << 16]))
def test_a_spilled_journal_reads_the_same_through_its_backing(
    parts: list[list[bytes]], keep: int, durable: int, sequence: int, count: int,
    mark_every: int, marks_per_array: int,
) -> None:  # fmt: skip
    journal = Journal(b"SESSION001")
    # Marks of every few messages, in small arrays: reads from a mark before, across arrays.
    journal.mark_every, journal.marks_per_array = mark_every, marks_per_array
    everything: list[bytes] = []
    for msgs in parts:
        journal.append(join_messages(msgs))
        everything += msgs
    whole = b"".join(join_messages(m) for m in parts)  # what the owner's file holds
    held = [durable]  # what the file holds so far

    def backing(offset: int, size: int) -> bytes:
        assert offset + size <= held[0], "read back what the file does not hold yet"
        return whole[offset : offset + size]

    journal.backing = backing
    journal.spill(keep, durable)
    assert journal.size == len(whole)
    assert journal.memory >= min(keep, len(whole)) or journal.memory >= len(whole) - durable
    got, blocks = journal.blocks(sequence, count)
    want = everything[sequence - 1 : sequence - 1 + count]
    assert got == len(want) and list(iter_messages(blocks)) == want
    held[0] = len(whole)
    journal.spill(0, len(whole))
    assert journal.memory == 0
    assert list(iter_messages(journal.blocks(1, len(everything))[1])) == everything


def test_a_spilled_journals_index_keeps_a_mark_per_64_messages_not_an_offset_each() -> None:
    journal = Journal(b"SESSION001")
    whole = []
    for piece in range(1000):  # a million messages, a thousand pieces
        blocks = join_messages([b"%07d" % (piece * 1000 + i) for i in range(1000)])
        journal.append(blocks)
        whole.append(blocks)
    data = b"".join(whole)
    resident = journal.index_bytes
    journal.backing = lambda offset, size: data[offset : offset + size]
    journal.spill(0, len(data))
    assert journal.memory == 0
    # 4 bytes a message resident; spilled, 8 bytes per 64 (in one array of 512 KiB).
    assert resident >= 4_000_000 and journal.index_bytes <= 1 << 19
    assert list(iter_messages(journal.blocks(123_457, 3)[1])) == [b"0123456", b"0123457",
                                                                b"0123458"]  # fmt: skip


def test_a_journal_of_a_session_joined_under_way_holds_from_its_first_number() -> None:
    journal = Journal(b"SESSION001", first=101)
    assert (len(journal), journal.next_sequence, journal.first_held) == (100, 101, 101)
    journal.append(join_messages([b"a", b"b", b"c"]))
    assert list(iter_messages(journal.blocks(102, 5)[1])) == [b"b", b"c"]
    with pytest.raises(JournalGone, match="messages 100-100 are no longer held"):
        journal.blocks(100, 2)
    journal.backing = lambda offset, size: b""
    with pytest.raises(RuntimeError, match="numbered from 1"):
        journal.spill(keep=0, durable=3)


def test_a_ring_lets_go_of_its_oldest_and_says_so_when_they_are_asked_for() -> None:
    journal = Journal(b"SESSION001")
    for piece in range(10):
        journal.append(join_messages([b"%03d" % (piece * 10 + i) for i in range(10)]))
    journal.drop(keep=5 * 10 * 5)  # five pieces of ten 5-byte blocks
    assert journal.memory == 250 and journal.first_held == 51 and len(journal) == 100
    with pytest.raises(JournalGone, match="messages 50-50 are no longer held"):
        journal.blocks(50, 10)
    assert list(iter_messages(journal.blocks(51, 2)[1])) == [b"050", b"051"]
    with pytest.raises(RuntimeError, match="spills only with a backing"):
        journal.spill(0, 0)
