"""Link-layer frames to UDP datagrams: what a captured packet is (Ethernet with 802.1Q and
802.1ad tags, Linux cooked capture v1 and v2, raw IP, BSD loopback), decoded a window of packets
at a time by one compiled pass, :func:`decode_frames`: each frame's IPv4/UDP destination and
where its payload lies, or the kind of packet it is instead (not IPv4, a fragment, not UDP, cut
by the snap length, a link type we do not read, malformed)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tickerplant.jit import kernel
from tickerplant.wire.blocks import U8

I64 = npt.NDArray[np.int64]

# What a packet is (``Packets.kind``)
UDP, NOT_IPV4, FRAGMENT, NOT_UDP, CUT, LINK_TYPE, MALFORMED = range(7)
KINDS = ("udp", "not_ipv4", "fragment", "not_udp", "cut_by_snap_length",
         "unsupported_link_type", "malformed")  # fmt: skip

# Link types (https://www.tcpdump.org/linktypes.html) as the frame kernel knows them
ETHERNET, RAW, SLL, SLL2, NULL, LOOP = 1, 101, 113, 276, 0, 108
LINKS = {ETHERNET: 1, RAW: 2, 12: 2, 14: 2, 228: 2, SLL: 3, SLL2: 4, NULL: 5, LOOP: 6}
LINK_NAMES = {ETHERNET: "ethernet", RAW: "raw", 12: "raw", 14: "raw", 228: "ipv4",
              SLL: "linux_sll", SLL2: "linux_sll2", NULL: "null", LOOP: "loop"}  # fmt: skip


@kernel
def u16(buf: U8, pos: int, big: bool) -> int:  # pragma: no cover - compiled
    a, b = int(buf[pos]), int(buf[pos + 1])
    return (a << 8) | b if big else (b << 8) | a


@kernel
def u32(buf: U8, pos: int, big: bool) -> int:  # pragma: no cover - compiled
    a, b, c, d = int(buf[pos]), int(buf[pos + 1]), int(buf[pos + 2]), int(buf[pos + 3])
    if big:
        return (a << 24) | (b << 16) | (c << 8) | d
    return (d << 24) | (c << 16) | (b << 8) | a


@kernel
def decode_frames(
    buf: U8, data: I64, caplen: I64, links: I64, n: int,
    dst: npt.NDArray[np.uint32], port: npt.NDArray[np.int32], offset: I64,
    length: npt.NDArray[np.int32], kind: npt.NDArray[np.int8],
) -> None:  # fmt: skip  # pragma: no cover - compiled
    """Each frame's IPv4/UDP destination and payload, or the kind of packet it is instead.

    ``links`` are the frame kernel's link codes (``LINKS`` values; 0: one it does not read).
    """
    for i in range(n):
        p = data[i]
        end = p + caplen[i]
        link = links[i]
        dst[i] = 0
        port[i] = 0
        offset[i] = 0
        length[i] = 0
        ethertype = -1  # -1: the link header says IP version by the first nibble
        if link == 1:  # Ethernet
            if p + 14 > end:
                kind[i] = MALFORMED
                continue
            ethertype = (int(buf[p + 12]) << 8) | int(buf[p + 13])
            p += 14
            while ethertype == 0x8100 or ethertype == 0x88A8 or ethertype == 0x9100:
                if p + 4 > end:
                    break
                ethertype = (int(buf[p + 2]) << 8) | int(buf[p + 3])
                p += 4
        elif link == 2:  # raw IP
            pass
        elif link == 3:  # Linux cooked v1: protocol at 14 of a 16-byte header
            if p + 16 > end:
                kind[i] = MALFORMED
                continue
            ethertype = (int(buf[p + 14]) << 8) | int(buf[p + 15])
            p += 16
        elif link == 4:  # Linux cooked v2: protocol first, 20-byte header
            if p + 20 > end:
                kind[i] = MALFORMED
                continue
            ethertype = (int(buf[p]) << 8) | int(buf[p + 1])
            p += 20
        elif link == 5 or link == 6:  # BSD loopback: a 4-byte address family
            if p + 4 > end:
                kind[i] = MALFORMED
                continue
            family = u32(buf, p, link == 6)
            if link == 5 and family > 0xFFFF:  # NULL is in the capturing host's byte order
                family = u32(buf, p, True)
            ethertype = 0x0800 if family == 2 else 0
            p += 4
        else:
            kind[i] = LINK_TYPE
            continue
        if ethertype != -1 and ethertype != 0x0800:
            kind[i] = NOT_IPV4
            continue
        if p + 20 > end:
            kind[i] = MALFORMED if ethertype == 0x0800 else NOT_IPV4
            continue
        if int(buf[p]) >> 4 != 4:
            kind[i] = NOT_IPV4
            continue
        ihl = (int(buf[p]) & 0x0F) * 4
        total = (int(buf[p + 2]) << 8) | int(buf[p + 3])
        if ihl < 20 or total < ihl:
            kind[i] = MALFORMED
            continue
        flags = (int(buf[p + 6]) << 8) | int(buf[p + 7])
        if flags & 0x3FFF:  # more fragments, or a fragment offset
            kind[i] = FRAGMENT
            continue
        if buf[p + 9] != 17:
            kind[i] = NOT_UDP
            continue
        u = p + ihl
        if u + 8 > end:
            kind[i] = CUT
            continue
        udp_len = (int(buf[u + 4]) << 8) | int(buf[u + 5])
        size = min(udp_len, total - ihl) - 8
        if size < 0:
            kind[i] = MALFORMED
            continue
        if u + 8 + size > end:
            kind[i] = CUT
            continue
        dst[i] = (np.uint32(buf[p + 16]) << 24) | (np.uint32(buf[p + 17]) << 16) | (
            np.uint32(buf[p + 18]) << 8) | np.uint32(buf[p + 19])
        port[i] = (int(buf[u + 2]) << 8) | int(buf[u + 3])
        offset[i] = u + 8
        length[i] = size
        kind[i] = UDP
