from hypothesis import given
from hypothesis import strategies as st

from tickerplant.distribute.journal import Journal
from tickerplant.wire.blocks import iter_messages, join_messages

pieces = st.lists(st.lists(st.binary(max_size=20), max_size=12), min_size=1, max_size=8)


@given(pieces, st.integers(-2, 80), st.integers(-1, 80), st.sampled_from([1, 5, 1 << 20]))
def test_any_range_reads_back_what_was_appended(
    parts: list[list[bytes]], sequence: int, count: int, offsets_per_array: int
) -> None:
    journal = Journal(b"SESSION001")
    # Small arrays of offsets: appends and reads that cross from one to the next.
    journal.offsets_per_array = offsets_per_array
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


@given(pieces, st.integers(0, 200), st.integers(0, 400), st.integers(1, 80), st.integers(1, 80))
def test_a_spilled_journal_reads_the_same_through_its_backing(
    parts: list[list[bytes]], keep: int, durable: int, sequence: int, count: int
) -> None:
    journal = Journal(b"SESSION001")
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
