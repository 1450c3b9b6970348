"""Block streams: u16 big-endian length, then that many bytes of message, repeated.

This one framing is shared by MoldUDP64 message blocks and by historical ITCH files, so a run of
messages travels through the plant as one ``bytes`` (a *block stream*) from the wire to the capture
file without being split into per-message Python objects.
"""

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from tickerplant.jit import kernel

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]


@kernel
def index_blocks(stream: U8, offsets: I64) -> tuple[int, int]:  # pragma: no cover - compiled
    """Write the start offset of each complete block into ``offsets``.

    Returns ``(blocks, consumed)``: how many complete blocks were found (at most ``len(offsets)``)
    and the byte offset just past the last of them. An incomplete tail is left for the caller.
    """
    n = stream.shape[0]
    pos = 0
    count = 0
    cap = offsets.shape[0]
    while count < cap and pos + 2 <= n:
        size = (int(stream[pos]) << 8) | int(stream[pos + 1])
        if pos + 2 + size > n:
            break
        offsets[count] = pos
        count += 1
        pos += 2 + size
    return count, pos


def as_array(data: bytes | bytearray | memoryview) -> U8:
    """View ``data`` as a uint8 array without copying."""
    return np.frombuffer(data, dtype=np.uint8)


def offsets_of(stream: bytes | bytearray | memoryview) -> tuple[I64, int]:
    """Offsets of every complete block in ``stream`` and the bytes they span."""
    arr = as_array(stream)
    offsets = np.empty(arr.shape[0] // 2 + 1, dtype=np.int64)
    count, consumed = index_blocks(arr, offsets)
    return offsets[:count], consumed


def iter_messages(stream: bytes | bytearray | memoryview) -> Iterator[bytes]:
    """Each message of a block stream as bytes (slow path: tests, tools, rare repairs)."""
    view = memoryview(stream)
    pos = 0
    end = len(view)
    while pos + 2 <= end:
        size = (view[pos] << 8) | view[pos + 1]
        if pos + 2 + size > end:
            left = end - pos - 2
            raise ValueError(f"truncated block at offset {pos}: length {size}, {left} left")
        yield bytes(view[pos + 2 : pos + 2 + size])
        pos += 2 + size
    if pos != end:
        raise ValueError(f"stray byte at offset {pos} of a block stream")


def join_messages(messages: list[bytes]) -> bytes:
    """Frame messages as one block stream."""
    out = bytearray()
    for msg in messages:
        if len(msg) > 0xFFFF:
            raise ValueError(f"message of {len(msg)} bytes does not fit a u16 length")
        out += len(msg).to_bytes(2, "big")
        out += msg
    return bytes(out)
