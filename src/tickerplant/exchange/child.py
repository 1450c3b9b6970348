"""The exchange simulator as a child process, for the demo, tests and benchmarks.

On a two-core machine the exchange must not share a core (or a GIL) with the feed handler it is
measured against, so whoever drives both starts ``python -m tickerplant exchange --json`` here,
follows its progress lines and reads its JSON summary at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from typing import Any

from tickerplant.endpoint import Endpoint

_PROGRESS = re.compile(rb"published (\d+) messages")


class ExchangeProcess:
    def __init__(
        self,
        line_a: Endpoint,
        line_b: Endpoint,
        rerequest: Endpoint | None,
        replay: Endpoint | None,
        *args: str,
        netns: str | None = None,
    ) -> None:
        cmd = [
            sys.executable, "-m", "tickerplant", "exchange", "--json",
            "--line-a", str(line_a), "--line-b", str(line_b),
        ]  # fmt: skip
        cmd += ["--rerequest", str(rerequest)] if rerequest else ["--no-rerequest"]
        cmd += ["--replay", str(replay)] if replay else ["--no-replay"]
        cmd += args
        self.command = ["ip", "netns", "exec", netns, *cmd] if netns else cmd
        self.published = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: list[bytes] = []
        self._progress = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> ExchangeProcess:
        self._proc = await asyncio.create_subprocess_exec(
            *self.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.ensure_future(self._follow())
        return self

    async def _follow(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        try:
            async for line in self._proc.stderr:
                self._stderr = [*self._stderr[-50:], line]
                m = _PROGRESS.search(line)
                if m:
                    self.published = int(m.group(1))
                    self._progress.set()
        finally:  # stderr closed: the child is gone, and a waiter must hear it now
            self._progress.set()

    async def wait_published(self, messages: int, timeout: float = 60) -> None:
        """Until the exchange reports having published at least ``messages``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while self.published < messages:
            assert self._proc is not None
            if self._reader is not None and self._reader.done():
                await asyncio.wait_for(self._proc.wait(), max(0.0, end - loop.time()))
                raise RuntimeError(
                    f"exchange exited early (rc {self._proc.returncode}): {self.stderr_tail()}"
                )
            self._progress.clear()
            await asyncio.wait_for(self._progress.wait(), max(0.0, end - loop.time()))

    def end_session(self) -> None:
        """Ask the exchange to end its session now (it still answers repairs meanwhile)."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                self._proc.send_signal(signal.SIGINT)

    async def report(self, timeout: float = 120) -> dict[str, Any]:
        """The exchange's JSON summary as soon as it prints it (its only line on stdout), before
        it has closed and exited: a demo being stopped has no time to spare for that."""
        assert self._proc is not None and self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
        if not line.strip():  # stdout closed without one: it failed
            await asyncio.wait_for(self._proc.wait(), timeout)
            raise RuntimeError(
                f"exchange failed (rc {self._proc.returncode}): {self.stderr_tail()}"
            )
        result: dict[str, Any] = json.loads(line)
        return result

    async def summary(self, timeout: float = 120) -> dict[str, Any]:
        """Wait for the exchange to finish and return its JSON summary."""
        assert self._proc is not None
        result = await self.report(timeout)
        await asyncio.wait_for(self._proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        if self._proc.returncode != 0:
            raise RuntimeError(
                f"exchange failed (rc {self._proc.returncode}): {self.stderr_tail()}"
            )
        return result

    def stderr_tail(self) -> str:
        return b"".join(self._stderr[-10:]).decode(errors="replace")

    async def close(self) -> None:
        """Kill the process if it is still running; always safe to call."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def __aenter__(self) -> ExchangeProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
