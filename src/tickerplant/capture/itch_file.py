"""Historical ITCH 5.0 files: each message preceded by its u16 big-endian length.

A file may be gzip-compressed (NASDAQ publishes its days as ``MMDDYYYY.NASDAQ_ITCH50.gz``):
recognised by its magic bytes, not its name, and decompressed as it streams, on a thread of its
own (the inflater releases the GIL), so that decompression overlaps the work on the chunks before.
The inflater is ISA-L's (``isal``, measured 1.7x the standard library's zlib and 1.3x zlib-ng on
this machine, bench/replay_gzip.py), zlib where it is not installed; ``TICKERPLANT_INFLATE``
(``isal``, ``zlib-ng``, ``zlib``) picks one, for that benchmark. ``-``
reads standard input (``zcat day.gz | tickerplant replay -``). Some tools write every length
prefix as zero: such a message's length is taken from its type (and counted), the chunk's
prefixes written in, so that everything downstream sees the standard framing.

That framing is exactly a block stream (:mod:`tickerplant.wire.blocks`), so a file is read as a
sequence of block streams of whole messages, a few MiB each, never as per-message Python objects:
a day's file holds hundreds of millions of messages. Each chunk is indexed by
:func:`~tickerplant.wire.blocks.index_blocks` and checked by one compiled pass against
:data:`~tickerplant.wire.itch.MESSAGE_LENGTHS`; a damaged file fails with the byte offset of the
first bad block, counted from the start of the file.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import zlib
from collections.abc import Iterator
from types import ModuleType, TracebackType
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from tickerplant.errors import InputError
from tickerplant.jit import kernel
from tickerplant.wire.blocks import U8, as_array, index_blocks
from tickerplant.wire.itch import LENGTHS, MESSAGE_LENGTHS, describe_type

CHUNK_BYTES = 4 << 20
# The shortest ITCH block (length field + 12-byte message) bounds how many blocks a buffer holds.
_MIN_BLOCK = 2 + min(LENGTHS.values())

_LENGTH_ZERO, _UNKNOWN_TYPE, _WRONG_LENGTH = 1, 2, 3
GZIP_MAGIC = b"\x1f\x8b"
_AHEAD = 4  # chunks decompressed ahead of the reader: bounded memory


def _inflaters() -> dict[str, ModuleType]:
    """The zlib-compatible inflaters installed, fastest first."""
    found: dict[str, ModuleType] = {}
    try:
        from isal import isal_zlib

        found["isal"] = isal_zlib
    except ImportError:  # no wheel for this platform: the next one
        pass
    try:
        from zlib_ng import zlib_ng

        found["zlib-ng"] = zlib_ng
    except ImportError:
        pass
    found["zlib"] = zlib
    return found


INFLATERS = _inflaters()


def inflater() -> tuple[str, ModuleType]:
    """The inflater to use: ``TICKERPLANT_INFLATE`` if it names one installed, else the fastest."""
    name = os.environ.get("TICKERPLANT_INFLATE", "")
    if name in INFLATERS:
        return name, INFLATERS[name]
    return next(iter(INFLATERS.items()))


class ItchFileError(InputError):
    """A file (or block stream) that is not a sequence of well-formed ITCH 5.0 messages."""


@kernel
def check_messages(
    buf: U8,
    offsets: npt.NDArray[np.int64],
    count: int,
    consumed: int,
    lengths: npt.NDArray[np.int16],
) -> tuple[int, int]:  # pragma: no cover - compiled
    """First bad block among ``count`` indexed ones and the incomplete one at ``consumed``.

    Returns ``(defect, offset)``: defect 0 when all is well, else length 0, unknown type or a
    length that disagrees with the type. The incomplete block is judged on as much of its header
    as is present, so that a wild length fails here instead of making the reader wait for
    kilobytes that will never fit a message.
    """
    for i in range(count + 1):
        pos = offsets[i] if i < count else consumed
        if pos + 2 > buf.shape[0]:
            break
        size = (np.int64(buf[pos]) << 8) | np.int64(buf[pos + 1])
        if size == 0:
            return 1, pos
        if pos + 3 > buf.shape[0]:
            break
        expected = lengths[buf[pos + 2]]
        if expected == 0:
            return 2, pos
        if expected != size:
            return 3, pos
    return 0, 0


@kernel
def infer_lengths(
    buf: U8, pos: int, lengths: npt.NDArray[np.int16]
) -> tuple[int, int]:  # pragma: no cover - compiled
    """Write the length of each message from ``pos`` on whose prefix is zero, taken from its
    type. Returns ``(inferred, end)``: ``end`` stops short of a zero prefix whose type byte is
    not in ``buf`` yet (the next chunk tells). The walk leaves a zero prefix before an unknown
    type as it is, for :func:`check_messages` to name.
    """
    n = buf.shape[0]
    inferred = 0
    while pos + 2 <= n:
        size = (np.int64(buf[pos]) << 8) | np.int64(buf[pos + 1])
        if size == 0:
            if pos + 3 > n:
                return inferred, pos
            size = np.int64(lengths[buf[pos + 2]])
            if size == 0:
                break
            buf[pos] = size >> 8
            buf[pos + 1] = size & 0xFF
            inferred += 1
        pos += 2 + int(size)
    return inferred, n


def _explain(defect: int, buf: bytes | bytearray, pos: int, where: str) -> str:
    size = (buf[pos] << 8) | buf[pos + 1]
    if defect == _LENGTH_ZERO:
        if pos + 2 == len(buf):
            return f"{where}: length 0"
        return (f"{where}: length 0, and {describe_type(buf[pos + 2])} is no ITCH message type "
                "to take a length from")
    type_byte = buf[pos + 2]
    if defect == _UNKNOWN_TYPE:
        return f"{where}: unknown message type {describe_type(type_byte)}"
    expected = int(MESSAGE_LENGTHS[type_byte])
    return f"{where}: type {chr(type_byte)!r} is {expected} bytes, length says {size}"


class _Scanner:
    """Indexes and checks buffers, keeping one offsets array across calls. With ``infer``, a
    zero length prefix is taken from the message's type (some tools write files so) and counted
    in ``inferred``; without, it is a defect (the writer vouches for what it writes)."""

    def __init__(self, infer: bool = False) -> None:
        self._offsets = np.empty(0, dtype=np.int64)
        self._infer = infer
        self.inferred = 0

    def scan(
        self, buf: bytes | bytearray, base: int, label: str
    ) -> tuple[int, int, str | None, bytes | bytearray]:
        """(messages, bytes, error, buf) for the whole, valid messages at the start of ``buf``.

        ``error`` describes the first bad block, which the valid messages stop at; ``base`` is
        the offset of ``buf`` in what ``label`` names. The ``buf`` returned is the one to take
        the messages from: a copy with the lengths written in, when some were inferred.
        """
        arr = as_array(buf)
        need = arr.shape[0] // _MIN_BLOCK + 1
        if self._offsets.shape[0] < need:
            self._offsets = np.empty(max(need, 2 * self._offsets.shape[0]), dtype=np.int64)
        end = arr.shape[0]
        count, consumed = index_blocks(arr, self._offsets)
        defect, pos = check_messages(arr, self._offsets, count, consumed, MESSAGE_LENGTHS)
        if defect == _LENGTH_ZERO and self._infer:
            buf = bytearray(buf)
            arr = as_array(buf)
            inferred, end = infer_lengths(arr, pos, MESSAGE_LENGTHS)
            self.inferred += int(inferred)
            count, consumed = index_blocks(arr[:end], self._offsets)
            defect, pos = check_messages(arr[:end], self._offsets, count, consumed,
                                         MESSAGE_LENGTHS)  # fmt: skip
        if defect:
            good = int(np.searchsorted(self._offsets[:count], pos))
            where = f"{label} {base + pos}"
            return good, int(pos), _explain(int(defect), buf, int(pos), where), buf
        return int(count), int(consumed), None, buf


class ItchFile:
    """An ITCH file (plain or gzip, a path or ``-``) read as block streams of whole messages.

    After (or during) :meth:`chunks`: ``compressed`` tells whether it was gzip and
    ``inferred_lengths`` how many zero length prefixes were taken from the message type.
    """

    def __init__(self, path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.path = path
        self.chunk_bytes = chunk_bytes
        self.compressed = False
        self._scanner = _Scanner(infer=True)

    @property
    def inferred_lengths(self) -> int:
        return self._scanner.inferred

    def chunks(self) -> Iterator[bytes]:
        """Block streams of whole messages, each about ``chunk_bytes`` long.

        A message cut by a chunk boundary is carried into the next chunk. At the first malformed
        block, or when the file ends inside a message, the messages before it are yielded and
        then :class:`ItchFileError` is raised.
        """
        tail: bytes | bytearray = b""
        base = 0  # file offset of tail[0]
        label = "offset"
        for data, compressed in _ahead(_contents(self.path, self.chunk_bytes)):
            if compressed and not self.compressed:
                self.compressed = True
                label = "offset (in the decompressed stream)"
            buf = tail + data if tail else data
            _, consumed, error, buf = self._scanner.scan(buf, base, label)
            if consumed:
                yield bytes(buf[:consumed])
            if error:
                raise ItchFileError(error)
            tail = buf[consumed:]
            base += consumed
        if tail:
            if len(tail) < 2:
                detail = "1 byte of a length field"
            else:
                detail = f"length says {(tail[0] << 8) | tail[1]}, {len(tail) - 2} bytes follow"
            raise ItchFileError(f"file ends inside a message at offset {base}: {detail}")


def read_chunks(path: str | os.PathLike[str], chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """:meth:`ItchFile.chunks` of ``path``, for callers that need nothing else of the file."""
    return ItchFile(path, chunk_bytes).chunks()


def _contents(path: str | os.PathLike[str], chunk_bytes: int) -> Iterator[tuple[bytes, bool]]:
    """What the file holds, a chunk at a time, decompressed if it is gzip: (bytes, gzip?)."""
    stdin = os.fspath(path) == "-"
    f: BinaryIO = sys.stdin.buffer if stdin else open(path, "rb")  # noqa: SIM115
    try:
        head = f.read(chunk_bytes)
        if not head.startswith(GZIP_MAGIC):
            while head:
                yield head, False
                head = f.read(chunk_bytes)
            return
        yield from ((data, True) for data in _gunzip(f, head, chunk_bytes))
    finally:
        if not stdin:
            f.close()


def _gunzip(f: BinaryIO, head: bytes, chunk_bytes: int) -> Iterator[bytes]:
    """gzip members one after another (``cat a.gz b.gz`` is a valid gzip file); each read's
    output in one piece (a few times the read: ITCH compresses about 3:1)."""
    _, lib = inflater()
    inflate = lib.decompressobj(wbits=31)
    begun = False  # a member is begun and not yet ended
    read = 0  # compressed bytes fed so far
    data = head
    while data:
        read += len(data)
        while data:
            begun = True
            try:
                out = inflate.decompress(data)
            except (zlib.error, lib.error) as err:
                raise ItchFileError(
                    f"broken gzip data within compressed bytes {read - len(data)}..{read}: {err}"
                ) from None
            if out:
                yield out
            data = b""
            if inflate.eof:  # the next member, if any, starts in what is left
                begun = False
                data = inflate.unused_data
                if data and not (data.startswith(GZIP_MAGIC) or GZIP_MAGIC.startswith(data)):
                    at = read - len(data)
                    raise ItchFileError(f"{len(data)} bytes at compressed offset {at}, after the "
                                        "gzip stream, are not gzip")  # fmt: skip
                inflate = lib.decompressobj(wbits=31)
        data = f.read(chunk_bytes)
    if begun:
        raise ItchFileError(f"gzip stream cut short after {read} compressed bytes: the file is "
                            "truncated (everything before was read)")  # fmt: skip


def _ahead(items: Iterator[tuple[bytes, bool]]) -> Iterator[tuple[bytes, bool]]:
    """``items`` produced on a thread, at most _AHEAD ahead; its exceptions re-raised here."""
    out: queue.Queue[tuple[bytes, bool] | BaseException | None] = queue.Queue(_AHEAD)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(None)
        except BaseException as err:  # handed to the reader, who raises it
            out.put(err)

    thread = threading.Thread(target=produce, name="itch file", daemon=True)
    thread.start()
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


@kernel
def _select(buf: U8, keep: npt.NDArray[np.bool_], out: U8) -> int:  # pragma: no cover - compiled
    n = buf.shape[0]
    pos = 0
    used = 0
    while pos + 2 <= n:
        size = (int(buf[pos]) << 8) | int(buf[pos + 1])
        locate = (int(buf[pos + 3]) << 8) | int(buf[pos + 4])
        if locate == 0 or (locate < keep.shape[0] and keep[locate]):
            out[used : used + 2 + size] = buf[pos : pos + 2 + size]
            used += 2 + size
        pos += 2 + size
    return used


def select_locates(blocks: bytes, keep: npt.NDArray[np.bool_]) -> bytes:
    """The messages of a checked block stream whose stock locate ``keep`` marks, and the
    market-wide ones (locate 0: system events, MWCB); every ITCH 5.0 message has its locate at
    the same place."""
    buf = as_array(blocks)
    out = np.empty_like(buf)
    return out[: _select(buf, keep, out)].tobytes()


class ItchWriter:
    """Writes an ITCH file from block streams or single messages, checking every message."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()/__exit__
        self._scanner = _Scanner()
        self.messages = 0
        self.bytes_written = 0

    def write_blocks(self, blocks: bytes | bytearray | memoryview) -> None:
        """Append a block stream of whole ITCH messages; nothing of it if any is malformed."""
        raw = bytes(blocks)
        count, consumed, error, _ = self._scanner.scan(raw, 0, "block stream offset")
        if error:
            raise ItchFileError(error)
        if consumed != len(raw):
            raise ItchFileError(
                f"block stream offset {consumed}: a message cut short "
                f"({len(raw) - consumed} bytes left)"
            )
        self.messages += count
        self._write(raw)

    def write_message(self, msg: bytes | bytearray | memoryview) -> None:
        """Append one message (without its length prefix)."""
        raw = bytes(msg)
        if not raw:
            raise ItchFileError("empty message: no type byte")
        expected = int(MESSAGE_LENGTHS[raw[0]])
        if expected == 0:
            raise ItchFileError(f"unknown message type {describe_type(raw[0])}")
        if expected != len(raw):
            raise ItchFileError(f"type {chr(raw[0])!r} is {expected} bytes, got {len(raw)}")
        self.messages += 1
        self._write(len(raw).to_bytes(2, "big") + raw)

    def _write(self, raw: bytes) -> None:
        self._file.write(raw)
        self.bytes_written += len(raw)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ItchWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
