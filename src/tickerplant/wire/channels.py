"""Channels: one exchange's messages partitioned by stock over K MoldUDP64 sessions, as real
feeds are partitioned (Cboe PITCH's units, OPRA's lines, CME's channels; NASDAQ TotalView is
the one-channel exception).

- A message goes to the channel of its stock locate (ITCH 5.0's bytes 1-2): channel
  ``(locate - 1) % K``, counted from 0. Its Stock Directory goes with the stock, so a channel's
  session describes every stock it carries.
- A message of no stock (locate 0: System Event, the market-wide circuit breaker's levels and
  status) goes to every channel: each channel's session is a whole day on its own, and a
  receiver of several sees each such message once per channel, the same bytes (it keeps one).
- Channel ``k`` (from 1) of K is its own session: the base session's first 7 characters and
  ``k`` in three digits (``TP00000001`` -> ``TP00000001``, ``TP00000002``, ...); one channel
  keeps the base session as it is. Its lines are the base lines with ``k - 1`` added to the
  third octet of their groups (``239.192.77.1`` -> ``239.192.78.1`` for channel 2), ports
  unchanged: a receiver binds each group on the same port.
"""

from __future__ import annotations

import ipaddress
from typing import TypeVar

import numpy as np

from tickerplant.endpoint import Endpoint
from tickerplant.errors import ConfigError
from tickerplant.jit import kernel
from tickerplant.wire.blocks import I64, U8, as_array, offsets_of

MAX_CHANNELS = 999  # three digits of a session name
EVERY = -1  # the channel of a message of no stock: every channel
L = TypeVar("L", int, I64)


@kernel
def _route(stream: U8, offsets: I64, channels: int, route: I64,
           sizes: I64) -> None:  # pragma: no cover - compiled
    """Each block's channel into ``route`` (``EVERY`` for locate 0), and the bytes each channel
    gets into ``sizes``."""
    n = offsets.shape[0]
    for i in range(n):
        pos = offsets[i]
        # (as int64: numba makes uint8 arithmetic unsigned, and unsigned with signed, float)
        size = (np.int64(stream[pos]) << 8) | np.int64(stream[pos + 1])
        locate = np.int64(0)
        if size >= 3:  # type, then the locate
            locate = (np.int64(stream[pos + 3]) << 8) | np.int64(stream[pos + 4])
        if locate == 0:
            route[i] = EVERY
            for c in range(channels):
                sizes[c] += 2 + size
        else:
            k = (locate - 1) % channels
            route[i] = k
            sizes[k] += 2 + size


@kernel
def _gather(stream: U8, offsets: I64, end: int, route: I64, starts: I64,
            out: U8) -> None:  # pragma: no cover - compiled
    """Copy each block to its channel's part of ``out`` (channel ``k`` from ``starts[k]``)."""
    n = offsets.shape[0]
    channels = starts.shape[0]
    fill = starts.copy()
    for i in range(n):
        begin = offsets[i]
        stop = offsets[i + 1] if i + 1 < n else end
        k = route[i]
        lo = 0 if k == EVERY else k
        hi = channels if k == EVERY else k + 1
        for c in range(lo, hi):
            o = fill[c]
            for j in range(begin, stop):
                out[o + j - begin] = stream[j]
            fill[c] = o + stop - begin


def split(blocks: bytes | bytearray | memoryview, channels: int) -> list[bytes]:
    """``blocks`` (whole ITCH messages as a block stream) as each channel's block stream, in
    order: one copy of the bytes, two compiled passes."""
    if channels == 1:
        return [bytes(blocks)]
    arr = as_array(blocks)
    offsets, end = offsets_of(blocks)
    if end != arr.shape[0]:
        raise ValueError(f"a block stream of {arr.shape[0]} bytes ends in a partial block at {end}")
    route = np.empty(offsets.shape[0], dtype=np.int64)
    sizes = np.zeros(channels, dtype=np.int64)
    _route(arr, offsets, channels, route, sizes)
    starts = np.zeros(channels, dtype=np.int64)
    np.cumsum(sizes[:-1], out=starts[1:])
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    _gather(arr, offsets, end, route, starts, out)
    data = out.tobytes()
    return [data[int(s) : int(s + n)] for s, n in zip(starts, sizes, strict=True)]


def check_count(channels: int) -> None:
    """A count of channels a session name can number."""
    if not 1 <= channels <= MAX_CHANNELS:
        raise ConfigError("channels", f"{channels}", f"give 1 to {MAX_CHANNELS}")


def channel_of(locate: L, channels: int) -> L:
    """The channel (from 0) of a stock ``locate`` (or an array of them), of ``channels``; never
    asked of locate 0, which is every channel's."""
    return (locate - 1) % channels


def session_of(base: str, channel: int, channels: int) -> str:
    """The session name of ``channel`` (from 1) of ``channels``."""
    if channels == 1:
        return base
    return f"{base.strip()[:7]}{channel:03d}"


def line_of(base: Endpoint, channel: int, field: str) -> Endpoint:
    """The group of ``channel`` (from 1) on the line whose channel 1 is ``base``: ``channel - 1``
    added to its third octet; ``field`` names the setting in the error."""
    if channel == 1:
        return base
    address = ipaddress.IPv4Address(base.host) + ((channel - 1) << 8)
    if not address.is_multicast:
        raise ConfigError(field, f"channel {channel}'s group {address} is not a multicast address",
                          "give a base group lower in 224.0.0.0/4, or fewer channels")  # fmt: skip
    return Endpoint(str(address), base.port)


def lines_of(a: Endpoint, b: Endpoint, channels: int) -> list[tuple[Endpoint, Endpoint]]:
    """Every channel's (A, B) lines; two channels, or a channel's two lines, never share a group
    and port (told as the configuration error it is)."""
    check_count(channels)
    pairs = [(line_of(a, k, "line_a"), line_of(b, k, "line_b")) for k in range(1, channels + 1)]
    seen: dict[Endpoint, str] = {}
    for k, pair in enumerate(pairs, start=1):
        for name, line in zip("AB", pair, strict=True):
            where = f"channel {k}'s line {name}"
            if line in seen:
                raise ConfigError(f"line_{name.lower()}", f"{where} is {line}, as is {seen[line]}",
                                  "give line B another port, or bases more than "
                                  f"{channels} x 256 addresses apart")  # fmt: skip
            seen[line] = where
    return pairs


def feed_lines(a: Endpoint, b: Endpoint | None, channels: int
               ) -> list[tuple[Endpoint, Endpoint | None]]:  # fmt: skip
    """:func:`lines_of` for a receiver, which may have no line B."""
    if b is None:
        check_count(channels)
        return [(line_of(a, k, "line_a"), None) for k in range(1, channels + 1)]
    return list(lines_of(a, b, channels))
