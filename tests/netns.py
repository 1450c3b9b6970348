"""Two hosts on one machine for integration tests: network namespaces joined by a veth pair.

The exchange host and the feed host each get a namespace of their own, so multicast really
leaves one network stack through a veth and arrives at the other, where nftables can drop it at
prerouting (the receiver's side: dropping on the sender's output hook makes ``sendto`` fail).
Names and addresses are unique per run and everything is deleted on the way out, so parallel or
aborted runs do not meet.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

COMMAND_TIMEOUT = 10.0  # seconds for one ip/nft command; they take milliseconds


class NetnsUnavailable(Exception):
    """This machine cannot make network namespaces (the reason is the message)."""


def unavailable() -> str | None:
    """Why namespace tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces and nftables rules"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} command (apt-get install {package})"
    return None


def run(*cmd: str, stdin: str | None = None) -> str:
    """Run one command to completion; a failure names the command and what it printed."""
    try:
        done = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(cmd)}: no answer in {COMMAND_TIMEOUT} s") from None
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class Alive(Protocol):
    """A child process as far as :meth:`Host.wait_joined` asks (a ``Popen``)."""

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...


@dataclass(frozen=True)
class Host:
    netns: str
    interface: str  # its end of the veth pair
    address: str

    def command(self, *cmd: str) -> list[str]:
        """``cmd`` run inside this host."""
        return ["ip", "netns", "exec", self.netns, *cmd]

    def nft(self, script: str) -> str:
        """Apply an nftables script in this host (one transaction: all of it or none)."""
        return run(*self.command("nft", "-f", "-"), stdin=script)

    def drop_table(self, table: str) -> None:
        run(*self.command("nft", "delete", "table", "inet", table))

    def nft_counters(self, table: str) -> dict[str, int]:
        """Packets counted by each rule of ``table`` that has a counter, keyed by its comment."""
        listing = json.loads(run(*self.command("nft", "-j", "list", "table", "inet", table)))
        counted: dict[str, int] = {}
        for item in listing["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            for expr in rule["expr"]:
                if "counter" in expr:
                    counted[rule.get("comment", str(rule["handle"]))] = expr["counter"]["packets"]
        return counted

    def groups(self) -> set[str]:
        """Multicast groups joined on this host's veth (what its sockets asked for)."""
        out = run("ip", "-n", self.netns, "maddr", "show", "dev", self.interface)
        return {f[1] for f in (line.split() for line in out.splitlines()) if f[:1] == ["inet"]}

    def wait_joined(self, groups: Sequence[str], timeout: float, alive: Alive) -> None:
        """Until every group in ``groups`` is joined here, while ``alive`` keeps running."""
        end = time.monotonic() + timeout
        while not set(groups) <= self.groups():
            if alive.poll() is not None:
                raise RuntimeError(
                    f"process exited (rc {alive.returncode}) before joining {groups}"
                )
            if time.monotonic() > end:
                raise TimeoutError(f"{self.netns}: {groups} not joined after {timeout} s")
            time.sleep(0.05)

    def udp_counters(self) -> dict[str, int]:
        """The host's UDP figures from /proc/net/snmp (RcvbufErrors: kernel drops on full
        socket buffers)."""
        rows = [
            line.split()[1:]
            for line in run(*self.command("cat", "/proc/net/snmp")).splitlines()
            if line.startswith("Udp:")
        ]
        names, values = rows[0], rows[1]
        return dict(zip(names, map(int, values), strict=True))


@dataclass(frozen=True)
class TwoHosts:
    exchange: Host
    feed: Host


@contextlib.contextmanager
def two_hosts() -> Iterator[TwoHosts]:
    """An exchange host and a feed host joined by a veth pair, on a private /24 of their own.

    Raises :class:`NetnsUnavailable` if the namespaces cannot be made at all (no privilege);
    anything failing after that is an error. Both namespaces (and with them the veth pair) are
    deleted whatever happens.
    """
    tag = f"{os.getpid():x}{random.getrandbits(16):04x}"  # pid <= 0x400000: at most 11 chars
    subnet = f"10.{random.randint(64, 254)}.{random.randint(0, 255)}"
    exchange = Host(f"tp-exch-{tag}", f"tx{tag}", f"{subnet}.1")
    feed = Host(f"tp-feed-{tag}", f"tf{tag}", f"{subnet}.2")
    made: list[str] = []
    try:
        for host in (exchange, feed):
            try:
                run("ip", "netns", "add", host.netns)
            except RuntimeError as err:
                raise NetnsUnavailable(str(err)) from None
            made.append(host.netns)
        run("ip", "link", "add", exchange.interface, "type", "veth", "peer", "name", feed.interface)
        for host in (exchange, feed):
            run("ip", "link", "set", host.interface, "netns", host.netns)
            run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.interface)
            run("ip", "-n", host.netns, "link", "set", "lo", "up")
            run("ip", "-n", host.netns, "link", "set", host.interface, "up")
            run("ip", "-n", host.netns, "route", "add", "224.0.0.0/4", "dev", host.interface)
        yield TwoHosts(exchange, feed)
    finally:
        # Deleting a namespace takes its end of the veth with it, and the pair goes together.
        # If the pair was made but not yet moved, it is still in our namespace.
        with contextlib.suppress(RuntimeError):
            if exchange.interface in run("ip", "-o", "link", "show"):
                run("ip", "link", "del", exchange.interface)
        for netns in made:
            with contextlib.suppress(RuntimeError):
                run("ip", "netns", "del", netns)


