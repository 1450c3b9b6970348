"""Fuzz target: the files a user hands the plant: ITCH days (plain or gzip) and packet captures
(pcap or pcapng) of MoldUDP64 lines, as the simulator and ``tickerplant replay`` read them
(``capture.lines.read_messages``), and a capture's streams as ``tickerplant capture`` lists
them (``capture.streams.streams``).

Any bytes: every message is read, or the reading stops with an :class:`InputError` that names
the offset (never another exception, never a hang).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":
    import atheris  # noqa: F401 - first: what follows is imported instrumented

from common import fuzz, instrumented

with instrumented():
    from tickerplant.capture.lines import read_messages
    from tickerplant.capture.pcap import Capture, is_capture
    from tickerplant.capture.streams import streams
    from tickerplant.errors import InputError

PLACE = Path(tempfile.mkdtemp(prefix="fuzz-files-")) / "day"


def TestOneInput(data: bytes) -> None:  # (atheris looks for this name)
    PLACE.write_bytes(data)
    try:
        for _ in read_messages(PLACE, chunk_bytes=4096):
            pass
    except InputError as err:
        if not str(err):
            raise AssertionError("an InputError that says nothing") from err
    if is_capture(data[:4]):
        try:
            capture = Capture(PLACE)
            try:
                streams(capture)
            finally:
                capture.close()
        except InputError as err:
            if not str(err):
                raise AssertionError("an InputError that says nothing") from err


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
