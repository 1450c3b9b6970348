import logging
from collections.abc import Iterator

import pytest
from hypothesis import settings

# The first example of a property test may compile numba kernels; time is measured in bench/.
settings.register_profile("tickerplant", deadline=None)
settings.load_profile("tickerplant")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.setup configures the process; the tests after it expect pytest's own capture."""
    yield
    root = logging.getLogger("tickerplant")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.propagate = True
    root.setLevel(logging.NOTSET)
