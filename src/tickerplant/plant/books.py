"""The plant's live books: the feed handler's in-order batches through the book engine, the
directory a snapshot is made from, and where both stand; and the books as the events stream's
fan-out asks for them (:class:`Catalog`).

Once per batch, never per message: the engine applies the batch's block stream in one compiled
call and the BBO events it returns are tallied per locate with one ``bincount``.

The feed's events matter to books too: after a GapLost the books lack those messages' orders
(counted and shown, for they may be wrong from then on), and a new session's order references
mean nothing to the old books (they start over).

Several channels share one engine: their stocks are disjoint (``wire/channels.py``) and an order
reference is the day's, whatever the channel. A market-wide message (locate 0: a System Event)
comes once per channel, and each copy is applied: it changes no book, and each channel's events
stream carries its own copy's record, numbered from that channel's message. Where each channel
stands is its own (:attr:`LiveBooks.at`). A new session on any channel is a new day: the books
start over when the first channel begins it, and what a channel still delivers of the day before
(it has not begun the new one yet) is no longer applied.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from tickerplant.book import normalize
from tickerplant.book.engine import BookEngine, EventBatch, EventBuffers
from tickerplant.book.snapshot import Directory, Picture, picture
from tickerplant.distribute.stream import EventStream
from tickerplant.receive.events import Batch, Event, GapLost, SessionStarted
from tickerplant.wire.channels import channel_of

PRICE_SCALE = 10_000  # ITCH Price(4)


class LiveBooks:
    def __init__(self, engine: BookEngine | None = None, first_sequence: int = 1,
                 channels: int = 1) -> None:  # fmt: skip
        self.engine = engine or BookEngine()
        self.directory = Directory()  # the reference messages a snapshot repeats
        self.first_sequence = first_sequence
        self.channels = channels
        # Per channel (from 0), the number after the last message the books applied (or were
        # told lost): what a snapshot continues from. Behind the journal's end while a
        # restarted plant catches up.
        self.at = [first_sequence] * channels
        # New sessions each channel began since the start, and the newest of them: the books'
        # day. A channel behind it is still finishing the day before.
        self._days = [0] * channels
        self._day = 0
        # Each batch's events are tallied before the next batch comes: one set of buffers serves
        # them all, written over batch after batch (and kept across a new session's engine).
        self._scratch = EventBuffers()
        self._fresh_figures()

    def _fresh_figures(self) -> None:
        self.bbo_updates = 0
        self.trades = 0
        self.messages_missed = 0  # lost by the feed since these books started: they lack them
        self._bbo_by_locate = np.zeros(1 << 16, dtype=np.int64)

    def warm(self) -> None:
        """Load (first run: compile) the engine's kernel now, not on the first live batch."""
        self.engine.process(b"")

    def on_batch(self, batch: Batch, channel: int = 0) -> EventBatch:
        """Apply ``batch`` of ``channel``; its events are valid until the next call."""
        if self._days[channel] < self._day:  # the day before's tail: not these books'
            return self.engine.process(b"", scratch=self._scratch)
        events = self.engine.process(batch.blocks, scratch=self._scratch)
        n = events.bbo.shape[0]
        if n:
            self.bbo_updates += n
            # Only up to the highest locate touched: not 512 KiB of zeros added every batch.
            counts = np.bincount(events.bbo["locate"])
            self._bbo_by_locate[: counts.shape[0]] += counts
        self.trades += events.trades.shape[0]
        self.directory.apply(batch.blocks)
        self.at[channel] = batch.end
        return events

    def on_event(self, event: Event, channel: int = 0) -> None:
        """The feed's ``on_event`` of ``channel``: GapLost and session changes come in stream
        position."""
        if isinstance(event, GapLost):
            self.messages_missed += event.end - event.start
            self.at[channel] = event.end
        elif isinstance(event, SessionStarted) and event.previous is not None:
            self._days[channel] += 1
            self.at[channel] = self.first_sequence
            if self._days[channel] > self._day:  # the first channel to begin a new day
                self._day = self._days[channel]
                self.engine = BookEngine(self.engine.max_symbols)
                self.directory = Directory()
                self._fresh_figures()

    def picture(self, channel: int = 0) -> Picture:
        """``channel``'s books as a snapshot continuing from its :attr:`at`, taken now (encode
        it later)."""
        return self.pictures([channel])[0]

    def pictures(self, channels: list[int]) -> list[Picture]:
        """:meth:`picture` of each of ``channels``, from one gather of the live orders."""
        if self.channels == 1:
            return [picture(self.engine, self.directory, self.at[0]) for _ in channels]
        rows = self.engine.live_rows()
        return [picture(self.engine, self.directory, self.at[n],
                        partial(_ours, channel=n, channels=self.channels), rows)
                for n in channels]  # fmt: skip

    def figures(self, busiest: int = 3) -> dict[str, Any]:
        """Sizes, counts and the busiest symbols' BBO (names in ``tickerplant.ops.figures``)."""
        engine = self.engine
        counts = self._bbo_by_locate
        # Only the locates in use sorted: this runs on the loop twice a second, and sorting all
        # 65,536 took 1.5 ms of the 2.1 a snapshot cost (argpartition as much: mostly zeros).
        used = np.flatnonzero(counts)
        top = used[np.lexsort((used, -counts[used]))][:busiest]
        quotes = []
        for locate in top.tolist():
            if not self._bbo_by_locate[locate]:
                break
            bid_px, bid_sz, ask_px, ask_sz = engine.bbo(locate)
            quotes.append({
                "symbol": engine.symbol(locate) or str(locate),
                "bid": bid_px / PRICE_SCALE, "bid_size": bid_sz,
                "ask": ask_px / PRICE_SCALE, "ask_size": ask_sz,
                "bbo_updates": int(self._bbo_by_locate[locate]),
            })  # fmt: skip
        return {
            "book_symbols": engine.symbol_count,
            "live_orders": engine.live_orders,
            "book_levels": engine.levels,
            "bbo_updates": self.bbo_updates,
            "trades": self.trades,
            "book_anomalies": sum(engine.anomalies.values()),
            "messages_missed": self.messages_missed,
            "bytes_per_live_order": round(engine.bytes_per_live_order, 1),
            "busiest": quotes,
        }


