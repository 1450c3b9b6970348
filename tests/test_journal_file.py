"""A stream's journal file and its checksums, on a real file: what the disk changed is never
served, at a restart or when a spilled range is read back."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

import pytest

from harness import wait_until
from tickerplant.capture.checksums import BLOCK, ENTRY, Checksums, CorruptBlock, JournalError
from tickerplant.capture.journal import JournalFile, JournalFollower, mark_ended
from tickerplant.distribute.journal import Journal
from tickerplant.wire.blocks import join_messages

SESSION = b"SESSION001"
PATH = "SESSION001.journal"


def messages(first: int, count: int) -> bytes:
    """``count`` 100-byte messages that carry their numbers."""
    return join_messages([b"%-98d" % n for n in range(first, first + count)])


def written(
    directory: Path, count: int, memory_bytes: int = 1 << 30
) -> tuple[JournalFile, Journal]:
    """A journal of ``count`` messages, appended 100 at a time and written to its file."""
    file = JournalFile(directory, "journal", memory_bytes)
    journal = Journal(SESSION)
    file.open(journal)
    for first in range(1, count + 1, 100):
        blocks = messages(first, min(100, count + 1 - first))
        journal.append(blocks)
        file.write([blocks], journal)
    wait_until(lambda: file.written == journal.size, 10, "the writer thread wrote it all")
    file.write([], journal)  # spills what the file now holds
    return file, journal


def flip(path: Path, at: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, at)
        os.pwrite(fd, bytes([byte[0] ^ 0x01]), at)
    finally:
        os.close(fd)


def test_checksums_vouch_block_by_block_and_a_torn_entry_vouches_for_nothing() -> None:
    data = os.urandom(3 * BLOCK + 100)
    sums = Checksums.of(data)
    assert [length for length, _ in sums.entries] == [BLOCK, BLOCK, BLOCK, 100]
    assert sums.covered == len(data) and sums.verified(data) == len(data)
    grown = Checksums.of(data[:BLOCK - 10])
    assert grown.add(data[BLOCK - 10 :]) == 0  # the partial block's entry is rewritten
    assert grown.entries == sums.entries
    bad = bytearray(data)
    bad[BLOCK + 7] ^= 0x80
    assert sums.verified(bytes(bad)) == BLOCK  # kept up to the block that does not match
    assert sums.verified(data[: 2 * BLOCK + 5]) == 2 * BLOCK  # a tail shorter than vouched
    raw = sums.encode()
    assert Checksums.decode(raw[:-3]).entries == sums.entries[:-1]  # its last entry torn


def test_a_byte_flipped_on_disk_is_dropped_at_the_restart_with_all_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    file, journal = written(tmp_path, 5000)
    file.close()
    size = journal.size
    flip(tmp_path / PATH, 3 * BLOCK + 1234)  # in the fourth block
    with caplog.at_level(logging.WARNING):
        again = JournalFile(tmp_path, "journal", 1 << 30)
    reopened = again.reopened
    assert reopened is not None and reopened.session == SESSION
    kept = len(reopened)
    assert kept == 3 * BLOCK // 100  # the whole messages before the fourth block
    assert reopened.blocks(1, kept) == (kept, messages(1, kept))
    assert (tmp_path / PATH).stat().st_size == kept * 100 < size
    assert "do not match their checksums" in caplog.text
    # The file and its checksums agree again: a second restart keeps all of it.
    second = JournalFile(tmp_path, "journal", 1 << 30).reopened
    assert second is not None and len(second) == kept


def test_a_tail_a_crash_tore_and_a_file_without_checksums_are_not_served(
    tmp_path: Path,
) -> None:
    file, journal = written(tmp_path, 3000)
    file.close()
    path = tmp_path / PATH
    with path.open("r+b") as f:  # the checksums were written, the last bytes were not
        f.truncate(journal.size - 150)
    reopened = JournalFile(tmp_path, "journal", 1 << 30).reopened
    # 300,000 bytes: four whole blocks, then the torn fifth, dropped whole (refetched)
    assert reopened is not None and len(reopened) == 4 * BLOCK // 100
    assert reopened.blocks(1, len(reopened))[1] == messages(1, len(reopened))
    (tmp_path / (PATH + ".crc")).unlink()
    assert JournalFile(tmp_path, "journal", 1 << 30).reopened is None
    assert not path.exists() and (tmp_path / (PATH + ".unverified")).exists()  # kept aside


def test_a_spilled_range_the_disk_changed_raises_rather_than_being_served(
    tmp_path: Path,
) -> None:
    file, journal = written(tmp_path, 5000, memory_bytes=BLOCK)
    try:
        assert journal.memory <= 2 * BLOCK  # the rest is read back from the file
        assert journal.blocks(1, 5000) == (5000, messages(1, 5000))
        flip(tmp_path / PATH, BLOCK + 10)
        with pytest.raises(JournalError, match="do not match their checksum"):
            journal.blocks(600, 100)  # bytes 59,900-69,900: the second block
        assert journal.blocks(1, 600) == (600, messages(1, 600))  # the first is intact
    finally:
        file.close()


def test_a_mend_writes_the_damaged_block_only_and_only_what_its_checksum_vouches_for(
    tmp_path: Path,
) -> None:
    data = os.urandom(3 * BLOCK)
    sums = Checksums.of(data)
    path = tmp_path / "f"
    path.write_bytes(data)
    flip(path, BLOCK + 5)
    fd = os.open(path, os.O_RDWR)
    try:
        wrong = bytearray(data)
        wrong[BLOCK + 9] ^= 0x01  # its neighbours right, the damaged block not
        assert not sums.mend(fd, 0, bytes(wrong), BLOCK, 2 * BLOCK)
        assert not sums.mend(fd, BLOCK + 1, data[BLOCK + 1 :], BLOCK, 2 * BLOCK)  # not whole
        assert sums.mend(fd, 0, data, BLOCK, 2 * BLOCK)
    finally:
        os.close(fd)
    assert path.read_bytes() == data


def test_a_block_the_disk_changed_is_mended_with_its_messages_fetched_again(
    tmp_path: Path,
) -> None:
    file, journal = written(tmp_path, 5000, memory_bytes=BLOCK)
    seen: list[tuple[Journal, CorruptBlock]] = []
    file.on_damage = lambda found, err: seen.append((found, err))
    try:
        flip(tmp_path / PATH, 2 * BLOCK + 10)
        with pytest.raises(CorruptBlock):
            journal.blocks(1200, 100)  # bytes 119,900-129,900: in the third block
        [(found, err)] = seen
        assert found is journal and (err.start, err.end) == (2 * BLOCK, 3 * BLOCK)
        first, last, begin, stop = journal.covering(err.start, err.end)
        # From the mark at or before the block to the one at or after its end
        assert first % Journal.mark_every == 1 and last % Journal.mark_every == 0
        assert (begin, stop) == ((first - 1) * 100, last * 100)
        assert begin <= err.start < err.end <= stop
        damaged = (err.start, err.end)
        assert not file.mend(journal, begin, messages(first + 1, last - first + 1), *damaged)
        with pytest.raises(CorruptBlock):
            journal.blocks(1200, 100)
        assert file.mend(journal, begin, messages(first, last - first + 1), *damaged)
        assert journal.blocks(1, 5000) == (5000, messages(1, 5000))
        assert (tmp_path / PATH).read_bytes() == messages(1, 5000)
        with pytest.raises(ValueError, match="not among"):
            journal.covering(0, journal.size + 1)  # (the newest are in memory)
    finally:
        file.close()


def test_a_file_cut_on_a_block_and_message_boundary_goes_on_with_checksums_that_fit_it(
    tmp_path: Path,
) -> None:
    """The .crc vouches for more than the file holds (cut where a block and a message end):
    what is kept is vouched for anew, so what the next run appends is checked against its own
    checksums, not against those of the bytes that were cut."""
    block = join_messages([b"x" * 254] * 1000)  # 256-byte messages: 256 to a block
    file = JournalFile(tmp_path, "journal", 1 << 30)
    journal = Journal(SESSION)
    file.open(journal)
    journal.append(block)
    file.write([block], journal)
    file.close()
    with (tmp_path / PATH).open("r+b") as f:
        f.truncate(2 * BLOCK)
    again = JournalFile(tmp_path, "journal", 1 << 30)
    reopened = again.reopened
    assert reopened is not None and len(reopened) == 512
    more = join_messages([b"y" * 254] * 10)
    again.open(reopened)
    reopened.append(more)
    again.write([more], reopened)
    again.close()
    third = JournalFile(tmp_path, "journal", 1 << 30).reopened
    assert third is not None and len(third) == 522
    assert third.blocks(1, 522) == (522, block[: 2 * BLOCK] + more)


def test_a_days_file_is_reopened_a_piece_at_a_time_and_held_on_disk_not_in_memory(
    tmp_path: Path,
) -> None:
    file, _ = written(tmp_path, 60_000)  # 6 MB: more than one read of the reopen
    file.close()
    flip(tmp_path / PATH, 5_000_000 + 77)  # in the second read
    again = JournalFile(tmp_path, "journal", 1 << 30)
    reopened = again.reopened
    try:
        assert reopened is not None
        kept = 5_000_000 // BLOCK * BLOCK // 100  # the whole messages before the bad block
        assert len(reopened) == kept and reopened.memory == 0
        assert reopened.index_bytes <= 1 << 19  # a mark per 64 messages, not an offset each
        assert reopened.blocks(1, kept) == (kept, messages(1, kept))
        assert reopened.blocks(kept - 70, 5) == (5, messages(kept - 70, 5))
    finally:
        again.close()


def test_only_the_newest_sessions_files_are_kept(tmp_path: Path) -> None:
    file = JournalFile(tmp_path, "journal", 0, keep_sessions=2)
    journals = []
    for n in range(1, 5):
        journal = Journal(b"SESSION%03d" % n)
        journal.append(messages(1, 10))
        file.open(journal)
        file.write([messages(1, 10)], journal)
        # (newest by when last written: this one's writer done before the next session's)
        wait_until(lambda: file.written == 1000, 10, "the writer thread wrote it all")
        file.write([], journal)  # spilled: read back through the file
        journals.append(journal)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "SESSION003.journal", "SESSION003.journal.crc",
        "SESSION004.journal", "SESSION004.journal.crc"]  # fmt: skip
    # A retired file's descriptor is closed with it (its disk freed: an hour's soak grew a
    # descriptor a session, and kept every deleted file's bytes), and its journal says so.
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor, gone)
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
    assert not [t for t in held if "SESSION00" in t and "deleted" in t], held
    with pytest.raises(JournalError, match=r"SESSION001\.journal was retired"):
        journals[0].blocks(1, 5)
    assert journals[3].blocks(1, 5) == (5, messages(1, 5))
    file.close()


def test_a_sessions_file_counts_only_its_own_bytes_while_the_last_ones_writer_finishes(
    tmp_path: Path,
) -> None:
    """What the journal may spill is what its file holds: the writer still finishing the
    session before must not add its bytes to the new session's count."""
    file = JournalFile(tmp_path, "journal", 0)
    file.open(Journal(b"SESSION001"))
    file.write([messages(1, 500_000)], None)  # 50 MB: still being written...
    journal = Journal(b"SESSION002")
    file.open(journal)  # ...when the next session starts
    journal.append(messages(1, 10))
    file.write([messages(1, 10)], journal)
    file.close()  # every writer done
    assert file.written == journal.size == 1000
    assert (tmp_path / "SESSION001.journal").stat().st_size == 50_000_000


