"""Fuzz target: the plant's TOML config, as ``tickerplant run CONFIG`` reads it.

Any bytes: the file is loaded, or refused with a :class:`ConfigError` that names the field (or
the line) and the fix; nothing else.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":
    import atheris  # noqa: F401 - first: what follows is imported instrumented

from common import fuzz, instrumented

with instrumented():
    from tickerplant.endpoint import Endpoint
    from tickerplant.errors import ConfigError
    from tickerplant.ops.config import load_file
    from tickerplant.plant import PlantConfig

PLACE = Path(tempfile.mkdtemp(prefix="fuzz-config-")) / "plant.toml"
# What the fuzzer starts from: a real config, every table in it.
SEED = b"""users = {}
[feed]
line_a = "239.192.77.1:31001"
line_b = "239.192.77.2:31002"
[feed.recovery]
give_up_after = 2.0
[itch]
listen = "127.0.0.1:31010"
memory_bytes = 1000
[itch.limits]
max_backlog = 16777216
[events]
slow_consumers = { bob = "conflate" }
depth = 5
"""


def TestOneInput(data: bytes) -> None:  # (atheris looks for this name)
    PLACE.write_bytes(data)
    try:
        load_file(PlantConfig, PLACE, {Endpoint: Endpoint.parse})
    except ConfigError as err:
        if not (err.field and str(err)):
            raise AssertionError(f"a ConfigError that names nothing: {err!r}") from err


if __name__ == "__main__":
    fuzz(TestOneInput)
    sys.exit(0)
