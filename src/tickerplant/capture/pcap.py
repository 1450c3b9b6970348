"""Packet captures: pcap (micro- and nanosecond, either byte order) and pcapng, to UDP datagrams.

A capture is mapped into memory and walked by compiled kernels a window of packets at a time:
:meth:`Capture.windows` yields :class:`Packets`, equal-length arrays (capture time, destination
address and port, where the UDP payload lies in the file and how long it is, and what kind of
packet it was), never one Python object per packet: a capture of the feed holds millions.

Link types: Ethernet (with 802.1Q and 802.1ad tags), Linux cooked capture v1 and v2 (``-i any``),
raw IP, BSD loopback (NULL and LOOP). Only IPv4 carries MoldUDP64 here; everything else is
counted by kind and skipped: not IPv4, an IP fragment (MoldUDP64 packets fit one datagram; a
fragment cannot be read alone), not UDP, a datagram the capture's snap length cut short, a link
type we do not read. pcapng: several sections and interfaces (each with its link type and
timestamp resolution), Enhanced, Simple and the obsolete Packet Blocks; other blocks (name
resolution, statistics, custom, and block types we do not know) are skipped, as the format asks,
and counted by type. A file that breaks its own framing fails with :class:`CaptureError` naming
the offset and what was found there.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tickerplant.capture import frames
from tickerplant.capture.frames import u16, u32
from tickerplant.errors import InputError
from tickerplant.jit import kernel
from tickerplant.wire.blocks import U8

I64 = npt.NDArray[np.int64]

WINDOW = 1 << 16  # packets per window
MAX_RECORD = 1 << 18  # the largest packet a capture tool writes (Wireshark's maximum snap length)

# pcap magic numbers as read little-endian
_PCAP_MAGICS = {0xA1B2C3D4: (False, False), 0xD4C3B2A1: (True, False),
                0xA1B23C4D: (False, True), 0x4D3CB2A1: (True, True)}  # fmt: skip  # (big, ns)
_PCAPNG = 0x0A0D0D0A
_BYTE_ORDER = 0x1A2B3C4D

class CaptureError(InputError):
    """A file that is not a pcap or pcapng capture, or one whose framing is broken."""


def is_capture(head: bytes) -> bool:
    """Whether the first four bytes of a file are a pcap or pcapng magic number."""
    if len(head) < 4:
        return False
    magic = int.from_bytes(head[:4], "little")
    return magic in _PCAP_MAGICS or magic == _PCAPNG


@dataclass(slots=True)
class Packets:
    """A window of a capture's packets: one entry per packet, in capture order.

    ``offset``/``length`` place the UDP payload in the capture's buffer (valid where ``kind`` is
    UDP); ``time`` is nanoseconds since the epoch; ``dst`` the IPv4 destination as an integer.
    """

    time: I64
    dst: npt.NDArray[np.uint32]
    port: npt.NDArray[np.int32]
    offset: I64
    length: npt.NDArray[np.int32]
    kind: npt.NDArray[np.int8]

    def __len__(self) -> int:
        return int(self.time.shape[0])


@dataclass(slots=True)
class _Interface:
    link: int
    resolution: tuple[bool, int]  # (power of two?, exponent): 10**-6 unless the IDB says
    offset: int = 0  # if_tsoffset, seconds


@dataclass(slots=True)
class CaptureCounters:
    packets: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    link_types: dict[str, int] = field(default_factory=dict)  # packets per link type name
    skipped_blocks: dict[str, int] = field(default_factory=dict)  # pcapng, by block type
    interfaces: int = 0


# --- kernels -------------------------------------------------------------------------------------


@kernel
def walk_pcap(
    buf: U8, pos: int, big: bool, scale: int,
    data: I64, caplen: I64, origlen: I64, stamp: I64,
) -> tuple[int, int, int]:  # fmt: skip  # pragma: no cover - compiled
    """pcap records from ``pos``, at most ``len(data)``: (records, pos after them, status).

    Status 0: the file ended on a record boundary or the window is full; 1: the file ends inside
    a record header; 2: inside a record's data; 3: a record longer than MAX_RECORD (not a record:
    the file is damaged there). ``scale`` turns the sub-second field into nanoseconds.
    """
    n = buf.shape[0]
    count = 0
    while count < data.shape[0] and pos < n:
        if pos + 16 > n:
            return count, pos, 1
        incl = u32(buf, pos + 8, big)
        if incl > MAX_RECORD:
            return count, pos, 3
        if pos + 16 + incl > n:
            return count, pos, 2
        stamp[count] = u32(buf, pos, big) * 1_000_000_000 + u32(buf, pos + 4, big) * scale
        data[count] = pos + 16
        caplen[count] = incl
        origlen[count] = u32(buf, pos + 12, big)
        count += 1
        pos += 16 + incl
    return count, pos, 0


@kernel
def walk_pcapng(
    buf: U8, pos: int, big: bool, base: int,
    data: I64, caplen: I64, origlen: I64, stamp: I64, iface: I64,
) -> tuple[int, int, int]:  # fmt: skip  # pragma: no cover - compiled
    """pcapng packet blocks from ``pos``: (records, pos, status); ``stamp`` is the raw 64-bit
    timestamp, ``iface`` the interface number plus ``base`` (the section's first).

    Status 0: the file ended or the window is full; 1: a block other than a packet block is at
    ``pos`` (the caller reads it); 2: the file ends inside a block; 3: a block's length is
    impossible (under 12, not a multiple of 4) or its trailing copy disagrees; 4: a packet's
    captured length does not fit its block.
    """
    n = buf.shape[0]
    count = 0
    while count < data.shape[0] and pos < n:
        if pos + 12 > n:
            return count, pos, 2
        kind = u32(buf, pos, big)
        if kind != 6 and kind != 2 and kind != 3:
            return count, pos, 1  # read by the caller, section headers in either byte order
        total = u32(buf, pos + 4, big)
        if total < 12 or total % 4:
            return count, pos, 3
        if pos + total > n:
            return count, pos, 2
        if u32(buf, pos + total - 4, big) != total:
            return count, pos, 3
        if kind == 6 or kind == 2:  # Enhanced Packet Block, obsolete Packet Block
            if total < 32:
                return count, pos, 3
            number = u32(buf, pos + 8, big) if kind == 6 else u16(buf, pos + 8, big)
            cap = u32(buf, pos + 20, big)
            if 28 + cap > total - 4:
                return count, pos, 4
            # The 64 raw bits, kept as an int64's (read back as unsigned): shifted as a signed
            # high word, so that Python (NUMBA_DISABLE_JIT) stores what compiled code does
            # rather than overflowing (found by fuzz/files.py).
            high = np.int64(u32(buf, pos + 12, big))
            if high >= 1 << 31:
                high -= 1 << 32
            stamp[count] = (high << 32) | np.int64(u32(buf, pos + 16, big))
            data[count] = pos + 28
            caplen[count] = cap
            origlen[count] = u32(buf, pos + 24, big)
            iface[count] = base + number
        else:  # Simple Packet Block: interface 0, no timestamp
            if total < 16:
                return count, pos, 3
            orig = u32(buf, pos + 8, big)
            data[count] = pos + 12
            caplen[count] = min(orig, total - 16)
            origlen[count] = orig
            stamp[count] = -1
            iface[count] = base
        count += 1
        pos += total
    return count, pos, 0


# --- the file --------------------------------------------------------------------------------


class Capture:
    """A pcap or pcapng file, mapped read-only; :meth:`windows` walks it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 4 or not is_capture(f.read(4)):
                    raise CaptureError(f"{self.path} is not a pcap or pcapng file")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as err:
            raise CaptureError(f"cannot read {self.path}: {err.strerror}") from None
        self.buf: U8 = np.frombuffer(self._map, dtype=np.uint8)
        self.size = size
        self.pcapng = int.from_bytes(self._map[:4], "little") == _PCAPNG
        self.counters = CaptureCounters()

    def close(self) -> None:
        self.buf = np.zeros(0, np.uint8)
        with contextlib.suppress(BufferError):  # an array still views it: unmapped with the last
            self._map.close()

    def windows(self, size: int = WINDOW) -> Iterator[Packets]:
        """The capture's packets, ``size`` at a time, decoded to UDP datagrams."""
        walk = self._pcapng if self.pcapng else self._pcap
        arrays = [np.empty(size, np.int64) for _ in range(5)]
        out = Packets(np.empty(size, np.int64), np.empty(size, np.uint32),
                      np.empty(size, np.int32), np.empty(size, np.int64),
                      np.empty(size, np.int32), np.empty(size, np.int8))  # fmt: skip
        c = self.counters = CaptureCounters()  # counted afresh on each walk
        for n, times, links, linktypes in walk(*arrays):
            frames.decode_frames(self.buf, arrays[0], arrays[1], links, n, out.dst, out.port,
                          out.offset, out.length, out.kind)  # fmt: skip
            kinds = np.bincount(out.kind[:n], minlength=len(frames.KINDS))
            for k, name in enumerate(frames.KINDS):
                if kinds[k]:
                    c.by_kind[name] = c.by_kind.get(name, 0) + int(kinds[k])
            for linktype, count in linktypes.items():
                name = frames.LINK_NAMES.get(linktype, f"linktype_{linktype}")
                c.link_types[name] = c.link_types.get(name, 0) + count
            c.packets += n
            yield Packets(times[:n].copy(), out.dst[:n].copy(), out.port[:n].copy(),
                          out.offset[:n].copy(), out.length[:n].copy(),
                          out.kind[:n].copy())  # fmt: skip

    def _pcap(self, data: I64, caplen: I64, origlen: I64, stamp: I64,
              _: I64) -> Iterator[tuple[int, I64, I64, dict[int, int]]]:  # fmt: skip
        if self.size < 24:
            raise CaptureError(f"{self.path}: pcap file header cut short: {self.size} of 24 bytes")
        big, nanos = _PCAP_MAGICS[int.from_bytes(self._map[:4], "little")]
        linktype = struct.unpack(">I" if big else "<I", self._map[20:24])[0] & 0x0FFFFFFF
        self.counters.interfaces = 1
        code = frames.LINKS.get(linktype, 0)
        pos = 24
        while pos < self.size:
            count, after, status = walk_pcap(self.buf, pos, big, 1 if nanos else 1000,
                                             data, caplen, origlen, stamp)  # fmt: skip
            if count:
                yield count, stamp, np.full(count, code, np.int64), {linktype: count}
            pos = after
            if status:
                raise CaptureError(self._pcap_defect(status, pos, big))

    def _pcap_defect(self, status: int, pos: int, big: bool) -> str:
        left = self.size - pos
        if status == 1:
            return (f"{self.path}: the capture ends inside a record header at offset {pos} "
                    f"({left} of 16 bytes): the file is cut short")  # fmt: skip
        incl = struct.unpack(">I" if big else "<I", self._map[pos + 8 : pos + 12])[0]
        if status == 2:
            return (f"{self.path}: the capture ends inside a record at offset {pos}: its header "
                    f"says {incl} bytes, {left - 16} follow: the file is cut short")  # fmt: skip
        return (f"{self.path}: offset {pos}: a record of {incl} bytes (at most {MAX_RECORD}): "
                "not a record; the file is damaged here")  # fmt: skip

    def _pcapng(self, data: I64, caplen: I64, origlen: I64, stamp: I64,
                iface: I64) -> Iterator[tuple[int, I64, I64, dict[int, int]]]:  # fmt: skip
        interfaces: list[_Interface] = []
        base = 0  # the current section's first interface
        big = False
        pos = 0
        section = False
        while pos < self.size:
            count, after, status = walk_pcapng(self.buf, pos, big, base,
                                               data, caplen, origlen, stamp, iface)  # fmt: skip
            if count:
                if not section:
                    raise CaptureError(f"{self.path}: offset 0: a packet before any section "
                                       "header")  # fmt: skip
                yield count, *self._interfaces_of(interfaces, stamp, iface, count)
            pos = after
            if status == 1:
                big, base, section, pos = self._block(pos, big, base, interfaces, section)
            elif status:
                raise CaptureError(self._pcapng_defect(status, pos, big))

    def _block(
        self, pos: int, big: bool, base: int, interfaces: list[_Interface], section: bool
    ) -> tuple[bool, int, bool, int]:
        """Read the non-packet block at ``pos``: (byte order, section base, in a section, next)."""
        kind = struct.unpack(">I" if big else "<I", self._map[pos : pos + 4])[0]
        if kind == _PCAPNG:  # a section header: its byte order mark says how to read it
            if pos + 12 > self.size:
                raise CaptureError(self._pcapng_defect(2, pos, big))
            mark = self._map[pos + 8 : pos + 12]
            if mark == _BYTE_ORDER.to_bytes(4, "big"):
                big = True
            elif mark == _BYTE_ORDER.to_bytes(4, "little"):
                big = False
            else:
                raise CaptureError(f"{self.path}: offset {pos}: a section header with byte-order "
                                   f"mark {mark.hex()}, not 1a2b3c4d")  # fmt: skip
            total = self._length(pos, big)
            return big, len(interfaces), True, pos + total
        total = self._length(pos, big)
        if not section:
            raise CaptureError(f"{self.path}: offset {pos}: block type {kind:#x} before any "
                               "section header")  # fmt: skip
        if kind == 1:  # Interface Description Block
            fmt = ">" if big else "<"
            linktype = struct.unpack(fmt + "H", self._map[pos + 8 : pos + 10])[0]
            interface = _Interface(linktype, (False, 6))
            self._options(pos + 16, pos + total - 4, fmt, interface)
            interfaces.append(interface)
            self.counters.interfaces = len(interfaces)
        else:
            name = _BLOCK_NAMES.get(kind, f"{kind:#010x}")
            skipped = self.counters.skipped_blocks
            skipped[name] = skipped.get(name, 0) + 1
        return big, base, section, pos + total

    def _length(self, pos: int, big: bool) -> int:
        fmt = ">I" if big else "<I"
        if pos + 12 > self.size:
            raise CaptureError(self._pcapng_defect(2, pos, big))
        total: int = struct.unpack(fmt, self._map[pos + 4 : pos + 8])[0]
        if total < 12 or total % 4:
            raise CaptureError(self._pcapng_defect(3, pos, big))
        if pos + total > self.size:
            raise CaptureError(self._pcapng_defect(2, pos, big))
        if struct.unpack(fmt, self._map[pos + total - 4 : pos + total])[0] != total:
            raise CaptureError(self._pcapng_defect(3, pos, big))
        return total

    def _options(self, pos: int, end: int, fmt: str, interface: _Interface) -> None:
        while pos + 4 <= end:
            code, size = struct.unpack(fmt + "HH", self._map[pos : pos + 4])
            if code == 0:
                return
            value = self._map[pos + 4 : pos + 4 + size]
            if code == 9 and size >= 1:  # if_tsresol
                binary, exponent = bool(value[0] & 0x80), value[0] & 0x7F
                # A 64-bit stamp counts at most 2**-63 or 10**-19 s units for anything to be
                # left of a second: finer is no capture's (fuzz/files.py found 2**-127).
                if exponent > (63 if binary else 19):
                    unit = f"{2 if binary else 10}**-{exponent}"
                    raise CaptureError(f"{self.path}: offset {pos}: an interface's timestamp unit "
                                       f"(if_tsresol {value[0]:#04x}: {unit} s) is finer than a "
                                       "64-bit timestamp can count: the file is damaged here")
                interface.resolution = (binary, exponent)
            elif code == 14 and size >= 8:  # if_tsoffset
                interface.offset = struct.unpack(fmt + "q", value[:8])[0]
            pos += 4 + (size + 3) // 4 * 4

    def _interfaces_of(
        self, interfaces: list[_Interface], stamp: I64, iface: I64, count: int
    ) -> tuple[I64, I64, dict[int, int]]:
        """Nanosecond times and link codes of ``count`` packets, from their interfaces."""
        numbers = iface[:count]
        if numbers.max() >= len(interfaces):
            bad = int(numbers[numbers >= len(interfaces)][0])
            raise CaptureError(f"{self.path}: a packet of interface {bad}, which no interface "
                               f"description block describes ({len(interfaces)} do)")  # fmt: skip
        raw = stamp[:count].view(np.uint64)
        times = np.empty(count, np.int64)
        links = np.empty(count, np.int64)
        linktypes: dict[int, int] = {}
        for number in np.unique(numbers).tolist():
            at = numbers == number
            interface = interfaces[number]
            times[at] = _nanoseconds(raw[at], interface)
            links[at] = frames.LINKS.get(interface.link, 0)
            linktypes[interface.link] = linktypes.get(interface.link, 0) + int(at.sum())
        times[stamp[:count] == -1] = 0  # Simple Packet Blocks carry no time
        return times, links, linktypes

    def _pcapng_defect(self, status: int, pos: int, big: bool) -> str:
        where = f"{self.path}: offset {pos}"
        if status == 2:
            return (f"{where}: the capture ends inside a block ({self.size - pos} bytes left): "
                    "the file is cut short")  # fmt: skip
        if status == 3:
            fmt = ">I" if big else "<I"
            total = struct.unpack(fmt, self._map[pos + 4 : pos + 8])[0]
            return (f"{where}: a block whose length ({total}) is impossible or disagrees with "
                    "its trailing copy: the file is damaged here")  # fmt: skip
        return f"{where}: a packet block whose captured length does not fit the block"


_BLOCK_NAMES = {4: "name_resolution", 5: "interface_statistics", 9: "systemd_journal",
                10: "decryption_secrets", 0xBAD: "custom", 0x40000BAD: "custom"}  # fmt: skip


def _nanoseconds(raw: npt.NDArray[np.uint64], interface: _Interface) -> I64:
    binary, exponent = interface.resolution
    offset = interface.offset * 1_000_000_000
    if binary:
        whole = (raw >> np.uint64(exponent)).astype(np.int64)
        part = (raw & np.uint64((1 << exponent) - 1)).astype(np.float64)
        frac = np.round(part * 1e9 / float(1 << exponent)).astype(np.int64)
        out: I64 = whole * 1_000_000_000 + frac + offset
    elif exponent <= 9:
        out = raw.astype(np.int64) * 10 ** (9 - exponent) + offset
    else:
        out = (raw // np.uint64(10 ** (exponent - 9))).astype(np.int64) + offset
    return out
