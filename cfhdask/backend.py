"""Array backends: kernels are written once for NumPy and CuPy.

Kernels call :func:`array_module` on their inputs and use the returned module
(``numpy`` or ``cupy``) for every array operation, so the same code runs on
the CPU and, when CuPy is installed and the data live on a GPU, on the GPU.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

try:  # pragma: no cover - exercised only where CuPy is installed
    import cupy as _cupy
except Exception:  # ImportError, or a CUDA runtime error at import
    _cupy = None


def cupy_available() -> bool:
    """Whether CuPy imports and sees at least one GPU."""
    if _cupy is None:
        return False
    try:  # pragma: no cover
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # pragma: no cover
        return False


def array_module(*arrays: Any) -> ModuleType:
    """``cupy`` if any argument is a CuPy array, else ``numpy``."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def aligned(a: Any, dtype: Any = None) -> Any:
    """``a`` (as ``dtype``) starting on a multiple of its item size; a copy only where not.

    An array a worker receives from another (a task's result, a scattered
    input) may start at any byte of the message it came in.  OpenBLAS takes
    another path for a small GEMM of such inputs and rounds otherwise, so the
    same product would change in its last bits with where its inputs were
    computed.  The GEMM kernels that may get such arrays (the block products,
    the low-rank products, the permutation GLM) take their operands through this.
    """
    xp = array_module(a)
    if xp is not np:  # pragma: no cover - CuPy allocations are always aligned
        return xp.asarray(a, dtype=dtype)
    return np.require(a, dtype=dtype, requirements="A")


def to_numpy(a: Any) -> np.ndarray:
    """Move an array to host memory as a NumPy array."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def to_backend(a: Any, backend: str = "numpy") -> Any:
    """Put an array on ``backend`` ("numpy" or "cupy")."""
    if backend == "numpy":
        return to_numpy(a)
    if backend == "cupy":
        if not cupy_available():
            from cfhdask.errors import CfhdaskInputError

            raise CfhdaskInputError("backend 'cupy' requested but CuPy/GPU is not available")
        return _cupy.asarray(a)
    from cfhdask.errors import CfhdaskInputError

    raise CfhdaskInputError(f"unknown backend {backend!r} (numpy or cupy)")
