"""What an events client asked for: its symbols, and the images of those it added at the live
end (their state first, then their updates).

A subscription request is Unsequenced Data: ``+`` and 8-byte symbols adds them (the first ``+``
narrows the stream from every symbol to these), ``-`` and symbols removes them, ``*`` alone goes
back to every symbol. At the live end each set of symbols added is sent its images: ``*``'s are
every symbol's the client had not asked for by name (for one never narrowed, all of them: a
snapshot of the market), ended by an ``i`` notice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

SYMBOL = 8  # bytes per symbol in a subscription request: ITCH's Stock field, space-padded


class Catalog(Protocol):
    """What an events stream's fan-out asks of the books (the owner keeps both in step: the
    state it reports is the state after the journal's last record)."""

    def locate(self, symbol: bytes) -> int | None:
        """The locate of ``symbol`` (8 bytes, space-padded) today, None if unknown."""
        ...

    def images(self, locates: list[int]) -> Callable[[], bytes]:
        """``locates``'s current state, taken now; the function returned encodes it as image
        records (wire.events blocks) from what was taken, so it may run on a thread."""
        ...

    def locates(self) -> list[int]:
        """Every locate the stream has named today, in order (the images ``*`` asks for)."""
        ...


def parse(message: bytes) -> tuple[bytes, list[bytes]] | str:
    """A request's operation and symbols, or what is wrong with it."""
    op, body = message[:1], message[1:]
    if op not in (b"+", b"-", b"*") or len(body) % SYMBOL or (op == b"*" and body):
        return "a subscription request is + or - then 8-byte symbols, or * alone"
    return op, [body[i : i + SYMBOL] for i in range(0, len(body), SYMBOL)]


class Subscription:
    """One client's symbols (sorted locates; None: all), the same as a key shared by every client
    asking for them (:attr:`group`), the locates whose image was sent at a number its cursor has
    not reached (their records before it are not sent), and its images: asked for (numbered from
    0), built by io and not yet sent, and the number of the next to send. Images go in the order
    asked, before anything else."""

    __slots__ = ("_asked", "_built", "_sent", "group", "locates", "since", "whole")

    def __init__(self) -> None:
        self.locates: np.ndarray | None = None
        self.whole = False  # every symbol asked for by ``*``, not by default: with images
        self.group: bytes | None = None
        self.since: dict[int, int] = {}
        self._asked = 0
        self._built: dict[int, bytes] = {}
        self._sent = 0

    @property
    def imaging(self) -> bool:
        """Images asked for are still being built: nothing else goes until they have."""
        return self._sent < self._asked

    def everything(self, known: list[int]) -> list[int]:
        """Every symbol (``*``); returns those of ``known`` it had not asked for by name."""
        had = set() if self.locates is None else set(self.locates.tolist())
        self.locates, self.group, self.since, self.whole = None, None, {}, True
        return [locate for locate in known if locate not in had]

    def change(self, op: bytes, chosen: set[int]) -> list[int]:
        """Add (``+``) or remove (``-``) ``chosen``; returns the locates added."""
        had = set() if self.locates is None else set(self.locates.tolist())
        if op == b"-" and self.locates is None:
            return []  # removing from every symbol: nothing to narrow, say "+" first
        now = had | chosen if op == b"+" else had - chosen
        locates = np.array(sorted(now), dtype=np.uint16)
        self.locates, self.group, self.whole = locates, locates.tobytes(), False
        for locate in had - now:
            self.since.pop(locate, None)
        return sorted(now - had)

    def imaged(self, locates: list[int], at: int) -> int:
        """The images of ``locates`` are taken with the journal at ``at``: their records follow
        from there. Returns the images' number."""
        for locate in locates:
            self.since[locate] = at
        self._asked += 1
        return self._asked - 1

    def built(self, number: int, blocks: bytes) -> list[bytes]:
        """io built images ``number``: returns the images that may go now, in order."""
        self._built[number] = blocks
        ready = []
        while self._sent in self._built:
            ready.append(self._built.pop(self._sent))
            self._sent += 1
        return ready

    def passed(self, cursor: int) -> None:
        """The client's cursor reached ``cursor``: images sent before it no longer hold back."""
        if self.since:
            self.since = {k: v for k, v in self.since.items() if v > cursor}