def test_fsync_interval_syncs_within_its_interval_not_after_every_batch(tmp_path: Path) -> None:
    files = {name: JournalFile(tmp_path / name, "journal", 1 << 30, fsync_interval=interval)
             for name, interval in (("never", None), ("every", 0.0), ("second", 0.5))}
    for file in files.values():
        journal = Journal(SESSION)
        file.open(journal)
        for first in range(1, 501, 100):  # five batches
            file.write([messages(first, 100)], journal)
        wait_until(lambda f=file: f.written == 50_000, 10, "the writer thread wrote it all")
    # Within the interval, once for all five; at once, after each; never, never.
    wait_until(lambda: files["second"].syncs == 1, 10, "the second's sync, its interval on")
    assert files["every"].syncs == 5 and files["never"].syncs == 0
    for file in files.values():
        file.close()
    assert files["second"].syncs == 1  # nothing written since: nothing more to sync


@pytest.mark.parametrize("cut", ["zeros past the data", "checksums past the data",
                                 "a torn checksum entry"])  # fmt: skip
def test_what_a_power_cut_leaves_is_kept_up_to_its_last_whole_vouched_message(
    tmp_path: Path, cut: str,
) -> None:
    """A power cut leaves what the kernel had written back: the file grown with zeros where
    its data never reached the disk, or checksums for bytes that did not, or half an entry."""
    file, _ = written(tmp_path, 2000)  # 200,000 bytes: three whole blocks and a part
    file.close()
    path, crc = tmp_path / PATH, tmp_path / (PATH + ".crc")
    if cut == "zeros past the data":
        with path.open("r+b") as f:
            f.truncate(150_000)
            f.seek(0, os.SEEK_END)
            f.write(bytes(30_000))
        kept = 2 * BLOCK // 100  # the zeros fail the third block's checksum
    elif cut == "checksums past the data":
        with path.open("r+b") as f:
            f.truncate(150_050)  # mid-message, mid-block
        kept = 2 * BLOCK // 100
    else:
        crc.write_bytes(crc.read_bytes()[:-3])
        kept = 3 * BLOCK // 100  # the last entry torn: the part it covered, not vouched for
    reopened = JournalFile(tmp_path, "journal", 1 << 30).reopened
    assert reopened is not None and len(reopened) == kept
    assert reopened.blocks(1, kept) == (kept, messages(1, kept))
    assert path.stat().st_size == kept * 100  # and the file is cut there, its checksums too
    assert Checksums.decode(crc.read_bytes()).covered == kept * 100


