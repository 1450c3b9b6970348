"""What the fuzz targets share: how an input is cut into parts, and how a target is run.

Each target (``fuzz/NAME.py``) reads one kind of input the plant takes from outside and defines
``TestOneInput(data)``: it feeds ``data`` to the real code and raises only for a defect (an
exception that is not the clear error the input deserves, a broken invariant). Run as a script
it is an atheris fuzzer (coverage-guided; the harness imports the package instrumented, and
``fuzz/run.py`` runs it with NUMBA_DISABLE_JIT=1 so that the kernels are Python it can see);
imported, its ``TestOneInput`` replays a corpus through the compiled code
(``tests/test_fuzz.py``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any


def parts(data: bytes) -> Iterator[bytes]:
    """``data`` cut where it says: a 2-byte big-endian length, then that many bytes, again and
    again (the last part takes what is left): the fuzzer learns to make packets of any size."""
    at = 0
    while at < len(data):
        size = int.from_bytes(data[at : at + 2], "big")
        at += 2
        yield data[at : at + size]
        at += size


def instrumented() -> contextlib.AbstractContextManager[Any]:
    """Imports inside this are instrumented for coverage when the target runs as a fuzzer."""
    if "atheris" not in sys.modules:
        return contextlib.nullcontext()
    import atheris

    return atheris.instrument_imports(include=["tickerplant"])  # type: ignore[no-any-return]


def fuzz(target: Callable[[bytes], None]) -> None:
    """Run ``target`` under atheris with this process's arguments (libFuzzer's: -runs=N, a
    corpus directory, -timeout=S for a hang, -rss_limit_mb=M for a leak)."""
    import atheris

    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
