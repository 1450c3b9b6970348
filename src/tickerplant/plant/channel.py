"""One channel of the plant: its feed handler (lines, re-request, replay), its ``itch`` stream
(the repaired stream, numbered as the exchange numbered it), its ``events`` stream (what the
books raise of its stocks, numbered from its own messages) and its snapshots; the books are the
plant's, one engine for every channel (:mod:`tickerplant.plant.books`).

Each stream has one server a channel; with several channels, the plant's router in front of a
stream's servers hands each login to the one serving the session it names
(:class:`tickerplant.io.listener.Router`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from tickerplant.book import normalize
from tickerplant.book.snapshot import Picture
from tickerplant.capture.journal import JournalFile
from tickerplant.distribute import fanout
from tickerplant.distribute.fanout import FanOut
from tickerplant.distribute.journal import Journal
from tickerplant.distribute.stream import EventStream, ItchStream
from tickerplant.feed.handler import FeedHandler
from tickerplant.io.loop import LoopLag
from tickerplant.io.ready import Priorities
from tickerplant.io.soupbin import SoupServer
from tickerplant.ops import passwords
from tickerplant.plant.books import Catalog, LiveBooks
from tickerplant.plant.config import ChannelConfig, StreamConfig
from tickerplant.plant.mend import Mender
from tickerplant.plant.tier2 import Tier2
from tickerplant.receive.events import Batch, Event, GapLost, SessionEnded, SessionStarted


class Channel:
    def __init__(self, config: ChannelConfig, books: LiveBooks, users: Mapping[bytes, str] | None,
                 priorities: Priorities | None = None, tier2: Tier2 | None = None,
                 lag: LoopLag | None = None) -> None:  # fmt: skip
        self.config = config
        self.tier2 = tier2  # the events stream republished on the plant's groups
        self.number = config.number  # from 0
        self.books = books
        self._itch_file = journal_file(config.itch, "journal")
        self._mender = Mender(self._itch_file, config.feed)
        self.stream = ItchStream(config.feed.first_sequence, self._itch_file.reopened)
        self._events_file = journal_file(config.events, "events")
        self.event_stream = EventStream(self._events_file.reopened)
        self.feed = FeedHandler(config.feed, self._on_batch, self._on_event, priorities, lag)
        self.itch = stream_server(self._itch_file.reopened, config.itch, users)
        catalog = Catalog(books, self.event_stream, config.events.depth, self.number)
        self.events = stream_server(self._events_file.reopened, config.events, users, catalog)
        glimpse = config.glimpse
        self.glimpse = SoupServer(FanOut(
            ItchStream.waiting(), limits=glimpse.limits, users=users, local_only=not users,
        ), glimpse.listen.host, glimpse.listen.port, verify=passwords.verify)  # fmt: skip
        self._snapshot_at = 0  # the itch number the current snapshot continues from

    @property
    def servers(self) -> dict[str, SoupServer]:
        return {"itch": self.itch, "events": self.events, "glimpse": self.glimpse}

    async def close(self) -> None:
        await self.feed.close()
        await self._mender.close()
        for server in self.servers.values():
            await server.close()
        self._itch_file.close()
        self._events_file.close()

    @property
    def moved(self) -> bool:
        """The books moved since the last snapshot: a new one is due."""
        return self.stream.journal is not None and self.books.at[self.number] != self._snapshot_at

    async def refresh(self, taken: Picture) -> None:
        """``taken`` (this channel's books, taken now) as the snapshot ``glimpse`` serves."""
        journal = self.stream.journal
        assert journal is not None
        self._snapshot_at = taken.next_sequence
        # Encoded on a thread: the loop goes on serving the lines and the clients meanwhile.
        blocks = await asyncio.to_thread(taken.encode)
        if journal is not self.stream.journal:
            self._snapshot_at = 0  # a new session began meanwhile: its books are due
            return
        view = Journal(journal.session)
        view.append(blocks)
        self.glimpse.start_session(view)
        self.glimpse.end_session()  # each login: the snapshot, then End of Session

    def figures(self) -> dict[str, object]:
        """This channel's own figures (the feed's, its streams'), keyed as the plant's."""
        return self.feed.figures() | served({"itch": self.itch, "events": self.events}) | {
            "stream_messages": {"itch": self.stream.counters.messages,
                                "events": self.event_stream.counters.records},
            "stream_lost_messages": {"itch": self.stream.counters.lost,
                                     "events": self.event_stream.counters.lost_notices},
            "journal_memory_bytes": {
                "itch": self.stream.journal.memory if self.stream.journal else 0,
                "events": self.event_stream.journal.memory if self.event_stream.journal else 0,
            },
            "journal_write_errors": {"itch": self._itch_file.errors,
                                     "events": self._events_file.errors},
            "journal_mended_blocks": {"itch": self._mender.mended},
            "journal_unmended_blocks": {"itch": self._mender.failed},
            "glimpse_logins": self.glimpse.counters.logins,
        }  # fmt: skip

    def _on_batch(self, batch: Batch) -> None:
        # The itch stream first: it carries the batch as it came, and waits for nothing the
        # books derive from it (they took 250 of the 950 us of a live batch before its writes).
        self.stream.deliver(batch)
        self._publish_itch()
        events = self.books.on_batch(batch, self.number)
        stream = self.event_stream
        if stream.journal is not None:
            stream.append(*normalize.records(events, stream.next_sequence, batch.first,
                                             batch.blocks))
        self._publish_events()

    def _on_event(self, event: Event) -> None:
        self.books.on_event(event, self.number)
        if isinstance(event, GapLost) and self.event_stream.journal is not None:
            self.event_stream.lose(event.start, event.end)
        if isinstance(event, SessionStarted | GapLost | SessionEnded):
            if self.stream.deliver(event):
                journal = self.stream.journal
                assert journal is not None
                self._itch_file.open(journal)
                self.itch.start_session(journal)
                events = self.event_stream.start(journal.session)
                self._events_file.open(events)
                self.events.start_session(events)
                if self.tier2 is not None:
                    self.tier2.begin(self.number, events)
            elif isinstance(event, SessionEnded):
                self.itch.end_session()
                self.events.end_session()
                if self.tier2 is not None:
                    self.tier2.end(self.number)
            self._publish_itch()
            self._publish_events()

    # Published, then handed to the file (which may let the journal go of its oldest): a ring
    # smaller than one publish would otherwise have dropped what the publish is about to push.
    def _publish_itch(self) -> None:
        self.itch.publish()
        self._itch_file.write(self.stream.blocks_to_write(), self.stream.journal)

    def _publish_events(self) -> None:
        self.events.publish()
        if self.tier2 is not None:  # (after the clients' pushes: they wait for nothing else)
            self.tier2.publish(self.number)
        self._events_file.write(self.event_stream.blocks_to_write(), self.event_stream.journal)


def served(servers: dict[str, SoupServer]) -> dict[str, Any]:
    """What the streams' servers count, by stream (``events``' own figures if it is one)."""
    counters = {name: server.counters for name, server in servers.items()}
    out = {
        "clients": {name: server.clients for name, server in servers.items()},
        "queued_bytes": {name: server.queued for name, server in servers.items()},
        "logins": {name: c.logins for name, c in counters.items()},
        "rejected_logins": {name: c.rejected for name, c in counters.items()},
        "sent_messages": {name: c.messages_sent for name, c in counters.items()},
        "sent_bytes": {name: c.bytes_sent for name, c in counters.items()},
        "delivery_latency_seconds": {name: server.fanout.delivery.latency.figures()
                                     for name, server in servers.items()},
        "slow_consumers": {
            name: {"disconnect": c.slow_consumers, "conflate": c.conflating, "skip": c.skips}
            for name, c in counters.items()
        },
        "refused_connections": {name: c.refused for name, c in counters.items()},
        "journal_unreadable": {name: c.unreadable for name, c in counters.items()},
        "over_budget_cuts": {name: c.over_budget for name, c in counters.items()},
        "deferred_pushes": {name: c.deferred for name, c in counters.items()},
        "too_old_logins": {name: c.too_old for name, c in counters.items()},
    }  # fmt: skip
    events = servers.get("events")
    if events is not None:
        c = events.counters
        out |= {
            "conflated_updates": {"events": c.conflated_updates},
            "conflated_rounds": {"events": c.conflated_rounds},
            "staleness_seconds": {"events": events.fanout.delivery.staleness.figures()},
            "skipped_messages": {"events": c.skipped_messages},
            "subscriptions": {"events": c.subscriptions},
        }
    return out


def journal_file(stream: StreamConfig, suffix: str) -> JournalFile:
    """A stream's journal file (SESSION.SUFFIX in its journal_dir; none: a ring)."""
    return JournalFile(stream.journal_dir, suffix, stream.memory_bytes, stream.keep_sessions,
                       fsync_interval=stream.fsync_interval)


def stream_server(reopened: Journal | None, stream: StreamConfig,
                  users: Mapping[bytes, str] | None, catalog: fanout.Catalog | None = None
                  ) -> SoupServer:  # fmt: skip
    """A stream's server: ``users`` (none: this host's clients only), the stream's limits and
    its users' slow-consumer policies. What it serves before the feed is heard: the journal of
    the run before (clients resume on it at once), or an empty one waiting for the first
    session."""
    journal = reopened if reopened is not None else ItchStream.waiting()
    return SoupServer(FanOut(
        journal, limits=stream.limits, users=users, local_only=not users, catalog=catalog,
        policies=stream.policies(), policy=stream.policy(stream.slow_consumer, "slow_consumer"),
    ), stream.listen.host, stream.listen.port, verify=passwords.verify)  # fmt: skip
