"""The exact low-rank group counterpart against the float64 brute force."""

from __future__ import annotations

import numpy as np
import pytest
from cfhref import (
    ArrayReader,
    assert_same_counterparts,
    bandpassed_pairs,
    check_group,
    cohort,
    ranges,
    reference_group,
)
from cfhstore import make_banded_store, make_store

from cfhdask.cfh import group_lowrank, lowrank_group
from cfhdask.cfh.compute import compute_cfh
from cfhdask.cfh.kernels import pair_correlations, standardize
from cfhdask.cfh.lowrank_group import (
    CandidateSet,
    bounded_candidates,
    combine_candidates,
    concat_candidates,
    group_slack,
    overflowed,
    project_batch,
    residual_bound,
    select_counterpart,
    subject_basis,
)
from cfhdask.errors import CfhdaskInputError
from cfhdask.inflight import release


def _banded_cohort(rng, nl, nr, lengths, unfiltered=()):
    """Band-passed subjects (low rank) of different lengths; ``unfiltered`` full rank."""
    series, subjects = [], []
    for k, t in enumerate(lengths):
        if k in unfiltered:
            x = cohort(rng, nl, nr, (t,))[0][0].astype(np.float64)
        else:
            left, right = bandpassed_pairs(rng, nl, nr, t, 2.0, n_pairs=10)
            x = np.vstack([left, right])
        series.append(x.astype(np.float32))
        subjects.append((series[-1][:nl], series[-1][nl:]))
    return series, subjects


def _low_rank_sum(series, nl, blocks=None):
    """S~, E, F and the slack of a cohort by plain NumPy (one batch per subject)."""
    coefs, e2 = [], []
    for x in series:
        z, ok = standardize(x)
        basis = subject_basis(z, ok)
        c, _, e = project_batch([x], [basis])
        coefs.append(c)
        e2.append(e)
    s = sum(c[:nl].astype(np.float64) @ c[nl:].T.astype(np.float64) for c in coefs)
    e = residual_bound(sum(e2))
    slack = group_slack([c.shape[1] for c in coefs], len(series))
    return s.astype(np.float32), e[:nl], e[nl:], slack, [c.shape[1] for c in coefs]


def test_candidates_hold_the_true_counterpart_and_do_not_depend_on_the_blocks(rng):
    nl, nr = 57, 43
    series, subjects = _banded_cohort(rng, nl, nr, (120, 100, 140))
    larg, rarg, summed, _, _ = reference_group(subjects)
    s, e, f, slack, ranks = _low_rank_sum(series, nl)
    assert all(k < 0.6 * t for k, t in zip(ranks, (120, 100, 140), strict=True))  # low rank
    rows, cols = bounded_candidates(s, e, f, slack)
    for cs, ref in ((rows, larg), (cols, rarg)):
        assert not overflowed(cs).any()
        assert all(ref[v] in cs.idx[v] for v in range(ref.size))
        assert 1.0 <= (cs.idx >= 0).sum() / ref.size < 2.0  # the bound prunes well
    # the same candidates from blocks that do not divide the voxels, combined in any order
    ra, rb = ranges(0, nl, 20), ranges(0, nr, 16)
    parts = {(i, j): bounded_candidates(s[a0:a1, b0:b1], e[a0:a1], f[b0:b1], slack,
                                        a_offset=a0, b_offset=b0)
             for i, (a0, a1) in enumerate(ra) for j, (b0, b1) in enumerate(rb)}
    row_sets = concat_candidates([combine_candidates([parts[(i, j)][0] for j in
                                                      range(len(rb))[::-1]])
                                  for i in range(len(ra))])
    col_sets = concat_candidates([combine_candidates([parts[(i, j)][1] for i in range(len(ra))])
                                  for j in range(len(rb))])
    for whole, pieced in ((rows, row_sets), (cols, col_sets)):
        np.testing.assert_array_equal(whole.lb, pieced.lb)
        assert [set(r[r >= 0]) for r in whole.idx] == [set(r[r >= 0]) for r in pieced.idx]


