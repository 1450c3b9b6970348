"""``tickerplant edge``: a host apart from the plant that serves the plant's ``events`` streams
to its own clients.

It joins the plant's tier-2 (``tickerplant.plant.tier2``) with the feed machinery the plant uses
for the exchange: A/B arbitration, re-request from the plant's tier-2 re-request server, replay
from the plant's events service, and a late join by replay from the session's first number or
(``[feed] join = "snapshot"``) from a snapshot: the plant's images of every symbol (``*`` at
the live end), then the stream from the number they hold up to. Each channel's delivered
records are journaled under the numbers the plant gave them, so a client resumes by number on
the plant, on an edge, or on another edge, and is served with the plant's own fan-out
(subscriptions, slow-consumer policies, images from :class:`~tickerplant.edge.catalog.Latest`).
An edge that joined from a snapshot holds the records from there: a client resuming from an
earlier number is served from there and told (as by a plant whose journal is a ring).

A range the edge could not repair (the plant no longer held it) keeps its numbers: each lost
number is a ``k`` (skipped) notice naming the whole range, so that every client is told, in
place, and the records around it keep the plant's numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import reduce
from typing import Any

import numpy as np

from tickerplant.client import Events, subscribe
from tickerplant.distribute.stream import ItchStream
from tickerplant.edge.catalog import Latest
from tickerplant.edge.config import EdgeConfig
from tickerplant.feed.handler import FeedHandler
from tickerplant.io.listener import Router, bound
from tickerplant.io.loop import LoopLag
from tickerplant.io.replay_client import ReplayError
from tickerplant.ops.figures import added, by_channel
from tickerplant.plant.channel import journal_file, served, stream_server
from tickerplant.plant.mend import Mender
from tickerplant.receive.events import Batch, Event, GapLost, SessionEnded, SessionStarted
from tickerplant.wire import events as ev


class EdgeChannel:
    """One channel: its tier-2 feed, its journal (and file), what its records say, its events
    server."""

    def __init__(self, number: int, config: EdgeConfig, lag: LoopLag) -> None:
        self.number = number  # from 0
        feed, events = config.lines()[number], config.events_of(number)
        self.file = journal_file(events, "events")
        # The records, numbered as the plant numbered them; a journal the run before kept goes
        # on, and what the feed brings again below its end (a replay from 1, which rebuilds
        # what the records say) is not journaled twice.
        self.stream = ItchStream(reopened=self.file.reopened)
        self.latest = Latest()
        self._imaged: tuple[bytes, int, Latest] | None = None  # a snapshot's, not yet joined
        self.feed = FeedHandler(feed, self._on_batch, self._on_event, lag=lag,
                                snapshot=self._snapshot if feed.replay is not None else None)
        self.mender = Mender(self.file, feed)  # a block the disk changed: fetched again
        users = {name.encode("ascii"): stored for name, stored in config.users.items()} or None
        self.events = stream_server(self.file.reopened, events, users, self)

    # The fan-out's catalog: the state of the records journaled so far.
    def locate(self, symbol: bytes) -> int | None:
        return self.latest.locate(symbol)

    def images(self, locates: list[int]) -> Callable[[], bytes]:
        return self.latest.images(locates)

    def locates(self) -> list[int]:
        return self.latest.locates()

    async def _snapshot(self, session: bytes) -> int:
        """The plant's images of every symbol of ``session`` where it stands (its events
        service, ``*`` at the live end): this channel's state from them; returns the number
        the stream goes on from (after the last the images hold)."""
        feed = self.feed.config
        assert feed.replay is not None
        latest = Latest()
        async with asyncio.timeout(feed.replay_timeout):
            async for record in subscribe(feed.replay, first=0, session=session.decode("ascii"),
                                          username=feed.replay_username,
                                          password=feed.replay_password, events=True,
                                          snapshot=True, retry=None):  # fmt: skip
                if not isinstance(record, Events):
                    continue
                rows = record.records
                images = ev.where(rows, (rows["flags"] & ev.IMAGE) != 0)
                latest.apply(images)
                end = ev.view(images, ev.IMAGED)
                if end.shape[0]:
                    first = int(end["first"][0])
                    self._imaged = (session, first, latest)  # its state once it is joined there
                    return first
        raise ReplayError("the plant's events service ended the session before the snapshot")

    def _on_batch(self, batch: Batch) -> None:
        self.stream.deliver(batch)
        self.latest.apply(ev.from_blocks(batch.blocks))
        self._publish()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, GapLost):
            count = event.end - event.start
            notices = ev.blocks(ev.SKIPPED, count)  # (one array: a lost range may be millions)
            notices["sequence"] = np.arange(event.start, event.end, dtype=np.uint64)
            notices["first"], notices["count"], notices["dropped"] = event.start, count, count
            self.stream.deliver(Batch(event.start, count, notices.tobytes()))
            self.stream.counters.lost += count  # (journaled as notices, not marks: still lost)
        elif isinstance(event, SessionStarted | SessionEnded):
            if self.stream.deliver(event):
                journal = self.stream.journal
                assert journal is not None
                if isinstance(event, SessionStarted):  # a new day's state, or the snapshot's
                    imaged, self._imaged = self._imaged, None
                    joined = imaged is not None and imaged[:2] == (event.session, event.joined)
                    self.latest = imaged[2] if imaged is not None and joined else Latest()
                self.file.open(journal)
                self.events.start_session(journal)
            elif isinstance(event, SessionEnded):
                self.events.end_session()
        self._publish()

    def _publish(self) -> None:
        # Published, then handed to the file (which may let the journal go of its oldest).
        self.events.publish()
        self.file.write(self.stream.blocks_to_write(), self.stream.journal)

    async def close(self) -> None:
        await self.feed.close()
        await self.mender.close()
        await self.events.close()
        self.file.close()


class Edge:
    def __init__(self, config: EdgeConfig) -> None:
        self.config = config
        self.lag = LoopLag()  # one probe of the loop for every channel's feed
        self.channels = [EdgeChannel(n, config, self.lag) for n in range(config.channels)]
        listen = config.events.listen
        self.router = (Router([c.events for c in self.channels], listen.host, listen.port)
                       if len(self.channels) > 1 else None)  # fmt: skip

    @property
    def port(self) -> int:
        """Where the events stream is served (every channel's, with several)."""
        return self.router.port if self.router is not None else self.channels[0].events.port

    async def start(self) -> None:
        """Listen first, then join tier-2: a client may log in before the first packet."""
        listen = self.config.events.listen
        try:
            for channel in self.channels:
                await bound("events", listen, channel.events.start(listen=self.router is None))
            if self.router is not None:
                await bound("events", listen, self.router.start())
            self.lag.start()
            for channel in self.channels:
                await channel.feed.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self.lag.close()
        if self.router is not None:
            self.router.close()
        for channel in self.channels:
            await channel.close()

    async def ended(self) -> None:
        """Until every channel's session has ended."""
        for channel in self.channels:
            await channel.feed.session_ended.wait()

    def figures(self) -> dict[str, Any]:
        """The channels' feeds and events servers, added up (as the plant's)."""
        each = [channel.feed.figures() | served({"events": channel.events}) | {
            "stream_messages": {"events": channel.stream.counters.messages},
            "stream_lost_messages": {"events": channel.stream.counters.lost},
            "journal_memory_bytes": {"events": channel.stream.journal.memory
                                     if channel.stream.journal is not None else 0},
            "journal_write_errors": {"events": channel.file.errors},
            "journal_mended_blocks": {"events": channel.mender.mended},
            "journal_unmended_blocks": {"events": channel.mender.failed},
        } for channel in self.channels]  # fmt: skip
        return reduce(added, each) | by_channel(each)
