"""The one place that decides how kernels are compiled, and the primitives they share.

Every per-message loop in tickerplant is a numba kernel declared with :data:`kernel`. ``cache=True``
makes a second process's first call load machine code from ``__pycache__`` (~0.1 s) instead of
compiling (1-6 s). ``NUMBA_DISABLE_JIT=1`` turns every kernel back into plain Python, which the
test-suite runs too; each primitive here has a plain-Python form for that.
"""

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]
from numba import types
from numba.core import cgutils
from numba.core import config as numba_config
from numba.extending import intrinsic

F = TypeVar("F", bound=Callable[..., Any])

PLAIN_PYTHON: bool = numba_config.DISABLE_JIT  # type: ignore[attr-defined]  # kernels as Python


def kernel(fn: F) -> F:
    """Compile ``fn`` in nopython mode, cached on disk, releasing the GIL."""
    return cast(F, numba.njit(cache=True, nogil=True)(fn))


@kernel
def _unsigned(i: int) -> int:  # pragma: no cover - compiled
    return np.uint64(i)  # type: ignore[return-value]


def _same(i: int) -> int:
    return i


# Hot indices go through ``at``. Compiled, unsigned indices spare numba's negative-index fix-up
# on every load, which also keeps LLVM from merging a field's byte loads into one. As plain
# Python the cast would be all cost (a numpy scalar per index); such indices are never negative,
# so the int indexes the same element.
at = _same if PLAIN_PYTHON else _unsigned


def _prefetch_typing(typingctx: Any, arr: Any, i: Any) -> tuple[Any, Any]:
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(  # type: ignore[no-untyped-call]
            context, builder, sig.args[0], ary, [args[1]]
        )
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [ptr.type], fnty)
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return types.void(arr, i), codegen


def _prefetch_python(arr: Any, i: int) -> None:
    """A prefetch changes no result."""


#: ``prefetch(arr, i)`` starts loading the cache line of ``arr[i]``: LLVM's prefetch, which never
#: faults and never waits, so ``i`` may lie outside ``arr``.
prefetch: Any = _prefetch_python if PLAIN_PYTHON else intrinsic(_prefetch_typing)


def _trailing_zeros_typing(typingctx: Any, x: Any) -> tuple[Any, Any]:
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64, ir.IntType(1)])
        fn = builder.module.declare_intrinsic("llvm.cttz", [i64], fnty)
        return builder.call(fn, [args[0], ir.IntType(1)(1)])  # x == 0 is never asked

    return types.int64(types.uint64), codegen


def _trailing_zeros_python(x: Any) -> int:
    v = int(x)
    return (v & -v).bit_length() - 1


#: ``trailing_zeros(x)``: the index of the lowest set bit of a non-zero uint64 (one instruction).
trailing_zeros: Any = _trailing_zeros_python if PLAIN_PYTHON else intrinsic(_trailing_zeros_typing)
