"""The rank ladder of the low-rank kernel: a pilot that prunes badly climbs to a higher rank."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from cfhref import assert_matches, bandpassed_pairs, reference_cfh

from cfhdask.cfh import lowrank as lr
from cfhdask.cfh.graph import standardize_graph
from cfhdask.cfh.kernels import standardize
from cfhdask.cfh.lowrank_graph import cfh_kernel_graph

T = 200
#: A first rung so loose (tiny rank) that its pilot keeps many candidates per row,
#: then the default tightest tolerance.
CLIMB = (0.9, lr.RESIDUAL_TOL)
MAX_PER_ROW = 2.0


@pytest.fixture(scope="module")
def subject():
    rng = np.random.default_rng(19)
    left, right = bandpassed_pairs(rng, 389, 301, T, 2.0)
    left[[7]] = 3.0  # a constant voxel
    left, right = left.astype(np.float32), right.astype(np.float32)
    zl, lv = standardize(left)
    zr, rv = standardize(right)
    return left, right, zl, zr, lv, rv


def _check(left, right, row_max, row_arg, col_max, col_arg):
    lmax, larg, rmax, rarg, c = reference_cfh(left, right)
    assert_matches(np.where(row_arg < 0, np.nan, row_max), row_arg, lmax, larg, c)
    assert_matches(np.where(col_arg < 0, np.nan, col_max), col_arg, rmax, rarg, c.T)


def _rank(zl, zr, lv, rv, tol):
    """The rank one tolerance gives alone (as plan_rank counts it)."""
    plan = lr.plan_subject(zl, zr, lv, rv, tol=tol, max_candidates_per_row=np.inf)
    return plan.rank


def test_a_rung_that_prunes_badly_climbs_to_a_higher_rank(subject):
    left, right, zl, zr, lv, rv = subject
    low, high = _rank(zl, zr, lv, rv, CLIMB[0]), _rank(zl, zr, lv, rv, CLIMB[1])
    assert low < high
    plan = lr.plan_subject(zl, zr, lv, rv, tol=CLIMB, max_candidates_per_row=MAX_PER_ROW)
    assert plan.strategy == "lowrank" and plan.rank == high
    assert plan.ranks == (low, high)
    (k0, p0), (k1, p1) = plan.pilots
    assert (k0, k1) == (low, high) and p0 > MAX_PER_ROW >= p1 == plan.pilot_candidates
    # the log line names the rank taken, its candidates and the rung it climbed from
    assert plan.reason.startswith(f"rank {high} of T={T}")
    assert f"rank {low}: {p0:.1f} candidates per row > 2" in plan.reason
    assert f"{p1:.2f} candidates per pilot row" in plan.reason
    # and the kernel at that rank is exact
    res, info = lr.lowrank_maxcorr(zl, zr, lv, rv, block=128, tol=CLIMB,
                                   max_candidates_per_row=MAX_PER_ROW)
    assert info["strategy"] == "lowrank" and info["rank"] == high
    assert info["pilots"] == [[low, p0], [high, p1]] and info["n_candidates"] > 0
    assert info["full_rank_blocks"] == 0
    _check(left, right, *res)


def test_a_ladder_that_never_prunes_ends_at_full_rank(subject):
    left, right, zl, zr, lv, rv = subject
    plan = lr.plan_subject(zl, zr, lv, rv, tol=(0.95, 0.9), max_candidates_per_row=MAX_PER_ROW)
    assert plan.strategy == "full" and plan.basis is None
    assert len(plan.pilots) == len(plan.ranks) >= 1
    assert all(p > MAX_PER_ROW for _, p in plan.pilots)
    assert "candidates per row (> 2)" in plan.reason
    for k, p in plan.pilots:
        assert f"{k}: {p:.1f}" in plan.reason
    res, info = lr.lowrank_maxcorr(zl, zr, lv, rv, block=128, tol=(0.95, 0.9),
                                   max_candidates_per_row=MAX_PER_ROW)
    assert info["strategy"] == "full" and info["n_candidates"] == 0
    _check(left, right, *res)


def test_the_engine_climbs_the_ladder_too(subject):
    left, right, *_ = subject
    zl, vl = standardize_graph(left, block=100)
    zr, vr = standardize_graph(right, block=100)
    opts = {"tol": CLIMB, "max_candidates_per_row": MAX_PER_ROW}
    out = cfh_kernel_graph(zl, zr, vl, vr, kernel="auto", block=100, split_every=2,
                           plan_options=opts)
    res = dask.compute(out, scheduler="sync")[0]
    info = res["kernel"][0]
    z = standardize(left)[0], standardize(right)[0]
    high = _rank(*z, None, None, CLIMB[1])
    assert info["kernel_used"] == "lowrank" and info["rank"] == high
    assert len(info["pilots"]) == 2 and info["pilots"][0][1] > MAX_PER_ROW
    assert info["pilots"][1][0] == high and info["full_rank_blocks"] == 0
    _check(left, right, res["left_rmax"], res["left_arg"], res["right_rmax"],
           res["right_arg"])
    # the forced kernel takes the top rung, with no pilot
    forced = dask.compute(cfh_kernel_graph(zl, zr, vl, vr, kernel="lowrank", block=100,
                                           plan_options=opts), scheduler="sync")[0]
    finfo = forced["kernel"][0]
    assert finfo["rank"] == high and finfo["pilots"] == []
    assert finfo["reason"].startswith(f"rank {high} of T={T}")
    _check(left, right, forced["left_rmax"], forced["left_arg"], forced["right_rmax"],
           forced["right_arg"])


def test_plan_ladder_takes_the_first_rung_that_prunes():
    vectors = np.eye(12)
    plan = lr.SubjectPlan("lowrank", 4, vectors, float("nan"), "rank 4 of T=12", (4, 8, 12))
    pilots = {4: 9.0, 8: 3.0, 12: 1.0}
    out = lr.plan_ladder(plan, pilots.__getitem__, max_candidates_per_row=4.0)
    assert (out.strategy, out.rank, out.pilots) == ("lowrank", 8, ((4, 9.0), (8, 3.0)))
    assert out.reason == ("rank 8 of T=12 (rank 4: 9.0 candidates per row > 4), "
                          "3.00 candidates per pilot row")
    none = lr.plan_ladder(plan, lambda k: 10.0, max_candidates_per_row=4.0)
    assert none.strategy == "full" and none.rank == 12 and len(none.pilots) == 3
    # a single rung (plan_pilot) as before
    one = lr.plan_pilot(plan, 2.5, max_candidates_per_row=4.0)
    assert one.rank == 4 and one.pilot_candidates == 2.5 and one.pilots == ((4, 2.5),)


def test_plan_rank_gives_distinct_ascending_rungs_below_the_cap():
    t = 10
    loose = np.array([50, 20, 5, 0, 0, 0, 0, 0, 0, 0, 0])
    tight = np.array([90, 80, 70, 60, 50, 40, 30, 20, 11, 0, 0])
    counts = np.stack([loose, loose, tight])
    plan = lr.plan_rank(counts, 1000, np.eye(t), tol=(0.5, 0.4, 0.1), quantile=0.99,
                        max_rank_fraction=None)
    assert plan.strategy == "lowrank" and plan.ranks == (8, 10) and plan.rank == 8
    capped = lr.plan_rank(counts, 1000, np.eye(t), tol=(0.5, 0.4, 0.1), quantile=0.99,
                          max_rank_fraction=0.9)
    assert capped.ranks == (8,)
    full = lr.plan_rank(counts[2:], 1000, np.eye(t), tol=0.1, quantile=0.99,
                        max_rank_fraction=0.5)
    assert full.strategy == "full" and "exceeds" in full.reason
    with pytest.raises(ValueError, match="tolerance"):
        lr.plan_rank(counts, 1000, np.eye(t), tol=0.1)


def test_ladder_projection_equals_one_rank_projections(subject):
    _, _, zl, zr, *_ = subject
    _, vectors = lr.temporal_basis(lr.gram(zl, zr))
    ranks = (16, 40, 64)
    counts = lr.residual_exceed_counts(zl, vectors, (0.2, 0.05))
    np.testing.assert_array_equal(counts[1], lr.residual_exceed_counts(zl, vectors, 0.05))
    ladder = lr.project_ladder(zl, vectors, ranks)
    assert ladder.coef.shape == (zl.shape[0], 64) and ladder.resid.shape == (zl.shape[0], 3)
    for k in ranks:
        one, rung = lr.project(zl, vectors, k), lr.factors_at_rank(ladder, ranks, k)
        np.testing.assert_allclose(rung.coef, one.coef, rtol=0, atol=1e-6)
        np.testing.assert_allclose(rung.resid, one.resid, rtol=1e-6, atol=1e-7)
        true = np.linalg.norm(zl - (zl.astype(np.float64) @ vectors[:, :k])
                              @ vectors[:, :k].T, axis=1)
        assert np.all(rung.resid >= true)
