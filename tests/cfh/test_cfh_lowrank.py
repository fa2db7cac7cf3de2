"""Exact low-rank CFH kernel against a brute-force float64 NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from cfhref import assert_matches, bandpassed_pairs, reference_cfh

from cfhdask.cfh import lowrank as lr
from cfhdask.cfh.kernels import standardize

T = 200
TR = 2.0


def _bandpassed(rng, n_left: int, n_right: int):
    return bandpassed_pairs(rng, n_left, n_right, T, TR)


def _check(left, right, res):
    lmax, larg, rmax, rarg, c = reference_cfh(left, right)
    row_max = np.where(res.row_arg < 0, np.nan, res.row_max)
    col_max = np.where(res.col_arg < 0, np.nan, res.col_max)
    assert_matches(row_max, res.row_arg, lmax, larg, c)
    assert_matches(col_max, res.col_arg, rmax, rarg, c.T)
    return c


@pytest.fixture(scope="module")
def bandpassed():
    rng = np.random.default_rng(11)
    left, right = _bandpassed(rng, 700, 533)
    left[[3, 650]] = 5.0  # constant voxels, both hemispheres
    right[[0, 532]] = -2.0
    return left.astype(np.float32), right.astype(np.float32)


def test_band_passed_data_choose_low_rank_and_match_reference(bandpassed):
    left, right = bandpassed
    zl, lv = standardize(left)
    zr, rv = standardize(right)
    res, info = lr.lowrank_maxcorr(zl, zr, lv, rv, block=256)  # 256 divides neither count
    assert info["strategy"] == "lowrank"
    assert lr.RANK_STEP <= info["rank"] <= lr.MAX_RANK_FRACTION * T
    assert info["full_rank_blocks"] == 0
    assert 0 < info["n_candidates"] < 4 * (700 + 533)
    _check(left, right, res)
    assert list(np.flatnonzero(res.row_arg < 0)) == [3, 650]
    assert list(np.flatnonzero(res.col_arg < 0)) == [0, 532]
    # the same maxima as the full-rank path
    full, finfo = lr.lowrank_maxcorr(zl, zr, lv, rv, mode="off", block=256)
    assert finfo["strategy"] == "full"
    ok = res.row_arg >= 0
    np.testing.assert_allclose(res.row_max[ok], full.row_max[ok], atol=2e-6)


def test_unfiltered_data_fall_back_to_full_rank(rng):
    left = rng.standard_normal((300, T)).astype(np.float32)
    right = rng.standard_normal((257, T)).astype(np.float32)
    zl, lv = standardize(left)
    zr, rv = standardize(right)
    plan = lr.plan_subject(zl, zr, lv, rv)
    assert plan.strategy == "full" and plan.basis is None
    assert "exceeds" in plan.reason
    res, info = lr.lowrank_maxcorr(zl, zr, lv, rv, block=100)
    assert info["strategy"] == "full" and info["n_candidates"] == 0
    _check(left, right, res)


def test_pilot_falls_back_when_the_bound_prunes_badly(bandpassed):
    left, right = bandpassed
    zl, lv = standardize(left)
    zr, rv = standardize(right)
    # a huge residual tolerance gives a tiny rank: loose bounds, many candidates per row
    plan = lr.plan_subject(zl, zr, lv, rv, tol=0.9, max_candidates_per_row=2.0)
    assert plan.strategy == "full"
    assert plan.pilot_candidates > 2.0 and "candidates per row" in plan.reason


def test_candidate_overflow_computes_the_block_full_rank(bandpassed):
    left, right = bandpassed
    zl, lv = standardize(left)
    zr, rv = standardize(right)
    _, vectors = lr.temporal_basis(lr.gram(zl, zr))
    fl, fr = lr.project(zl, vectors, 48), lr.project(zr, vectors, 48)
    out = lr.lowrank_block_maxcorr(zl, zr, fl, fr, lv, rv, max_candidates=10)
    assert out.full_rank
    _check(left, right, out.block)


@pytest.mark.parametrize("rank,strip,group", [(8, 256, 16), (40, 7, 3), (96, 64, 1)])
def test_block_kernel_exact_at_any_rank_and_tiling(bandpassed, rank, strip, group):
    """A poor basis (small rank) only costs candidates: the result stays exact."""
    left, right = bandpassed
    zl, lv = standardize(left)
    zr, rv = standardize(right)
    _, vectors = lr.temporal_basis(lr.gram(zl, zr))
    fl, fr = lr.project(zl, vectors, rank), lr.project(zr, vectors, rank)
    out = lr.lowrank_block_maxcorr(zl, zr, fl, fr, lv, rv, a_offset=10, b_offset=1000,
                                   strip_rows=strip, group_rows=group, max_candidates=10**6)
    assert not out.full_rank
    b = out.block
    shifted = b._replace(row_arg=np.where(b.row_arg < 0, -1, b.row_arg - 1000),
                         col_arg=np.where(b.col_arg < 0, -1, b.col_arg - 10))
    _check(left, right, shifted)


def test_ties_go_to_the_smaller_index(rng):
    left, right = _bandpassed(rng, 120, 80)
    right[50] = right[10]  # exact duplicates: tied correlations for every left voxel
    left[70] = left[5]
    zl, lv = standardize(left.astype(np.float32))
    zr, rv = standardize(right.astype(np.float32))
    _, vectors = lr.temporal_basis(lr.gram(zl, zr))
    fl, fr = lr.project(zl, vectors, 64), lr.project(zr, vectors, 64)
    b = lr.lowrank_block_maxcorr(zl, zr, fl, fr, lv, rv, strip_rows=16).block
    assert 50 not in set(b.row_arg.tolist()) and 70 not in set(b.col_arg.tolist())
    c = zl.astype(np.float64) @ zr.astype(np.float64).T
    np.testing.assert_array_equal(b.row_arg, c.argmax(axis=1))
    np.testing.assert_array_equal(b.col_arg, c.argmax(axis=0))


def test_bound_holds_for_every_pair(bandpassed):
    left, right = bandpassed
    zl, _ = standardize(left)
    zr, _ = standardize(right)
    _, vectors = lr.temporal_basis(lr.gram(zl, zr))
    for rank in (8, 64):
        fl, fr = lr.project(zl, vectors, rank), lr.project(zr, vectors, rank)
        exact = zl.astype(np.float64) @ zr.astype(np.float64).T
        low = fl.coef @ fr.coef.T  # float32, as the kernel
        half_slack = lr.bound_slack(rank, fl.coef, fr.coef) / 2
        gap = np.abs(exact - low) - np.outer(fl.resid, fr.resid).astype(np.float64)
        assert gap.max() <= half_slack
        # residual norms are upper bounds of the true ones
        true = np.linalg.norm(zl - (zl.astype(np.float64) @ vectors[:, :rank])
                              @ vectors[:, :rank].T, axis=1)
        assert np.all(fl.resid >= true)
        assert np.all(fl.resid <= true + 1e-5)


def test_choose_rank_rounds_up_and_caps():
    counts = np.array([100, 50, 20, 9, 3, 1, 0, 0, 0, 0, 0])  # T = 10
    assert lr.choose_rank(counts, 1000, quantile=0.99, step=4) == 4  # 9 <= 10 at k=3
    assert lr.choose_rank(counts, 1000, quantile=0.999, step=4) == 8  # 1 <= 1 at k=5
    assert lr.choose_rank(counts, 1000, quantile=1.0, step=4) == 8
    assert lr.choose_rank(counts, 1000, quantile=1.0, step=16) == 10


def test_residual_counts_add_up_over_chunks(bandpassed):
    left, _ = bandpassed
    zl, _ = standardize(left)
    _, vectors = lr.temporal_basis(lr.gram(zl))
    whole = lr.residual_exceed_counts(zl, vectors, 0.05)
    parts = lr.residual_exceed_counts(zl[:300], vectors, 0.05) + lr.residual_exceed_counts(
        zl[300:], vectors, 0.05)
    np.testing.assert_array_equal(whole, parts)
    assert whole[0] == 698 and whole[-1] == 0  # constants have no residual
    assert np.all(np.diff(whole) <= 0)


def test_bad_arguments(bandpassed):
    zl, _ = standardize(bandpassed[0])
    with pytest.raises(ValueError, match="lowrank mode"):
        lr.lowrank_maxcorr(zl, zl, mode="on")
    with pytest.raises(ValueError, match="basis"):
        lr.project(zl, np.eye(T)[:, :5], 8)


def test_float32_gram_is_close_and_its_basis_orthonormal(bandpassed):
    zl, _ = standardize(bandpassed[0])
    g64, g32 = lr.gram(zl), lr.gram(zl, dtype=np.float32)
    assert g32.dtype == np.float64
    np.testing.assert_allclose(g32, g64, atol=1e-4 * np.abs(g64).max())
    _, v = lr.temporal_basis(g32)
    np.testing.assert_allclose(v.T @ v, np.eye(T), atol=1e-12)
