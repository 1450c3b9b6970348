"""Draining a UDP socket in one wake-up, and the unicast socket the re-requests go out on.

One asyncio callback per packet costs ~4x a plain loop (64k vs 255k datagrams/s here), so a line's
socket gets a reader callback that empties it into the rows of a
:class:`~tickerplant.wire.moldudp64.Datagrams` buffer (``recvmmsg`` where available, else
``recv_into`` until EAGAIN), and the feed session checks the whole drained batch with one
compiled call.
"""

from __future__ import annotations

import socket

from tickerplant.endpoint import Endpoint
from tickerplant.io import mmsg
from tickerplant.wire.moldudp64 import Datagrams

Socket = socket.socket  # for the adapters' annotations: only io/ imports socket

# MSG_TRUNC on a datagram socket makes recv report the datagram's real length, so a datagram
# bigger than its row is detected rather than silently cut.
_FLAGS = socket.MSG_TRUNC


class DatagramDrain:
    def __init__(self, sock: socket.socket, buffer: Datagrams) -> None:
        self.sock = sock
        self.buffer = buffer
        self.datagrams = 0
        self.wakeups = 0
        self.errors = 0
        self._mmsg = mmsg.Receiver(sock, buffer.rows) if mmsg.AVAILABLE else None

    def drain(self) -> int:
        """Read until the socket is empty or every row is full; returns how many rows hold data.

        A datagram longer than a row is recorded with a length of at least the width (its true
        length with ``recv_into``, the width with ``recvmmsg``), which ``scan_packets`` reports
        as truncated.
        """
        lengths = self.buffer.lengths
        if self._mmsg is not None:
            try:
                n = self._mmsg.receive(lengths)
            except OSError:
                self.errors += 1  # as below: an earlier ICMP error on a connected socket
                n = 0
            self.datagrams += n
            self.wakeups += 1
            return n
        recv_into = self.sock.recv_into
        views = self.buffer.views
        n = 0
        limit = len(views)
        while n < limit:
            try:
                size = recv_into(views[n], 0, _FLAGS)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # A connected socket reports an earlier ICMP "port unreachable" here: the peer is
                # gone (a re-request server that is down). Counted; recovery's timers decide.
                self.errors += 1
                break
            lengths[n] = size
            n += 1
        self.datagrams += n
        self.wakeups += 1
        return n


def open_connected(peer: Endpoint) -> socket.socket:
    """A non-blocking UDP socket connected to ``peer``: its answers, and ICMP errors, come back."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.connect(peer.pair)
    except BaseException:
        sock.close()
        raise
    return sock