def test_candidates_overflow_ties_and_invalid_voxels():
    c = np.array([[1.0, 1.0, 1.0, 0.0], [0.5, 0.2, 0.5, 0.1]], dtype=np.float32)
    e, f = np.zeros(2, np.float32), np.zeros(4, np.float32)
    rows, cols = bounded_candidates(c, e, f, 0.0, b_valid=np.array([True, True, True, False]),
                                    keep=2)
    assert overflowed(rows).tolist() == [True, False]  # three tied partners, two kept
    assert rows.idx[0].tolist() == [0, 1] and rows.idx[1].tolist() == [0, 2]
    assert cols.lb[3] == -np.inf and (cols.idx[3] < 0).all()  # an invalid column
    summed, arg = select_counterpart(rows.idx, np.array([[2.0, 2.0], [0.1, 0.3]]))
    assert arg.tolist() == [0, 2] and summed.tolist() == pytest.approx([2.0, 0.3])
    summed, arg = select_counterpart(np.array([[-1, -1]]), np.zeros((1, 2)))
    assert arg.tolist() == [-1] and np.isnan(summed).all()
    # a candidate that fell out of a merge is forgotten once the bound passes it
    a = CandidateSet(np.float32([0.0]), np.array([[5, -1]]), np.float32([[1.0, -np.inf]]),
                     np.float32([0.5]))
    b = CandidateSet(np.float32([0.9]), np.array([[2, -1]]), np.float32([[0.95, -np.inf]]),
                     np.float32([-np.inf]))
    for m in (combine_candidates([a, b]), combine_candidates([b, a])):
        assert m.idx.tolist() == [[5, 2]] and m.lb.tolist() == [np.float32(0.9)]
        assert not overflowed(m).any()


def test_pair_correlations_match_corrcoef(rng):
    x = rng.standard_normal((9, 40)).astype(np.float32) + 20
    x[4] = 3.0
    u, w = np.array([0, 1, 4, 8, 2]), np.array([3, 1, 2, 4, 7])
    r, valid = pair_correlations(x, u, w)
    ref = [0.0 if 4 in (a, b) else
           np.corrcoef(x[a].astype(np.float64), x[b].astype(np.float64))[0, 1]
           for a, b in zip(u, w, strict=True)]
    np.testing.assert_allclose(r, ref, atol=1e-12)
    assert valid.tolist() == [v != 4 for v in range(9)]


def _lowrank(series, nl, nr, a_block, b_block, batch, client, kernel="lowrank", chain=2,
             per_task=1):
    from cfhdask.cfh.group import run_group_sum
    from cfhdask.cfh.groupsum import GroupPlan

    reader = ArrayReader(series)
    plan = GroupPlan.make(reader, len(series), ranges(0, nl, a_block),
                          ranges(nl, nl + nr, b_block), batch=batch, chain=chain, split_every=2)
    bases, ranks = group_lowrank.subject_bases(client, reader, len(series), nl + nr, "t",
                                               per_task)
    try:
        return group_lowrank.lowrank_group_sum(plan, client, bases, ranks, kernel=kernel,
                                               run_group_sum=run_group_sum)
    finally:
        client.cancel(bases.units)


def _check(res, subjects):
    return check_group(res, subjects, rtol=1e-6)  # the exact sum: float64, then float32


@pytest.mark.parametrize("nl,nr,a_block,b_block,batch", [
    (41, 35, 16, 10, 2),   # blocks that do not divide, unequal hemispheres
    (30, 30, 64, 64, 5),   # a single block, one batch
])
def test_lowrank_group_sum_matches_brute_force(rng, local_client, nl, nr, a_block, b_block,
                                               batch):
    # band-passed subjects of different lengths, one unfiltered (full rank), constant voxels
    series, subjects = _banded_cohort(rng, nl, nr, (110, 90, 130, 100, 120), unfiltered=(2,))
    series[1][3] = 7.0  # constant in one subject only: still a counterpart from the others
    series[0][nl] = series[1][nl] = series[2][nl] = series[3][nl] = series[4][nl] = -2.0
    subjects = [(x[:nl], x[nl:]) for x in series]
    res = _lowrank(series, nl, nr, a_block, b_block, batch, local_client)
    _check(res, subjects)
    assert res["right_arg"][0] == -1 and 0 not in res["left_arg"]  # right 0: never valid
    assert res["left_arg"][3] >= 0
    info = res["lowrank"]
    assert info["time_points"] < 0.75 * info["of"]
    assert info["overflowed"] == 0 and info["candidates_per_voxel"] < 2


