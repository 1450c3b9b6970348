"""recvmmsg(2) and sendmmsg(2) through ctypes: many datagrams per system call.

Python's socket module has neither. A ``recv_into`` per datagram costs a Python call and a
system call each (~255k datagrams/s here); one ``recvmmsg`` fills up to a few hundred rows of a
numpy buffer at once, and one ``sendmmsg`` sends a slice of framed packets straight out of the
publisher's buffer. The message headers are numpy structured arrays, filled with vector
operations, so no Python runs per datagram. Linux on LP64 machines only; elsewhere
:data:`AVAILABLE` is False and callers keep their plain loops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import socket

import numpy as np
import numpy.typing as npt

from tickerplant.jit import kernel

_IOVEC = np.dtype({"names": ["base", "len"], "formats": ["<u8", "<u8"], "offsets": [0, 8],
                   "itemsize": 16})
# struct mmsghdr { struct msghdr { name, namelen, iov, iovlen, control, controllen, flags };
#                  unsigned msg_len; } on LP64 Linux.
_MMSGHDR = np.dtype(
    {
        "names": ["name", "namelen", "iov", "iovlen", "control", "controllen", "flags", "len"],
        "formats": ["<u8", "<u4", "<u8", "<u8", "<u8", "<u8", "<i4", "<u4"],
        "offsets": [0, 8, 16, 24, 32, 40, 48, 56],
        "itemsize": 64,
    }
)
_MSG_DONTWAIT = 0x40
_MSG_TRUNC = 0x20


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        for name in ("recvmmsg", "sendmmsg"):
            fn = getattr(libc, name)
            fn.restype = ctypes.c_int
        libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                                  ctypes.c_void_p]
        libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()
AVAILABLE = _LIBC is not None and os.environ.get("TICKERPLANT_NO_MMSG", "") == ""


def _address(arr: npt.NDArray[np.generic]) -> int:
    return int(arr.ctypes.data)


@kernel
def _slices(bases: npt.NDArray[np.uint64], lens: npt.NDArray[np.uint64], address: int,
            size: int, starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64],
            n: int) -> bool:  # pragma: no cover - compiled  # fmt: skip
    """The iovecs of ``buffer[starts[i]:ends[i]]`` (``address``, ``size`` bytes); False, and
    nothing to send, if a slice lies outside it."""
    for i in range(n):
        start, end = starts[i], ends[i]
        if start < 0 or end < start or end > size:
            return False
        bases[i] = address + start
        lens[i] = end - start
    return True


class Receiver:
    """recvmmsg into the rows of a 2-D uint8 buffer; a cut datagram's length reads as the width."""

    def __init__(self, sock: socket.socket, rows: npt.NDArray[np.uint8]) -> None:
        assert _LIBC is not None
        # The kernel writes through raw addresses: the rows must be one contiguous byte block.
        if rows.dtype != np.uint8 or rows.ndim != 2 or not rows.flags.c_contiguous:
            raise ValueError("recvmmsg rows must be a C-contiguous 2-D uint8 array")
        self._fd = sock.fileno()
        self._rows = rows
        n, width = rows.shape
        self._iov = np.zeros(n, dtype=_IOVEC)
        self._iov["base"] = _address(rows) + width * np.arange(n, dtype=np.uint64)
        self._iov["len"] = width
        self._hdr = np.zeros(n, dtype=_MMSGHDR)
        self._hdr["iov"] = _address(self._iov) + 16 * np.arange(n, dtype=np.uint64)
        self._hdr["iovlen"] = 1
        self._width = width
        self._call = _LIBC.recvmmsg
        self._hdr_ptr = _address(self._hdr)

    def receive(self, lengths: npt.NDArray[np.int64]) -> int:
        """Datagrams read into rows ``0..n-1`` (0 when none wait); their sizes go to ``lengths``."""
        n = self._call(self._fd, self._hdr_ptr, len(self._hdr), _MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (11, 4):  # EAGAIN, EINTR
                return 0
            raise OSError(err, os.strerror(err))
        hdr = self._hdr[:n]
        lengths[:n] = hdr["len"]
        truncated = (hdr["flags"] & _MSG_TRUNC) != 0
        if truncated.any():
            lengths[:n][truncated] = self._width
        return int(n)


class Sender:
    """sendmmsg slices of one framed buffer on a connected socket."""

    def __init__(self, sock: socket.socket, capacity: int = 1024) -> None:
        assert _LIBC is not None
        self._fd = sock.fileno()
        self._iov = np.zeros(capacity, dtype=_IOVEC)
        self._hdr = np.zeros(capacity, dtype=_MMSGHDR)
        self._hdr["iov"] = _address(self._iov) + 16 * np.arange(capacity, dtype=np.uint64)
        self._hdr["iovlen"] = 1
        self._call = _LIBC.sendmmsg
        self._hdr_ptr = _address(self._hdr)  # numpy's ctypes view costs microseconds a call
        self._bases, self._lens = self._iov["base"], self._iov["len"]
        self._buffer: npt.NDArray[np.uint8] | None = None  # the last one, and its address
        self._address = 0

    def send(
        self, buffer: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
        ends: npt.NDArray[np.int64],
    ) -> int:
        """Send ``buffer[starts[i]:ends[i]]`` for each i in order; returns how many went.

        Stops early when the socket buffer is full (the rest are for the caller to retry); an
        error on the first packet raises it as OSError (EAGAIN as BlockingIOError).
        """
        n = min(len(starts), len(self._iov))
        if n == 0:
            return 0
        if buffer is not self._buffer:  # (a sender reuses one buffer: its address is kept)
            if buffer.dtype != np.uint8 or not buffer.flags.c_contiguous:
                raise ValueError("sendmmsg slices must lie within one contiguous uint8 buffer")
            self._buffer, self._address = buffer, _address(buffer)
        # The kernel reads through raw addresses: a bad slice would put other memory on the wire.
        if not _slices(self._bases, self._lens, self._address, buffer.shape[0], starts, ends, n):
            raise ValueError("sendmmsg slices must lie within one contiguous uint8 buffer")
        sent = self._call(self._fd, self._hdr_ptr, n, 0)
        if sent < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err)) if err != 11 else BlockingIOError(err, "EAGAIN")
        return int(sent)
