"""The one place that decides how kernels are compiled.

Every per-message loop in tickerplant is a numba kernel declared with :data:`kernel`. ``cache=True``
makes a second process's first call load machine code from ``__pycache__`` (~0.1 s) instead of
compiling (1-6 s). ``NUMBA_DISABLE_JIT=1`` turns every kernel back into plain Python, which the
test-suite runs too.
"""

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., Any])


def kernel(fn: F) -> F:
    """Compile ``fn`` in nopython mode, cached on disk, releasing the GIL."""
    return cast(F, numba.njit(cache=True, nogil=True)(fn))
