"""``tickerplant run``: a whole plant in one process.

The feed handler (lines, re-request, replay) hands its repaired stream to the live books and to
the ``itch`` stream, a SoupBinTCP server of its journal: a client logs in at any sequence number,
is replayed from there at full speed and then stays live, and a range the plant lost keeps its
numbers as marks (:mod:`tickerplant.distribute.stream`). What the books raise (BBO changes, trades,
status changes) and the ranges lost are the ``events`` stream's records
(:mod:`tickerplant.wire.events`), journaled and served the same way; its clients may narrow it to
symbols and, as slow consumers, be conflated or skipped. ``glimpse`` serves snapshots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import reduce
from typing import Any

from tickerplant.endpoint import Endpoint
from tickerplant.io.listener import Router, bound
from tickerplant.io.loop import LoopLag
from tickerplant.io.ready import Priorities
from tickerplant.ops.figures import added, by_channel
from tickerplant.plant.books import LiveBooks
from tickerplant.plant.channel import Channel
from tickerplant.plant.config import PlantConfig
from tickerplant.plant.tier2 import TIER2, Tier2

log = logging.getLogger(__name__)

# Figures of the process, not of a channel: the first channel's stand for all of them.
PROCESS = frozenset({"loop_lag_seconds", "gc_collections", "rcvbuf_bytes"})
SILENT_AFTER = 5.0  # seconds a channel may stay unheard once another is heard, before it is said


class Plant:
    def __init__(self, config: PlantConfig) -> None:
        self.config = config
        self.books = LiveBooks(first_sequence=config.feed.first_sequence,
                               channels=config.channels)  # fmt: skip
        users = {name.encode("ascii"): stored for name, stored in config.users.items()} or None
        ranks = {config.of_channel(n).feed.priority for n in range(config.channels)}
        priorities = Priorities() if len(ranks) > 1 else None
        self.tier2 = Tier2(config.tier2, config.channels) if config.tier2.on else None
        # One probe of the loop's lag for every channel's feed (48 of them fired 4,800 a second).
        self.lag = LoopLag()
        self.channels = [Channel(config.of_channel(n), self.books, users, priorities, self.tier2,
                                 self.lag) for n in range(config.channels)]  # fmt: skip
        # With several channels, one port per stream: a router hands each login to its channel.
        self.routers = {} if config.channels == 1 else {
            name: Router([c.servers[name] for c in self.channels], listen.host, listen.port)
            for name, listen in (("itch", config.itch.listen), ("events", config.events.listen),
                                 ("glimpse", config.glimpse.listen))
        }  # fmt: skip
        self.frozen_objects = 0  # kept out of the cyclic collector's sight by its owner
        self._refresher: asyncio.Task[None] | None = None
        self._heard_at: float | None = None  # when the first channel was heard
        self._told_silent = False

    async def start(self) -> None:
        """Listen first, then join the lines: a client may log in before the first packet."""
        self.books.warm()
        routed = bool(self.routers)
        try:
            for name in ("itch", "events", "glimpse"):
                for channel in self.channels:
                    server = channel.servers[name]
                    where = Endpoint(server.host, server.port)
                    await bound(name, where, server.start(listen=not routed))
                if routed:
                    router = self.routers[name]
                    await bound(name, Endpoint(router.host, router.port), router.start())
            if self.tier2 is not None:
                where = self.config.tier2.rerequest or Endpoint("", 0)
                await bound("tier2.rerequest", where, self.tier2.start(
                    [channel.events.journal for channel in self.channels]))  # fmt: skip
            self.lag.start()
            for channel in self.channels:
                await channel.feed.start()
        except BaseException:
            self.lag.close()
            await self._close_servers()
            raise
        self._refresher = asyncio.ensure_future(self._refresh())

    async def _close_servers(self) -> None:
        if self.tier2 is not None:
            await self.tier2.close()
        for router in self.routers.values():  # (one never started closes as a no-op)
            router.close()
        for channel in self.channels:
            for server in channel.servers.values():
                await server.close()

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        for router in self.routers.values():
            router.close()
        for channel in self.channels:
            await channel.close()
        self.lag.close()
        if self.tier2 is not None:
            await self.tier2.close()

    def _silent(self, now: float) -> None:
        """Say, once, which channels are still unheard SILENT_AFTER seconds after another was
        heard first: their groups are wrong, or the exchange has fewer channels."""
        unheard = _unheard(self.channels)
        if len(unheard) == len(self.channels) or not unheard or self._told_silent:
            return
        if self._heard_at is None:
            self._heard_at = now
        if now - self._heard_at < SILENT_AFTER:
            return
        self._told_silent = True
        numbers = ", ".join(str(c.number + 1) for c in unheard)
        groups = ", ".join(str(c.config.feed.line_a) for c in unheard)
        log.warning("channels %s not heard %.0f s after the first was: check their groups (%s) "
                    "and the exchange's channel count", numbers, SILENT_AFTER, groups)

    async def ended(self) -> None:
        """Until every channel's session has ended."""
        for channel in self.channels:
            await channel.feed.session_ended.wait()

    def figures(self) -> dict[str, Any]:
        """The channels' figures added up (one channel: its own), the books', and with several
        channels the worst few by name."""
        each = [channel.figures() for channel in self.channels]
        figures = reduce(added, each) | by_channel(each)
        for name in PROCESS:
            figures[name] = each[0][name]
        tier2 = self.tier2.figures() if self.tier2 is not None else dict.fromkeys(TIER2, 0)
        return figures | self.books.figures() | tier2 | {
            "gc_frozen_objects": self.frozen_objects,
            "channels_unheard": len(_unheard(self.channels)),
        }

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.config.glimpse.refresh)
            self._silent(asyncio.get_running_loop().time())
            moved = [channel for channel in self.channels if channel.moved]
            try:
                # Taken between two batches (the loop is ours here), all at once: one gather.
                taken = self.books.pictures([channel.number for channel in moved])
                for channel, picture in zip(moved, taken, strict=True):
                    await channel.refresh(picture)
            except Exception:  # our bug: said, and tried again at the next refresh
                log.exception("snapshots not refreshed")


def _unheard(channels: list[Channel]) -> list[Channel]:
    return [channel for channel in channels if channel.stream.journal is None]