def _ours(locates: npt.NDArray[np.int64], channel: int, channels: int) -> npt.NDArray[np.bool_]:
    ours: npt.NDArray[np.bool_] = channel_of(locates, channels) == channel
    return ours


class Catalog:
    """The books as the events stream's fan-out asks for them (``session.fanout.Catalog``): a
    symbol's locate, and images of symbols' state, stamped with the last record they include
    (the stream's last, but while a restarted plant's books are still below what its journal
    holds)."""

    def __init__(self, books: LiveBooks, stream: EventStream, depth: int, channel: int = 0
                 ) -> None:  # fmt: skip
        self._books = books
        self._channel = channel
        self._stream = stream
        self._depth = depth
        self._by_symbol: dict[bytes, int] = {}
        self._symbols = -1  # the directory's size when _by_symbol was built

    def locate(self, symbol: bytes) -> int | None:
        return self._named().get(symbol)

    def locates(self) -> list[int]:
        return sorted(self._named().values())

    def _named(self) -> dict[bytes, int]:
        """This channel's stocks (the others are not its stream's), by name."""
        engine = self._books.engine
        if engine.symbol_count != self._symbols:  # a Stock Directory since: once per change
            books = self._books
            self._by_symbol = {name.encode("latin-1").ljust(8): loc
                               for loc, name in engine.symbols().items()
                               if books.channels == 1
                               or channel_of(loc, books.channels) == self._channel}  # fmt: skip
            self._symbols = engine.symbol_count
        return self._by_symbol

    def images(self, locates: list[int]) -> Callable[[], bytes]:
        books, at = self._books, self._books.at[self._channel]
        return normalize.imaging(books.engine, locates, self._stream.included(at), at - 1,
                                 self._depth)  # fmt: skip
