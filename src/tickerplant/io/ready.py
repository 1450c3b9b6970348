"""Sockets read by priority: of those the loop finds ready in one turn, the higher priorities'
are read first.

A socket's reader only notes it ready; one callback soon after reads every socket noted,
highest priority first (then in the order they were noted). Both asyncio's loop and uvloop run
what ``call_soon`` schedules from a reader after every reader of that turn, so the callback sees
all of them. A socket is noted once however often its reader runs before the callback (asyncio's
loop may look at its sockets again first, and they are still ready), and a read that finds
nothing is the reader's to take. It costs one callback a turn: the plant uses it only when its
channels' priorities differ.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable


class Priorities:
    """One loop's sockets, each read with a priority (higher first)."""

    def __init__(self) -> None:
        self._ready: dict[int, tuple[int, int, Callable[[], object]]] = {}  # by descriptor
        self._order = itertools.count()
        self._due = False

    def add_reader(self, fd: int, priority: int, read: Callable[[], object]) -> None:
        """Call ``read`` when ``fd`` is ready, before the ready sockets of lower priority; the
        loop's ``remove_reader`` takes it off again."""
        asyncio.get_running_loop().add_reader(fd, self._noted, fd, priority, read)

    def _noted(self, fd: int, priority: int, read: Callable[[], object]) -> None:
        if fd in self._ready:
            return
        self._ready[fd] = (-priority, next(self._order), read)
        if not self._due:
            self._due = True
            asyncio.get_running_loop().call_soon(self._read)

    def _read(self) -> None:
        self._due = False
        ready, self._ready = sorted(self._ready.values()), {}
        for _, _, read in ready:
            read()
