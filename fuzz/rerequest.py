"""Fuzz target: MoldUDP64 re-requests, as the exchange's re-request server reads them.

The input is cut into datagrams (:func:`common.parts`) from a handful of sources. A request is
answered with exactly the messages it asked for (as many as the limits allow) or counted as
refused, malformed, foreign or beyond the end; never an exception.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    import atheris  # noqa: F401 - first: what follows is imported instrumented

from common import fuzz, instrumented, parts

with instrumented():
    from tickerplant.distribute.journal import Journal
    from tickerplant.distribute.rerequest import RerequestLimits, Rerequests
    from tickerplant.wire import moldudp64 as mold
    from tickerplant.wire.blocks import iter_messages, join_messages

SESSION = mold.session_bytes("FUZZ000001")
JOURNAL = Journal(SESSION)
JOURNAL.append(join_messages([b"message %d" % n for n in range(1, 2001)]))


def TestOneInput(data: bytes) -> None:  # (atheris looks for this name)
    server = Rerequests(JOURNAL, RerequestLimits())
    now = 0.0
    for i, datagram in enumerate(parts(data)):
        now += 0.01
        answers = server.handle(datagram, (f"127.0.0.{i % 4}", 40000), now)
        for answer in answers:
            packet = mold.decode_packet(answer)  # what we send must be well-formed
            if packet.session != SESSION:
                raise AssertionError("an answer for another session")
            for k, message in enumerate(iter_messages(packet.blocks)):
                if message != b"message %d" % (packet.sequence + k):
                    raise AssertionError(f"message {packet.sequence + k} is not the journal's")
    c = server.counters
    if c.answered + c.beyond_end + c.refused > c.requests:
        raise AssertionError(f"a request counted twice: {c}")


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
