"""Who may connect and log in: the server's limits, the throttle on failed logins, and how many
password checks run at once. Every admission rule is here; :class:`Admission` is the server's,
so it outlives a session (:meth:`FanOut.successor` keeps it)."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque

from tickerplant.distribute.fanout.limits import FanOutLimits

FAILURES_KEPT = 4096  # addresses whose failed logins are remembered


class Admission:
    def __init__(self, limits: FanOutLimits, local_only: bool) -> None:
        self.limits = limits
        # With nobody's credentials checked, only this host's clients are served.
        self.local_only = local_only
        self.open = 0  # connections open now, logged in or not
        self.checking = 0  # password checks io is running
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._per_address: dict[str, int] = {}

    def connection(self, address: str, now: float) -> str | None:
        """A connection from ``address`` opens (counted whatever the answer): why it may not be
        served, or None."""
        refusal = self._refusal(address, now)
        self.open += 1
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return refusal

    def _refusal(self, address: str, now: float) -> str | None:
        limits = self.limits
        if self.local_only and not _loopback(address):
            return "no users are configured: only clients on the plant's host are served"
        if self.open >= limits.max_connections:
            return f"the server is full: {limits.max_connections} connections"
        if self._per_address.get(address, 0) >= limits.max_per_address:
            return f"too many connections from {address}: {limits.max_per_address} at most"
        return self.throttled(address, now)

    def closed(self, address: str) -> None:
        """A connection from ``address`` has gone."""
        self.open -= 1
        left = self._per_address.get(address, 1) - 1
        if left:
            self._per_address[address] = left
        else:
            self._per_address.pop(address, None)

    def login(self, address: str, now: float) -> str | None:
        """Why a login from ``address`` may not be judged now (throttled, or too many checks
        under way), or None."""
        refusal = self.throttled(address, now)
        if refusal is None and self.checking >= self.limits.max_checks:
            refusal = "busy checking other logins: try again shortly"
        return refusal

    def check(self, address: str, now: float) -> None:
        """A password check for a login from ``address`` starts: counted as failed until it
        succeeds, so that logins in flight are throttled too."""
        self.checking += 1
        self.failed(address, now)

    def checked(self, address: str, ok: bool) -> None:
        """A check started by :meth:`check` is over."""
        self.checking -= 1
        if ok:
            self._failures.pop(address, None)

    def throttled(self, address: str, now: float) -> str | None:
        limits = self.limits
        failures = self._failures.get(address)
        if failures is not None:
            while failures and failures[0] <= now - limits.throttle:
                failures.popleft()
            if len(failures) >= limits.failed_logins:
                wait = failures[0] + limits.throttle - now
                return f"too many failed logins from {address}: try again in {wait:.0f} s"
        return None

    def failed(self, address: str, now: float) -> None:
        """A failed login from ``address``."""
        failures = self._failures.pop(address, None) or deque(maxlen=self.limits.failed_logins)
        failures.append(now)
        self._failures[address] = failures  # the most recent last
        if len(self._failures) > FAILURES_KEPT:
            self._failures.popitem(last=False)  # forget the address that failed longest ago


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # unknown: not known to be this host
