"""Fuzz target: MoldUDP64 datagrams on the lines, as the feed session reads them.

The input is cut into datagrams (:func:`common.parts`), each given to line A or B by its first
byte's low bit and the clock moving by its second; a few well-formed packets of the fuzzer's
session come first, so that it starts in a live session. Every datagram is counted; what the
session delivers runs on unbroken within a session.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    import atheris  # noqa: F401 - first: what follows is imported instrumented

from common import fuzz, instrumented, parts

with instrumented():
    from tickerplant.receive.events import Batch, GapLost, SessionStarted, Source
    from tickerplant.receive.feed import FeedSession, FeedSessionConfig
    from tickerplant.wire import moldudp64 as mold

SESSION = mold.session_bytes("FUZZ000001")
OPENING = [mold.encode_packet(SESSION, 1 + 3 * i, [b"m%d" % (3 * i + j) for j in range(3)])
           for i in range(3)]  # fmt: skip


def TestOneInput(data: bytes) -> None:  # (atheris looks for this name)
    session = FeedSession(FeedSessionConfig(), rerequest=True, replay=True)
    now = 0.0
    datagrams = [*OPENING, *parts(data)]
    for i, datagram in enumerate(datagrams):
        source = Source.LINE_B if datagram[:1] and datagram[0] & 1 else Source.LINE_A
        now += (datagram[1] if len(datagram) > 1 else 0) / 64
        session.receive_datagrams(source, mold.Datagrams.holding([datagram]), 1, now)
        if i % 7 == 0:
            session.handle_timer(now)
        session.datagrams_to_send()
    session.input_ended(now + 60)
    expected = None
    while (item := session.next_event()) is not None:
        if isinstance(item, SessionStarted):
            expected = None  # a new session numbers from its own start
        elif isinstance(item, Batch | GapLost):
            first = item.first if isinstance(item, Batch) else item.start
            if expected is not None and first != expected:
                raise AssertionError(f"delivered {first}, {expected} expected")
            expected = item.end
    figures = session.counters.sources
    seen = sum(f.packets for f in figures.values())
    if seen != len(datagrams):
        raise AssertionError(f"{len(datagrams)} datagrams, {seen} counted")


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
