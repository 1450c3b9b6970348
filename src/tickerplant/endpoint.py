"""Where something listens or sends: an IPv4 address and a port, as every layer spells it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tickerplant.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, field: str) -> Endpoint:
        """``host:port`` as a user writes it; ``field`` names the setting in the error."""
        if not isinstance(text, str):  # a TOML number or table where a string belongs
            raise ConfigError(field, f"{text!r} is not host:port", "e.g. \"239.1.1.1:30001\"")
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(field, f"{text!r} is not host:port", "e.g. 239.1.1.1:30001")
        ipv4(host, field)
        return cls(host, int(port))

    @property
    def pair(self) -> tuple[str, int]:
        """(host, port), as socket calls take it."""
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def ipv4(host: str, field: str) -> ipaddress.IPv4Address:
    """``host`` as an IPv4 address; ``field`` names the setting in the error."""
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        raise ConfigError(field, f"{host!r} is not an IPv4 address", "e.g. 127.0.0.1") from None


# Where the exchange simulator and the plant meet unless told otherwise.
LINE_A = Endpoint("239.192.77.1", 31001)
LINE_B = Endpoint("239.192.77.2", 31002)
REREQUEST = Endpoint("127.0.0.1", 31003)
REPLAY = Endpoint("127.0.0.1", 31004)
ITCH = Endpoint("127.0.0.1", 31010)  # the plant's itch stream
GLIMPSE = Endpoint("127.0.0.1", 31011)  # the plant's snapshots
EVENTS = Endpoint("127.0.0.1", 31012)  # the plant's normalized events
TIER2_A = Endpoint("239.193.77.1", 32001)  # the plant's tier-2 lines, when it has them
TIER2_B = Endpoint("239.193.77.2", 32002)
TIER2_REREQUEST = Endpoint("127.0.0.1", 31013)  # the plant's tier-2 re-request server
EDGE_EVENTS = Endpoint("127.0.0.1", 31022)  # an edge's events stream
METRICS = Endpoint("127.0.0.1", 9464)  # the demo's metrics (Prometheus's port for exporters)
