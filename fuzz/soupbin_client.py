"""Fuzz target: SoupBinTCP byte streams from a server, as the client reads them (the plant's
replay client reading the exchange, ``tickerplant.client`` reading the plant).

The input is cut into reads (:func:`common.parts`), the clock moving between them. A server's
bytes may end the session (a protocol violation, a rejected login, End of Session), never raise;
what it delivers runs on unbroken from where the login said.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    import atheris  # noqa: F401 - first: what follows is imported instrumented

from common import fuzz, instrumented, parts

with instrumented():
    from tickerplant.receive.events import Batch
    from tickerplant.session.soupbin import LoggedIn, SoupClientSession
    from tickerplant.wire import soupbintcp as soup

# A server's usual opening, so that the fuzzer starts in a live session.
OPENING = soup.encode(soup.LoginAccepted(b"FUZZ000001", 5))


def TestOneInput(data: bytes) -> None:  # (atheris looks for this name)
    client = SoupClientSession(0.0, sequence=5)
    client.data_to_send(0.0)
    now = 0.0
    expected = None
    opening = [] if data[:1] == b"\x00" else [OPENING]  # the first byte: the server logs in
    reads = [*opening, *parts(data[1:])]
    for read in reads:
        now += 0.05
        if client.closed:
            break
        client.receive_data(read, now)
        client.handle_timer(now)
        client.data_to_send(now)
        while (event := client.next_event()) is not None:
            if isinstance(event, LoggedIn):
                expected = event.sequence
            elif isinstance(event, Batch):
                if event.first != expected:
                    raise AssertionError(f"a batch at {event.first}, {expected} expected")
                expected = event.end


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
