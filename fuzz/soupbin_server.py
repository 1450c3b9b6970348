"""Fuzz target: SoupBinTCP byte streams from clients, on each of the plant's servers.

The first byte picks the server: ``itch`` (a journal of ITCH-shaped messages), ``events`` (the
books' records of a small synthetic day, with the real catalog: subscriptions and images) or
``glimpse`` (a snapshot's journal). The rest is cut into reads (:func:`common.parts`) from one
connection, the clock moving between them; after each read the server's answer is taken, as
io would. A client's bytes may get it told why and closed, never an exception; a closed
connection stays closed.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    import atheris  # noqa: F401 - first: what follows is imported instrumented

from common import fuzz, instrumented, parts

with instrumented():
    from tickerplant.book import normalize
    from tickerplant.distribute.fanout import FanOut, FanOutLimits
    from tickerplant.distribute.journal import Journal
    from tickerplant.distribute.stream import EventStream
    from tickerplant.exchange.synthetic import SyntheticMarket
    from tickerplant.plant.books import Catalog, LiveBooks
    from tickerplant.receive.events import Batch
    from tickerplant.wire.blocks import offsets_of

SESSION = b"FUZZ000001"
DAY = b"".join(SyntheticMarket(5, 20).chunks(3000))


def _events() -> tuple[Journal, Catalog]:
    books = LiveBooks()
    stream = EventStream()
    journal = stream.start(SESSION)
    events = books.on_batch(Batch(1, len(offsets_of(DAY)[0]), DAY))
    stream.append(*normalize.records(events, stream.next_sequence, 1, DAY))
    return journal, Catalog(books, stream, 5)


def _journal() -> Journal:
    journal = Journal(SESSION)
    journal.append(DAY)
    return journal


EVENTS, CATALOG = _events()
ITCH = _journal()


class Handle:
    """io's side of the connection: nothing the core looks at."""


def TestOneInput(data: bytes) -> None:  # (atheris looks for this name)
    if not data:
        return
    kind = data[0] % 3
    limits = FanOutLimits(chunk_messages=64, turn_bytes=4096, tick_bytes=8192)
    if kind == 0:
        fanout: FanOut[Handle] = FanOut(ITCH, limits=limits, local_only=True)
    elif kind == 1:
        fanout = FanOut(EVENTS, limits=limits, local_only=True, catalog=CATALOG)
    else:
        fanout = FanOut(ITCH, limits=limits, users={b"fuzz": "not a hash"}, local_only=False)
    subscriber = fanout.connect(Handle(), 0.0, "127.0.0.1")
    now = 0.0
    for read in parts(data[1:]):
        now += 0.05
        if subscriber.closed:
            break
        subscriber.receive_data(read, now)
        _answer(fanout, subscriber, now)
    subscriber.handle_timer(now + 60)  # timeouts, heartbeats, a dead link
    _answer(fanout, subscriber, now + 60)
    subscriber.connection_lost()
    if len(fanout):
        raise AssertionError("a connection lost is still counted")


def _answer(fanout: FanOut[Handle], subscriber: object, now: float) -> None:
    """What io does after a read: events, writes, and catch-up turns granted."""
    for _ in range(50):  # bounded: a turn at a time
        while subscriber.next_event() is not None:  # type: ignore[attr-defined]
            pass
        if not subscriber.data_to_send(now):  # type: ignore[attr-defined]
            if fanout.get_timer() is None:
                return
            for _ in fanout.handle_timer(now):  # (its bytes are counted as it goes)
                subscriber.data_to_send(now)  # type: ignore[attr-defined]


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
