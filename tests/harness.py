"""Ports and expected streams for integration tests that run the real exchange process."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tickerplant.endpoint import Endpoint
from tickerplant.exchange.synthetic import SyntheticMarket


@dataclass(frozen=True)
class Ports:
    line_a: Endpoint
    line_b: Endpoint
    rerequest: Endpoint
    replay: Endpoint


_next_port = 0


def ports(host: str = "127.0.0.1", group_base: str = "239.192.90") -> Ports:
    """Ports of our own for one test: pid-based so that parallel runs do not meet."""
    global _next_port
    base = 40000 + (os.getpid() * 13) % 20000 + _next_port
    _next_port += 4
    return Ports(
        Endpoint(f"{group_base}.1", base),
        Endpoint(f"{group_base}.2", base + 1),
        Endpoint(host, base + 2),
        Endpoint(host, base + 3),
    )


def source_stream(seed: int, symbols: int, messages: int) -> bytes:
    return b"".join(SyntheticMarket(seed, symbols).chunks(messages))
