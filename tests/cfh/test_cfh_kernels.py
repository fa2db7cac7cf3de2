"""Kernels of CFH against a brute-force float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from cfhref import assert_matches, reference_cfh

from cfhdask.cfh.kernels import (
    R_CLIP,
    block_maxcorr,
    combine_many,
    combine_max,
    fisher_z,
    standardize,
)


def test_standardize_gives_unit_norm_and_flags_constants(rng):
    x = rng.standard_normal((20, 37)) * 3 + 100
    x[4] = 7.0
    x[9] = 0.0
    x[11] = 1e4 + 1e-6 * rng.standard_normal(37)  # below float precision: constant
    z, valid = standardize(x.astype(np.float32))
    assert z.dtype == np.float32 and valid.dtype == bool
    assert list(np.flatnonzero(~valid)) == [4, 9, 11]
    np.testing.assert_array_equal(z[~valid], 0)
    np.testing.assert_allclose(np.linalg.norm(z[valid], axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(z[valid].sum(axis=1), 0, atol=1e-6)
    # dot products are Pearson correlations
    ref = np.corrcoef(x[valid])
    np.testing.assert_allclose(z[valid] @ z[valid].T, ref, atol=2e-6)


def test_standardize_other_axis(rng):
    x = rng.standard_normal((30, 6))
    z, valid = standardize(x, axis=0)
    z2, valid2 = standardize(x.T)
    np.testing.assert_array_equal(z, z2.T)
    np.testing.assert_array_equal(valid, valid2)


@pytest.mark.parametrize("strip,group", [(1024, 32), (8, 4), (5, 3), (7, 7), (64, 1)])
def test_block_maxcorr_matches_reference(rng, strip, group):
    a_raw = rng.standard_normal((45, 25))
    b_raw = rng.standard_normal((33, 25))
    a_raw[[2, 40]] = 3.0  # constant rows
    b_raw[[0, 32]] = -1.0
    a, av = standardize(a_raw)
    b, bv = standardize(b_raw)
    res = block_maxcorr(a, b, av, bv, a_offset=100, b_offset=1000,
                        strip_rows=strip, group_rows=group)
    lmax, larg, rmax, rarg, c = reference_cfh(a_raw, b_raw)
    row_max = np.where(res.row_arg < 0, np.nan, res.row_max)
    col_max = np.where(res.col_arg < 0, np.nan, res.col_max)
    assert_matches(row_max, np.where(res.row_arg < 0, -1, res.row_arg - 1000), lmax, larg, c)
    assert_matches(col_max, np.where(res.col_arg < 0, -1, res.col_arg - 100), rmax, rarg, c.T)
    assert res.row_arg.dtype == np.int64 and res.row_max.dtype == np.float32


def test_block_maxcorr_exact_equal_to_gemm_argmax(rng):
    a = rng.standard_normal((300, 40)).astype(np.float32)
    b = rng.standard_normal((200, 40)).astype(np.float32)
    c = a @ b.T
    res = block_maxcorr(a, b, strip_rows=64, group_rows=16)
    # A strip GEMM may round differently from the whole product (BLAS tiling), so
    # values agree to float32 precision and the arguments exactly away from near ties.
    rows, cols = np.arange(300), np.arange(200)
    np.testing.assert_allclose(res.row_max, c.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(res.col_max, c.max(axis=0), rtol=1e-6)
    np.testing.assert_allclose(c[rows, res.row_arg], c.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(c[res.col_arg, cols], c.max(axis=0), rtol=1e-6)
    srt = np.sort(c, axis=1)
    clear = srt[:, -1] - srt[:, -2] > 1e-4 * np.abs(srt[:, -1])
    np.testing.assert_array_equal(res.row_arg[clear], c.argmax(axis=1)[clear])


def test_block_maxcorr_ties_go_to_smaller_index():
    a = np.zeros((4, 3), np.float32)
    a[:, 0] = 1
    b = np.zeros((5, 3), np.float32)
    b[:, 0] = 1  # every correlation is 1
    res = block_maxcorr(a, b, a_offset=10, b_offset=20, strip_rows=2, group_rows=1)
    np.testing.assert_array_equal(res.row_arg, 20)
    np.testing.assert_array_equal(res.col_arg, 10)


def test_block_maxcorr_all_invalid_side(rng):
    a, _ = standardize(rng.standard_normal((6, 9)))
    b, _ = standardize(rng.standard_normal((4, 9)))
    res = block_maxcorr(a, b, None, np.zeros(4, bool))
    assert (res.row_arg == -1).all() and np.isneginf(res.row_max).all()
    assert (res.col_arg == -1).all()


def test_combine_max_is_order_independent(rng):
    parts = []
    for off in (0, 10, 20, 30):
        m = rng.integers(0, 3, 50).astype(np.float32)  # many exact ties
        i = rng.integers(0, 10, 50) + off
        i[rng.random(50) < 0.1] = -1
        m[i < 0] = -np.inf
        parts.append((m, i))
    m_ref, i_ref = combine_many(parts)
    for perm in ([3, 2, 1, 0], [1, 3, 0, 2]):
        m, i = combine_many([parts[p] for p in perm])
        np.testing.assert_array_equal(m, m_ref)
        np.testing.assert_array_equal(i, i_ref)
    allm = np.stack([p[0] for p in parts])
    alli = np.stack([np.where(p[1] < 0, 10**9, p[1]) for p in parts])
    best = allm.max(axis=0)
    expect = np.where(alli == np.where(allm == best, alli, 10**9).min(axis=0), alli, 0).max(0)
    ok = np.isfinite(best)
    np.testing.assert_array_equal(m_ref, best)
    np.testing.assert_array_equal(i_ref[ok], expect[ok])
    m2, i2 = combine_max(np.float32([1, -np.inf]), np.array([5, -1]),
                         np.float32([1, -np.inf]), np.array([3, -1]))
    assert list(i2) == [3, -1]


def test_fisher_z():
    r = np.array([0.0, 0.5, -0.5, 1.0, -1.0, np.nan])
    z = fisher_z(r)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z[:3], np.arctanh(r[:3]), rtol=1e-6)
    assert np.isfinite(z[3:5]).all() and z[3] == pytest.approx(np.arctanh(R_CLIP), rel=1e-5)
    assert np.isnan(z[5])
