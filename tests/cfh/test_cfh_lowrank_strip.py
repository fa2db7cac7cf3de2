"""The low-rank kernel's compiled strip pass and candidate buffer against NumPy references."""

from __future__ import annotations

import platform
import re

import numba
import numpy as np
import pytest
from cfhref import assert_matches, bandpassed_pairs, reference_cfh

from cfhdask.cfh import lowrank as lr
from cfhdask.cfh.kernels import standardize


def _strip_inputs(rng, m, nb):
    """A strip with ties and values exactly on the thresholds; dyadic bound terms.

    ``e``, ``f`` and ``2 max(f)`` are small dyadic numbers, so every product of the
    bound arithmetic is exact in float32: a fused multiply-add gives the same bits
    as NumPy's separate operations, and the reference below is exact.
    """
    c = rng.standard_normal((m, nb)).astype(np.float32)
    c[:, nb // 3] = c[:, 0]                      # ties along every row
    c[1, :] = 0.5                                # a constant row: every column its maximum
    e = (rng.integers(0, 64, m) / 1024).astype(np.float32)
    f = (rng.integers(0, 64, nb) / 1024).astype(np.float32)
    two_fmax = np.float32(2 * f.max())
    slack2 = np.float32(2.0**-10)
    t = c.max(axis=1) - two_fmax * e - slack2
    c[2, 5] = t[2]                               # exactly on the row threshold: a candidate
    return c, e, f, two_fmax, slack2


def _reference(strips, e, f, two_fmax, slack2, group):
    """NumPy: row thresholds, candidates, group column maxima, largest e, column bounds."""
    cand, gmax, ge = [], [], []
    col_lo = np.full(f.size, -np.inf, dtype=np.float32)
    row0 = 0
    for c in strips:
        t = c.max(axis=1) - two_fmax * e[row0:row0 + c.shape[0]] - slack2
        ii, jj = np.nonzero(c >= t[:, None])
        cand += list(zip((ii + row0).tolist(), jj.tolist(), strict=True))
        for g0 in range(0, c.shape[0], group):
            gm = c[g0:g0 + group].max(axis=0)
            emax = e[row0 + g0:row0 + g0 + group].max()
            gmax.append(gm)
            ge.append(emax)
            col_lo = np.maximum(col_lo, gm - emax * f)
        row0 += c.shape[0]
    return cand, np.array(gmax), np.array(ge, dtype=np.float32), col_lo


def _run_pass(strips, e, f, two_fmax, slack2, group, cap):
    m = sum(c.shape[0] for c in strips)
    nb = f.size
    n_groups = sum(-(-c.shape[0] // group) for c in strips)
    gmax = np.full((n_groups, nb), np.nan, dtype=np.float32)
    ge = np.full(n_groups, np.nan, dtype=np.float32)
    col_lo = np.full(nb, -np.inf, dtype=np.float32)
    ci = np.full(cap, -7, dtype=np.int64)
    cj = np.full(cap, -7, dtype=np.int64)
    n = row0 = g0 = 0
    for c in strips:
        g1 = g0 + -(-c.shape[0] // group)
        n = lr._strip_pass(c, e[row0:row0 + c.shape[0]], f, two_fmax, slack2, group, row0,
                           gmax[g0:g1], ge[g0:g1], col_lo, ci, cj, n)
        row0, g0 = row0 + c.shape[0], g1
    assert row0 == m
    return n, ci, cj, gmax, ge, col_lo


@pytest.mark.parametrize("m,nb,group,split", [(48, 4096, 16, (16, 32)), (37, 4133, 5, (20, 17)),
                                              (9, 40, 3, (9,)), (64, 129, 16, (64,))])
def test_strip_pass_matches_numpy(rng, m, nb, group, split):
    c, e, f, two_fmax, slack2 = _strip_inputs(rng, m, nb)
    strips, r = [], 0
    for rows in split:
        strips.append(np.ascontiguousarray(c[r:r + rows]))
        r += rows
    cand, gmax, ge, col_lo = _reference(strips, e, f, two_fmax, slack2, group)
    n, ci, cj, gm, g_e, lo = _run_pass(strips, e, f, two_fmax, slack2, group, 10**5)
    assert n == len(cand)
    assert list(zip(ci[:n].tolist(), cj[:n].tolist(), strict=True)) == cand  # row-major order
    assert (2, 5) in cand and sum(1 for i, _ in cand if i == 1) == nb
    np.testing.assert_array_equal(gm, gmax)
    np.testing.assert_array_equal(g_e, ge)
    np.testing.assert_array_equal(lo, col_lo)


def test_strip_pass_counts_past_a_full_buffer(rng):
    c, e, f, two_fmax, slack2 = _strip_inputs(rng, 32, 300)
    cand = _reference([c], e, f, two_fmax, slack2, 8)[0]
    assert len(cand) > 310
    n, ci, cj, *_ = _run_pass([c], e, f, two_fmax, slack2, 8, 10)
    assert n == len(cand)  # counted, only the first 10 stored
    assert list(zip(ci.tolist(), cj.tolist(), strict=True)) == cand[:10]


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="x86 assembly")
def test_strip_pass_maxima_are_packed():
    """The maxima compile to packed max instructions (``vmaxps``/``maxps``), not scalar."""
    fn = numba.njit(fastmath=lr._FASTMATH)(lr._strip_pass.py_func)  # fresh: asm of a compile
    a1, a2 = numba.float32[:, ::1], numba.float32[::1]
    i64, f32 = numba.int64, numba.float32
    sig = (a1, a2, a2, f32, f32, i64, i64, a1, a2, a2, numba.int64[::1], numba.int64[::1], i64)
    fn.compile(sig)
    asm = fn.inspect_asm(fn.signatures[0])
    assert re.search(r"\bv?maxps\b", asm)


@pytest.fixture(scope="module")
def factors():
    rng = np.random.default_rng(5)
    left, right = bandpassed_pairs(rng, 300, 260, 200, 2.0)
    zl, lv = standardize(left.astype(np.float32))
    zr, rv = standardize(right.astype(np.float32))
    _, vectors = lr.temporal_basis(lr.gram(zl, zr))
    rank = 56  # a poor basis: many candidates per row (below the default limit)
    return left, right, zl, zr, lv, rv, lr.project(zl, vectors, rank), \
        lr.project(zr, vectors, rank)


def test_candidate_buffer_grows_instead_of_full_rank(factors):
    left, right, zl, zr, lv, rv, fl, fr = factors
    ref = lr.lowrank_block_maxcorr(zl, zr, fl, fr, lv, rv, strip_rows=32, group_rows=4,
                                   max_candidates=10**7, initial_capacity=10**7)
    assert not ref.full_rank and ref.n_candidates > 300
    grown = lr.lowrank_block_maxcorr(zl, zr, fl, fr, lv, rv, strip_rows=32, group_rows=4,
                                     max_candidates=10**7, initial_capacity=3)
    assert not grown.full_rank and grown.n_candidates == ref.n_candidates
    for x, y in zip(grown.block, ref.block, strict=True):
        np.testing.assert_array_equal(x, y)
    lmax, larg, rmax, rarg, c = reference_cfh(left, right)
    assert_matches(grown.block.row_max, grown.block.row_arg, lmax, larg, c)
    assert_matches(grown.block.col_max, grown.block.col_arg, rmax, rarg, c.T)


def test_candidates_past_the_limit_compute_the_block_full_rank(factors):
    left, right, zl, zr, lv, rv, fl, fr = factors
    out = lr.lowrank_block_maxcorr(zl, zr, fl, fr, lv, rv, max_candidates=50,
                                   initial_capacity=4)
    assert out.full_rank and out.n_candidates > 50
    lmax, larg, rmax, rarg, c = reference_cfh(left, right)
    assert_matches(out.block.row_max, out.block.row_arg, lmax, larg, c)
    # the default limit: CANDIDATES_PER_ROW_LIMIT per row, far above these candidates
    default = lr.lowrank_block_maxcorr(zl, zr, fl, fr, lv, rv, initial_capacity=4)
    assert not default.full_rank
    assert default.n_candidates <= lr.CANDIDATES_PER_ROW_LIMIT * zl.shape[0]


def test_stage_times_fill_only_while_active(factors):
    *_, zl, zr, lv, rv, fl, fr = factors
    with lr.stage_times() as stages:
        lr.lowrank_block_maxcorr(zl, zr, fl, fr, lv, rv)
    assert {"gemm", "strip", "exact", "block"} <= set(stages)
    assert all(v >= 0 for v in stages.values())
    before = dict(stages)
    lr.lowrank_block_maxcorr(zl, zr, fl, fr, lv, rv)
    assert stages == before and lr._STAGES is None


def test_bound_slack_covers_the_float64_norms(rng):
    """The float32 norms of the slack are rounded up: never below the float64 formula."""
    for k in (1, 8, 80, 200):
        ca = (rng.standard_normal((300, k)) * rng.random((300, 1)) * 3).astype(np.float32)
        cb = rng.standard_normal((70, k)).astype(np.float32)
        na = np.sqrt((ca.astype(np.float64) ** 2).sum(axis=1)).max()
        nb = np.sqrt((cb.astype(np.float64) ** 2).sum(axis=1)).max()
        m = (k + 2) * 2.0**-24
        exact = 2.0 * m / (1.0 - m) * na * nb + 16.0 * 2.0**-24 * 2.0
        assert exact <= lr.bound_slack(k, ca, cb) <= exact * (1 + 1e-4)
    assert lr.bound_slack(8, ca[:0, :8], cb[:, :8]) == 16.0 * 2.0**-24 * 2.0
