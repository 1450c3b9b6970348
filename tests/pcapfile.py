"""Packet captures written by hand for tests: frames of every link type the reader knows, in pcap
(either byte order, micro- or nanoseconds) and pcapng (sections, interfaces, block kinds)."""

from __future__ import annotations

import socket
import struct

from tickerplant.capture import frames


def ipv4_udp(payload: bytes, dst: str, port: int, *, fragment: bool = False,
             protocol: int = 17, src: str = "10.0.0.1") -> bytes:  # fmt: skip
    udp = struct.pack(">HHHH", 40000, port, 8 + len(payload), 0) + payload
    flags = 0x2000 if fragment else 0x4000  # more fragments, or don't fragment
    header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, flags, 64, protocol, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return header + udp


def frame(ip: bytes, link: int, *, vlans: int = 0, ethertype: int = 0x0800) -> bytes:
    """``ip`` framed for ``link`` (an IPv4 packet unless ``ethertype`` says otherwise)."""
    if link == frames.ETHERNET:
        tags = b"".join(struct.pack(">HH", 0x8100, 100 + i) for i in range(vlans))
        return bytes(6) + bytes.fromhex("020000000001") + tags + struct.pack(">H", ethertype) + ip
    if link == frames.SLL:
        return struct.pack(">HHH8sH", 0, 772, 6, bytes(8), ethertype) + ip
    if link == frames.SLL2:
        return struct.pack(">HHIHBB8s", ethertype, 0, 1, 772, 0, 6, bytes(8)) + ip
    if link == frames.NULL:
        return struct.pack("<I", 2 if ethertype == 0x0800 else 24) + ip
    if link == frames.LOOP:
        return struct.pack(">I", 2 if ethertype == 0x0800 else 24) + ip
    return ip  # raw


def pcap_file(packets: list[tuple[int, bytes]], link: int = frames.ETHERNET, *,
              nanos: bool = False, big: bool = False) -> bytes:  # fmt: skip
    """``packets`` as (ns since the epoch, frame) in a pcap file."""
    e = ">" if big else "<"
    out = [struct.pack(e + "IHHiIII", 0xA1B23C4D if nanos else 0xA1B2C3D4, 2, 4, 0, 0, 65535,
                       link)]  # fmt: skip
    for t, data in packets:
        sub = t % 1_000_000_000 if nanos else t % 1_000_000_000 // 1000
        out.append(struct.pack(e + "IIII", t // 1_000_000_000, sub, len(data), len(data)) + data)
    return b"".join(out)


def block(kind: int, body: bytes, big: bool = False) -> bytes:
    e = ">" if big else "<"
    body += bytes(-len(body) % 4)
    total = 12 + len(body)
    return struct.pack(e + "II", kind, total) + body + struct.pack(e + "I", total)


def section(big: bool = False) -> bytes:
    e = ">" if big else "<"
    return block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), big)


def interface(link: int, resolution: int | None = None, big: bool = False) -> bytes:
    e = ">" if big else "<"
    options = b""
    if resolution is not None:  # if_tsresol, then the end of options
        options = struct.pack(e + "HH", 9, 1) + bytes([resolution, 0, 0, 0]) + bytes(4)
    return block(1, struct.pack(e + "HHI", link, 0, 65535) + options, big)


def enhanced(number: int, stamp: int, data: bytes, big: bool = False) -> bytes:
    e = ">" if big else "<"
    head = struct.pack(e + "IIIII", number, stamp >> 32, stamp & 0xFFFFFFFF, len(data), len(data))
    return block(6, head + data, big)


def simple(data: bytes, big: bool = False) -> bytes:
    return block(3, struct.pack(">I" if big else "<I", len(data)) + data, big)
