"""GEMM kernels give the same bits whatever byte their inputs start at.

A worker receives other tasks' results inside a message, at any byte offset.
OpenBLAS rounds a small GEMM of such unaligned inputs otherwise than of
aligned ones, so without :func:`cfhdask.backend.aligned` the group sum of a
cohort changed in its last bits with where its series blocks were computed.
"""

from __future__ import annotations

import numpy as np
import pytest

from cfhdask.backend import aligned
from cfhdask.cfh.kernels import GemmProduct, dense_product

OFFSETS = (0, 1, 3, 19, 35)


def at_offset(x: np.ndarray, offset: int) -> np.ndarray:
    """A copy of ``x`` that starts ``offset`` bytes past a 64-byte boundary."""
    buf = np.zeros(x.nbytes + 128, dtype=np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    buf[start:start + x.nbytes] = np.ascontiguousarray(x).view(np.uint8).ravel()
    return np.frombuffer(buf[start:start + x.nbytes].data, dtype=x.dtype).reshape(x.shape)


def test_at_offset_is_unaligned_and_aligned_copies_only_then():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = at_offset(x, 3)
    assert not y.flags.aligned and y.ctypes.data % 64 == 3
    z = aligned(y)
    assert z.flags.aligned and np.array_equal(z, x)
    ok = at_offset(x, 4)
    assert aligned(ok) is ok  # no copy of an aligned array
    assert aligned(ok, np.float64).dtype == np.float64


@pytest.mark.parametrize("shape", [(9, 11, 50), (16, 7, 31), (130, 90, 44)])
def test_products_do_not_depend_on_where_inputs_start(rng, shape):
    m, n, t = shape
    a = rng.standard_normal((m, t)).astype(np.float32)
    b = rng.standard_normal((n, t)).astype(np.float32)
    ref = dense_product(a, b)
    strip = np.empty((m, n), dtype=np.float32)
    GemmProduct(a, b).strip(0, m, strip)
    assert np.array_equal(strip, ref)
    for oa in OFFSETS:
        for ob in OFFSETS:
            ua, ub = at_offset(a, oa), at_offset(b, ob)
            assert np.array_equal(dense_product(ua, ub), ref), (oa, ob)
            out = np.empty((m, n), dtype=np.float32)
            assert np.array_equal(GemmProduct(ua, ub).strip(0, m, out), ref), (oa, ob)
