"""Pacing with a fake clock: no sleeps, ``now`` is a number we choose."""

from __future__ import annotations

import numpy as np
import pytest

from tickerplant.exchange.pacing import AsFastAsPossible, FixedRate, ItchClock, itch_timestamps
from tickerplant.wire.blocks import as_array, join_messages, offsets_of

MS = 1_000_000  # ns


def message(timestamp: int, body: bytes = b"x" * 25) -> bytes:
    """An ITCH-shaped message: type, locate, tracking number, 6-byte timestamp, the rest."""
    return (
        b"A" + (1).to_bytes(2, "big") + (0).to_bytes(2, "big") + timestamp.to_bytes(6, "big") + body
    )


def load(pacer: ItchClock, stamps: list[int]) -> int:
    stream = join_messages([message(t) for t in stamps])
    offsets, _ = offsets_of(stream)
    pacer.load(as_array(stream), offsets)
    return len(stamps)


def test_as_fast_as_possible_releases_everything_now() -> None:
    pacer = AsFastAsPossible()
    assert pacer.allowance(5.0, 12345) == 12345
    assert pacer.deadline(5.0) == 5.0


def test_fixed_rate_releases_the_burst_then_one_message_per_period() -> None:
    pacer = FixedRate(1000.0, burst=10)
    assert pacer.allowance(0.0, 100) == 10
    pacer.sent(10)
    assert pacer.allowance(0.0, 100) == 0
    assert pacer.deadline(0.0) == pytest.approx(0.001)
    assert pacer.allowance(0.0005, 100) == 0
    assert pacer.allowance(0.001, 100) == 1
    assert pacer.allowance(0.001, 0) == 0  # never more than is pending


def test_fixed_rate_holds_the_rate_over_a_second() -> None:
    pacer = FixedRate(20_000.0)
    sent = 0
    now = 0.0
    while now < 1.0:
        n = pacer.allowance(now, 10**9)
        pacer.sent(n)
        sent += n
        now = max(pacer.deadline(now), now + 0.0013)  # a coarse, late timer
    # one burst (10 ms worth) on top of a second's worth, never more
    assert 20_000 <= sent <= 20_000 + 200 + 1


def test_fixed_rate_does_not_save_up_beyond_the_burst() -> None:
    pacer = FixedRate(1000.0, burst=5)
    pacer.sent(pacer.allowance(0.0, 100))
    assert pacer.allowance(60.0, 100) == 5


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf"), float("nan")])
def test_fixed_rate_rejects_nonsense(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        FixedRate(rate)


def test_itch_timestamps_are_read_from_bytes_5_to_11() -> None:
    stream = join_messages([message(7), message(2**47 + 3), b"S\x00\x01\x00\x02"])
    offsets, _ = offsets_of(stream)
    out = np.zeros(3, dtype=np.int64)
    itch_timestamps(as_array(stream), offsets, out)
    # the 5-byte message has no timestamp: it takes the one before it
    assert out.tolist() == [7, 2**47 + 3, 2**47 + 3]


def test_itch_clock_maps_the_first_timestamp_to_the_start_and_scales_by_speed() -> None:
    pacer = ItchClock(speed=2.0)
    base = 9 * 3600 * 10**9
    pending = load(pacer, [base, base + 1 * MS, base + 2 * MS, base + 10 * MS])
    start = 100.0
    assert pacer.allowance(start, pending) == 1  # only the first is due at the start
    pacer.sent(1)
    pending -= 1
    # 1 ms of the day passes in 0.5 ms at twice real time
    assert pacer.deadline(start) == pytest.approx(start + 0.0005)
    assert pacer.allowance(start + 0.0004, pending) == 0
    assert pacer.allowance(start + 0.0010, pending) == 2
    pacer.sent(2)
    pending -= 2
    assert pacer.deadline(start + 0.0010) == pytest.approx(start + 0.005)
    assert pacer.allowance(start + 0.005, pending) == 1


def test_itch_clock_keeps_time_across_chunks() -> None:
    pacer = ItchClock(speed=1.0)
    pending = load(pacer, [0, 5 * MS])
    assert pacer.allowance(0.0, pending) == 1
    pacer.sent(1)
    pending = 1 + load(pacer, [6 * MS, 20 * MS])  # the next chunk queues behind the rest
    assert pacer.allowance(0.006, pending) == 2
    pacer.sent(2)
    assert pacer.deadline(0.006) == pytest.approx(0.020)


def test_itch_clock_sends_messages_that_go_back_in_time_at_once() -> None:
    pacer = ItchClock(speed=1.0)
    pending = load(pacer, [10 * MS, 20 * MS, 15 * MS, 30 * MS])
    assert pacer.allowance(0.0, pending) == 1
    # the 15 ms message follows the 20 ms one, rather than overtaking it
    assert pacer.allowance(0.010, pending) == 3


def test_itch_clock_rejects_nonsense_speed() -> None:
    with pytest.raises(ValueError, match="speed"):
        ItchClock(0.0)