def test_a_follower_reads_what_another_process_writes_as_it_grows_and_knows_its_end(
    tmp_path: Path,
) -> None:
    file = JournalFile(tmp_path, "journal", 0, reopen=False)
    written = Journal(SESSION)
    file.open(written)
    follower: JournalFollower | None = None
    for first in range(1, 3001, 100):  # 300,000 bytes, written 10,000 at a time
        written.append(messages(first, 100))
        file.follow(written)
        if follower is None:
            wait_until(lambda: (tmp_path / PATH).exists(), 10, "the file made")
            follower = JournalFollower(tmp_path / PATH)
        follower.poll()  # whatever the writer thread has got to: a block, half of one, none
    file.close()
    assert follower is not None and not follower.ended
    mark_ended(tmp_path / PATH, written.size)
    follower.poll()
    assert follower.ended and len(follower.journal) == 3000
    assert follower.journal.memory == 0  # read back from the file, not held
    assert follower.journal.blocks(1, 3000) == (3000, messages(1, 3000))
    flip(tmp_path / PATH, 10)  # the disk changes a byte of the first block: not served
    with pytest.raises(JournalError):
        follower.journal.blocks(1, 5)
    follower.close()
    again = JournalFollower(tmp_path / PATH)  # a recovery host started again reads it anew
    again.poll()  # (once might be a read racing the writer: looked at again)
    with pytest.raises(JournalError, match="do not match their checksum"):
        again.poll()
    again.close()


