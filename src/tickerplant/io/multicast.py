"""Multicast sockets: joining a line and sending to one, with the buffer sizes the kernel granted.

Loopback works without touching ``lo``: the receiver binds the group and port and joins on
127.0.0.1; the sender names the outgoing interface and keeps multicast loopback on.
"""

from __future__ import annotations

import socket
import struct

from tickerplant.endpoint import Endpoint

# Linux's SO_RCVBUFFORCE / SO_SNDBUFFORCE: as root they pass net.core.[rw]mem_max, which is
# small on many hosts (4 MiB here) and would cap a feed handler's burst tolerance.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


def _grow_buffer(sock: socket.socket, force: int, plain: int, size: int) -> int:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
    # Linux reports twice the usable size it reserved (bookkeeping overhead included).
    return sock.getsockopt(socket.SOL_SOCKET, plain)


def open_receiver(group: Endpoint, interface: str, rcvbuf: int) -> tuple[socket.socket, int]:
    """A non-blocking socket joined to ``group`` on ``interface``; returns it and SO_RCVBUF."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        granted = _grow_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
        # Binding the group address (not INADDR_ANY) keeps other groups on the same port out.
        sock.bind((group.host, group.port))
        mreq = struct.pack("4s4s", socket.inet_aton(group.host), socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, granted


def open_sender(
    interface: str, ttl: int = 1, loopback: bool = True, sndbuf: int = 4 << 20
) -> tuple[socket.socket, int]:
    """A non-blocking socket that sends multicast out of ``interface``; returns it and SO_SNDBUF."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if loopback else 0)
        granted = _grow_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, granted
