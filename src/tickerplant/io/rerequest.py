"""A MoldUDP64 re-request server (the exchange's, and the plant's for its tier-2): a UDP
unicast socket around :class:`Rerequests`.

Requests are rare next to the multicast lines, so asyncio's DatagramProtocol is plenty; the policy
(what to answer, caps, rate limits, counters) lives in :mod:`tickerplant.distribute.rerequest`.
"""

from __future__ import annotations

import asyncio
from typing import cast

from tickerplant.distribute.journal import Journal
from tickerplant.distribute.rerequest import RerequestCounters, RerequestLimits, Rerequests
from tickerplant.io.loop import clock


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, policy: Rerequests) -> None:
        self.policy = policy
        self.transport: asyncio.DatagramTransport | None = None
        self.send_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        transport = self.transport
        if transport is None:
            return
        now = clock()
        for packet in self.policy.handle(data, addr, now):
            transport.sendto(packet, addr)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier reply (the requester went away): nothing to do but count.
        self.send_errors += 1


class RerequestServer:
    """Answers re-requests for ``journal``'s session on ``host:port`` (port 0: any free port)."""

    def __init__(
        self, journal: Journal, host: str, port: int, limits: RerequestLimits | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.policy = Rerequests(journal, limits)
        self._protocol: _Protocol | None = None

    @property
    def counters(self) -> RerequestCounters:
        return self.policy.counters

    @property
    def send_errors(self) -> int:
        return self._protocol.send_errors if self._protocol is not None else 0

    async def start(self) -> int:
        """Bind and start answering; returns the port bound."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(self.policy), local_addr=(self.host, self.port)
        )
        self._protocol = protocol
        self.port = int(transport.get_extra_info("sockname")[1])
        return self.port

    async def close(self) -> None:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            await asyncio.sleep(0)