def test_a_follower_never_steps_back_over_what_it_read_when_an_entry_is_caught_mid_write(
    tmp_path: Path,
) -> None:
    path, crc = tmp_path / PATH, tmp_path / (PATH + ".crc")
    first = messages(1, 10)
    path.write_bytes(first)
    crc.write_bytes(Checksums.of(first).encode())
    follower = JournalFollower(path)
    assert follower.poll() == 10
    whole = first + messages(11, 10)
    path.write_bytes(whole)
    crc.write_bytes(ENTRY.pack(len(whole), 12345))  # the entry's length new, its CRC not yet
    assert follower.poll() == 0  # (a review found it stepped back, then read 1-10 again)
    crc.write_bytes(Checksums.of(whole).encode())
    assert follower.poll() == 10
    assert follower.journal.blocks(1, 100) == (20, whole)
    follower.close()


def test_a_sessions_end_is_read_whole_and_a_file_begun_again_has_none(tmp_path: Path) -> None:
    path = tmp_path / PATH
    path.write_bytes(messages(1, 10))
    (tmp_path / (PATH + ".crc")).write_bytes(Checksums.of(messages(1, 10)).encode())
    (tmp_path / (PATH + ".end")).write_text("")  # as a follower might catch it half-written
    follower = JournalFollower(path)
    follower.poll()
    assert not follower.ended
    mark_ended(path, 1000)
    assert follower.ended and not (tmp_path / (PATH + ".end.partial")).exists()
    follower.close()
    file = JournalFile(tmp_path, "journal", 1 << 30, reopen=False)
    file.open(Journal(SESSION))  # the same session name, begun again: not ended
    assert not (tmp_path / (PATH + ".end")).exists()
    file.close()


def test_a_failing_fsync_is_not_tried_again_in_a_spin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A disk whose syncs fail (EIO, which a test cannot make a real disk do): counted and
    logged, and tried again only after the next batch, not thousands of times a second."""
    tries = []

    def failing(fd: int) -> None:
        tries.append(fd)
        raise OSError(5, "Input/output error")

    file = JournalFile(tmp_path, "journal", 1 << 30, fsync_interval=0.0)
    journal = Journal(SESSION)
    file.open(journal)
    monkeypatch.setattr(os, "fsync", failing)
    file.write([messages(1, 10)], journal)
    wait_until(lambda: file.errors >= 1, 10, "the failed sync counted")
    time.sleep(0.3)  # (what is measured here is that nothing happens meanwhile)
    assert len(tries) == 1 and file.errors == 1
    monkeypatch.undo()
    file.close()


def test_a_follower_started_late_reads_a_big_file_back_a_piece_a_poll(tmp_path: Path) -> None:
    path = tmp_path / PATH
    whole = messages(1, 60_000)  # 6 MB: more than one poll's 4 MiB
    path.write_bytes(whole)
    (tmp_path / (PATH + ".crc")).write_bytes(Checksums.of(whole).encode())
    follower = JournalFollower(path)
    first = follower.poll()
    assert 0 < first < 60_000 and follower.journal.memory == 0
    assert follower.poll() == 60_000 - first
    assert follower.journal.blocks(1, 60_000) == (60_000, whole)
    follower.close()