@contextlib.contextmanager
def hosts_or_skip() -> Iterator[TwoHosts]:
    """:func:`two_hosts` for a test, which is skipped with the reason where they cannot be."""
    import pytest

    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    try:
        with two_hosts() as made:
            yield made
    except NetnsUnavailable as err:
        pytest.skip(f"cannot create network namespaces here: {err}")


@contextlib.contextmanager
def bridge(names: Sequence[str]) -> Iterator[dict[str, Host]]:
    """Hosts on one segment, as a switch joins them: a hub namespace holding a Linux bridge,
    and a veth pair per host, one end in the host, the other a port of the bridge. The bridge
    floods multicast to every port (``mcast_snooping 0``: no IGMP querier here to learn from),
    as a hub would. Raises :class:`NetnsUnavailable` if namespaces cannot be made at all;
    everything is deleted whatever happens (a namespace takes its veth ends with it)."""
    tag = f"{os.getpid():x}{random.getrandbits(12):03x}"
    subnet = f"10.{random.randint(64, 254)}.{random.randint(0, 255)}"
    hub = f"tp-hub-{tag}"
    hosts = {name: Host(f"tp-{name}-{tag}", f"v{n}{tag}", f"{subnet}.{n + 1}")
             for n, name in enumerate(names)}  # fmt: skip
    made: list[str] = []
    try:
        try:
            run("ip", "netns", "add", hub)
        except RuntimeError as err:
            raise NetnsUnavailable(str(err)) from None
        made.append(hub)
        run("ip", "-n", hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        run("ip", "-n", hub, "link", "set", "br0", "up")
        for n, host in enumerate(hosts.values()):
            run("ip", "netns", "add", host.netns)
            made.append(host.netns)
            port = f"b{n}{tag}"
            run("ip", "link", "add", host.interface, "type", "veth", "peer", "name", port)
            run("ip", "link", "set", host.interface, "netns", host.netns)
            run("ip", "link", "set", port, "netns", hub)
            run("ip", "-n", hub, "link", "set", port, "master", "br0")
            run("ip", "-n", hub, "link", "set", port, "up")
            run("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.interface)
            run("ip", "-n", host.netns, "link", "set", "lo", "up")
            run("ip", "-n", host.netns, "link", "set", host.interface, "up")
            run("ip", "-n", host.netns, "route", "add", "224.0.0.0/4", "dev", host.interface)
        yield hosts
    finally:
        for netns in reversed(made):
            with contextlib.suppress(RuntimeError):
                run("ip", "netns", "del", netns)


@contextlib.contextmanager
def bridged(names: Sequence[str]) -> Iterator[dict[str, Host]]:
    """:func:`bridge` for a test, which is skipped with the reason where it cannot be."""
    import pytest

    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    try:
        with bridge(names) as hosts:
            yield hosts
    except NetnsUnavailable as err:
        pytest.skip(f"cannot create network namespaces here: {err}")
