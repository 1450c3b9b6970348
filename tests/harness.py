"""Running the real exchange process against the real feed handler, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tickerplant.exchange.synthetic import SyntheticMarket
from tickerplant.io.multicast import Endpoint


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


class Exchange:
    """``tickerplant exchange`` in a child process (optionally inside a network namespace)."""

    def __init__(self, p: Ports, *args: str, netns: str | None = None) -> None:
        cmd = [
            sys.executable, "-m", "tickerplant", "exchange", "--json",
            "--line-a", str(p.line_a), "--line-b", str(p.line_b),
            "--rerequest", str(p.rerequest), "--replay", str(p.replay), *args,
        ]  # fmt: skip
        if netns is not None:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.published = 0

    async def wait_published(self, messages: int, timeout: float = 60) -> None:
        """Until the exchange reports having published at least ``messages``."""
        assert self.proc.stderr is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.published < messages:
            if loop.time() > end:
                raise TimeoutError(f"exchange published {self.published} of {messages}")
            line = await asyncio.wait_for(
                loop.run_in_executor(None, self.proc.stderr.readline), end - loop.time()
            )
            if not line:
                raise RuntimeError(f"exchange exited early (rc {self.proc.wait()})")
            m = re.search(r"published (\d+) messages", line)
            if m:
                self.published = int(m.group(1))

    async def summary(self, timeout: float = 90) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        out, err = await asyncio.wait_for(
            loop.run_in_executor(None, self.proc.communicate), timeout
        )
        assert self.proc.returncode == 0, f"exchange failed: {err[-2000:]}"
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.communicate(timeout=10)


@contextlib.contextmanager
def running(exchange: Exchange) -> Iterator[Exchange]:
    try:
        yield exchange
    finally:
        exchange.kill()