def test_bases_shared_by_tasks_give_the_same_sum(rng, local_client):
    # small subjects share a basis task: fewer tasks, the same bases, the same sum bit for bit
    nl, nr = 21, 19
    series, subjects = _banded_cohort(rng, nl, nr, (100, 120, 90, 110, 105))
    reader = ArrayReader(series)
    one = _lowrank(series, nl, nr, 8, 8, 2, local_client)
    for per_task in (2, 3, 5):
        bases, ranks = group_lowrank.subject_bases(local_client, reader, 5, nl + nr, "u",
                                                   per_task)
        try:
            assert len(bases.units) == -(-5 // per_task)
            assert [len(u) for u in local_client.gather(bases.units)][0] == per_task
            assert bases.where[3] == (3 // per_task, 3 % per_task)
            units, picks = bases.of([1, 3, 4])
            assert [units[u] for u, _ in picks] == [bases.units[bases.where[s][0]]
                                                     for s in (1, 3, 4)]
        finally:
            local_client.cancel(bases.units)
        res = _lowrank(series, nl, nr, 8, 8, 2, local_client, per_task=per_task)
        for k in ("left_arg", "right_arg", "left_sum", "right_sum"):
            np.testing.assert_array_equal(res[k], one[k], err_msg=f"{k}, {per_task} a task")
        assert res["lowrank"] == one["lowrank"]
    _check(one, subjects)


@pytest.mark.parametrize("n,split_every", [(20, 8), (17, 8), (9, 2), (27, 3), (5, 8)])
def test_exact_pass_in_groups_of_subjects_sums_the_same(rng, local_client, n, split_every):
    # a task per tree leaf group sums its subjects as the tree's first level: bit for bit
    series = [rng.standard_normal((30, 24)).astype(np.float32) for _ in range(n)]
    reader = ArrayReader(series)
    u, w = rng.integers(0, 15, 40), rng.integers(15, 30, 40)
    one = group_lowrank.exact_candidates(local_client, reader, n, 30, u, w,
                                         split_every=split_every, token="x")
    grouped = group_lowrank.exact_candidates(local_client, reader, n, 30, u, w,
                                             split_every=split_every, token="x", grouped=True)
    np.testing.assert_array_equal(grouped, one)
    ref = np.sum([pair_correlations(x, u, w)[0] for x in series], axis=0)
    np.testing.assert_allclose(one, ref, rtol=1e-12)


def test_auto_declines_on_the_ranks_of_the_first_subjects(rng, local_client):
    # unfiltered (full-rank) first subjects: declined before the other bases are waited for
    nl, nr, probe = 21, 19, group_lowrank.PROBE_SUBJECTS
    n = probe + 3
    series, _ = _banded_cohort(rng, nl, nr, (60,) * n, unfiltered=tuple(range(probe)))
    reader = ArrayReader(series)
    with pytest.raises(group_lowrank.LowRankDeclined, match=f"first {probe} subjects keep"):
        group_lowrank.subject_bases(local_client, reader, n, nl + nr, "p", 3, probe=probe)
    # the same keys at once, as a rerun in the same client makes them: released, not
    # cancelled, they are computed again (a cancel could be inherited by the next graph)
    bases, ranks = group_lowrank.subject_bases(local_client, reader, n, nl + nr, "p", 3)
    release(bases.units)
    assert [full for _, full, _ in ranks] == [True] * probe + [False] * 3
    # band-passed first subjects: the probe lets the sum run, on every subject's bases
    series, _ = _banded_cohort(rng, nl, nr, (60,) * n, unfiltered=(probe, probe + 1))
    bases, ranks = group_lowrank.subject_bases(local_client, ArrayReader(series), n, nl + nr,
                                               "q", 3, probe=probe)
    release(bases.units)
    assert len(ranks) == n and [full for _, full, _ in ranks].count(True) == 2


def test_lowrank_group_sum_independent_of_batch_blocks_and_order(rng, local_client):
    nl, nr = 33, 38
    series, subjects = _banded_cohort(rng, nl, nr, (100, 120, 90, 110, 105, 95))
    a = _lowrank(series, nl, nr, 8, 11, 1, local_client, chain=3)
    b = _lowrank(series, nl, nr, 40, 40, 4, local_client)
    for k in ("left_arg", "right_arg", "left_sum", "right_sum"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    _check(a, subjects)
    c = _lowrank(series[::-1], nl, nr, 16, 16, 2, local_client)
    np.testing.assert_array_equal(a["left_arg"], c["left_arg"])
    np.testing.assert_array_equal(a["right_arg"], c["right_arg"])


def test_overflowed_voxels_are_checked_against_the_whole_hemisphere(rng, local_client,
                                                                    monkeypatch):
    nl, nr = 26, 31
    series, subjects = _banded_cohort(rng, nl, nr, (100, 80, 120))
    monkeypatch.setattr(lowrank_group, "KEEP", 2)
    monkeypatch.setattr(group_lowrank, "group_slack", lambda ranks, n: 0.08)  # a loose bound
    monkeypatch.setattr(group_lowrank, "MAX_OVERFLOW_FRACTION", 1.0)
    res = _lowrank(series, nl, nr, 10, 12, 2, local_client)
    assert 0 < res["lowrank"]["overflowed"] < nl + nr
    _check(res, subjects)
    monkeypatch.setattr(group_lowrank, "MAX_OVERFLOW_FRACTION", 0.0)
    with pytest.raises(group_lowrank.LowRankDeclined, match="overflowed"):
        _lowrank(series, nl, nr, 10, 12, 2, local_client, kernel="auto")
    with pytest.raises(CfhdaskInputError, match="--kernel lowrank: the bound keeps too many"):
        _lowrank(series, nl, nr, 10, 12, 2, local_client)


def test_group_mode_uses_the_low_rank_sum_where_it_pays(tmp_path, rng, local_client, caplog):
    st = make_banded_store(tmp_path / "banded.zarr", rng)
    ds = compute_cfh(str(st.url), block=24, subject_batch=3, client=local_client,
                     show_progress=False)
    params = st.group_counterpart()["params"]
    assert params["kernel"] == "auto" and params["kernel_used"] == "lowrank"
    assert params["full_rank_subjects"] == 1
    full = compute_cfh(str(st.url), block=24, subject_batch=3, kernel="full",
                       client=local_client, overwrite=True, show_progress=False)
    assert st.group_counterpart()["params"]["kernel_used"] == "full"
    cp, ref = ds["group_counterpart"].values, full["group_counterpart"].values
    data = [np.asarray(st.bold(s)) for s in st.subjects()]
    larg, rarg, summed, _, _ = reference_group([(x[st.left], x[st.right]) for x in data])
    for got in (cp, ref):
        assert_same_counterparts(np.where(got[st.left] < 0, -1, got[st.left] - st.n_left),
                                 larg, summed)
        assert_same_counterparts(got[st.right], rarg, summed.T)
    same = cp == ref
    np.testing.assert_allclose(ds["r"].values[:, same], full["r"].values[:, same], atol=1e-6)
    # unfiltered data: auto declines the low-rank sum (nothing to gain) and says why
    other = make_store(tmp_path / "white.zarr", rng)
    with caplog.at_level("INFO", logger="cfhdask.cfh.group"):
        compute_cfh(str(other.url), client=local_client, show_progress=False)
    params = other.group_counterpart()["params"]
    assert params["kernel_used"] == "full" and "time points" in params["reason"]
    assert "the full-rank sum instead" in caplog.text


def test_a_low_rank_sum_that_prunes_badly_falls_back_to_full_rank(tmp_path, rng, local_client,
                                                                   monkeypatch):
    """auto: too many overflowed voxels after the sum -> the full-rank sum, under task names
    of its own (never the low-rank coefficients), with the same counterparts."""
    st = make_banded_store(tmp_path / "banded.zarr", rng, unfiltered=())
    ref = compute_cfh(str(st.url), block=24, kernel="full", client=local_client,
                      show_progress=False)["group_counterpart"].values
    monkeypatch.setattr(lowrank_group, "KEEP", 1)
    monkeypatch.setattr(group_lowrank, "group_slack", lambda ranks, n: 0.5)
    monkeypatch.setattr(group_lowrank, "MAX_OVERFLOW_FRACTION", 0.0)
    ds = compute_cfh(str(st.url), block=24, client=local_client, overwrite=True,
                     show_progress=False)
    params = st.group_counterpart()["params"]
    assert params["kernel_used"] == "full" and "overflowed" in params["reason"]
    np.testing.assert_array_equal(ds["group_counterpart"].values, ref)


def _numpy_candidates(c, e, f, s, va, vb, a_offset, b_offset, keep):
    """The bounds and candidates from full block-sized matrices (the reference)."""
    ef = e[:, None] * f[None, :]
    lo, hi = c - ef, c + ef
    for arr in (lo, hi):
        arr[~va] = -np.inf
        arr[:, ~vb] = -np.inf
    s = np.float32(s)
    ub = hi + s

    def one_side(lb, vals, partners):
        n, m = vals.shape
        idx = np.full((n, keep), -1, dtype=np.int64)
        top = np.full((n, keep), -np.inf, dtype=np.float32)
        drop = np.full(n, -np.inf, dtype=np.float32)
        for r in range(n):
            cols = np.flatnonzero((vals[r] >= lb[r]) & np.isfinite(vals[r]))
            if cols.size > keep:
                order = np.lexsort((partners[cols], -vals[r, cols]))
                drop[r] = vals[r, cols[order[keep]]]
                cols = cols[order[:keep]]
            idx[r, :cols.size], top[r, :cols.size] = partners[cols], vals[r, cols]
        return CandidateSet(lb, idx, top, drop)

    row_lb, col_lb = lo.max(axis=1) - s, lo.max(axis=0) - s
    return (one_side(row_lb, ub, np.arange(c.shape[1]) + b_offset),
            one_side(col_lb, ub.T, np.arange(c.shape[0]) + a_offset))


@pytest.mark.parametrize("keep", [1, 3, 8])
def test_compiled_candidates_match_the_bound_matrices(rng, keep):
    """The two compiled passes give the reference's bounds and candidates bit for bit."""
    na, nb = 37, 29
    # coarse values: many exact ties between partners, in rows and in columns
    c = (rng.integers(0, 6, (na, nb)) / 4.0).astype(np.float32)
    e = (rng.integers(0, 3, na) / 16.0).astype(np.float32)
    f = (rng.integers(0, 3, nb) / 16.0).astype(np.float32)
    e[:5] = 0.0
    va, vb = rng.random(na) > 0.15, rng.random(nb) > 0.15
    for slack in (0.0, 1e-3):
        got = bounded_candidates(c, e, f, slack, va, vb, 11, 5, keep=keep)
        ref = _numpy_candidates(c, e, f, slack, va, vb, 11, 5, keep)
        for g, r in zip(got, ref, strict=True):
            for a, b in zip(g, r, strict=True):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)
    # with continuous values as well (few ties), and no validity masks
    c = rng.standard_normal((na, nb)).astype(np.float32)
    e, f = rng.random(na).astype(np.float32) * 0.3, rng.random(nb).astype(np.float32) * 0.3
    got = bounded_candidates(c, e, f, 1e-4, keep=keep)
    ref = _numpy_candidates(c, e, f, 1e-4, np.ones(na, bool), np.ones(nb, bool), 0, 0, keep)
    for g, r in zip(got, ref, strict=True):
        for a, b in zip(g, r, strict=True):
            np.testing.assert_array_equal(a, b)
