"""The exact level of each FWE method on a tiny case, by brute-force enumeration.

8 participants (4 vs 4), a 6 x 5 x 4 box, cluster-forming p < 0.01, Draper-Stoneman: the 70 distinct
relabellings are the whole permutation distribution (cfhdask's schedule is
exhaustive).  The reference is independent of cfhdask's kernels: the pooled
two-sample t of :func:`scipy.stats.ttest_ind` per voxel, clusters of
``t > t_thr`` by :func:`scipy.ndimage.label` with the 6/18/26 structure, and
the p-value ``#{null >= observed} / N`` (identity included) of every
relabelling taken in turn as the observed one.  Under exchangeability each
relabelling is equally likely to be the observed one, so the share of those
with ``p < alpha`` (and a cluster at all) is the exact size of the test:

* voxel FWE (max t, continuous): ``(ceil(alpha N) - 1) / N`` = 3/70 = 0.0429;
* cluster extent: at most that, and here (18-connectivity) 1/70 = 0.0143,
  because max cluster sizes are integers that tie at the top of the null (and
  many relabellings have no supra-threshold cluster at all);
* :func:`~cfhdask.stats.fwer.tie_level` gives the same number from the null
  values alone.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from scipy import stats as sstats

from cfhdask.stats.clusters import voxel_graph
from cfhdask.stats.fanout import null_maxima_local
from cfhdask.stats.fwer import found_by_method, rule_level, split_p_values, tie_level
from cfhdask.stats.glm import prepare_glm
from cfhdask.stats.null import NULL_STATS, NullSettings
from cfhdask.stats.permute import make_schedule
from cfhdask.stats.splits import exceed_counts

SHAPE = (6, 5, 4)
N, ALPHA = 8, 0.05
STRUCTURE = {6: 1, 18: 2, 26: 3}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    vols = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 0.8)
                     for _ in range(N)])
    return vols.reshape(N, -1)


def _reference(Y, connectivity, t_thr):
    """Brute force: every 4-vs-4 relabelling -> (max t, max size, max mass) per sign."""
    st = ndimage.generate_binary_structure(3, STRUCTURE[connectivity])
    out = {}
    for a in itertools.combinations(range(N), N // 2):
        x = np.zeros(N)
        x[list(a)] = 1
        t = sstats.ttest_ind(Y[x == 1], Y[x == 0], equal_var=True).statistic
        row = []
        for sign in (1, -1):
            s = (sign * t).reshape(SHAPE)
            lab, n = ndimage.label(s > t_thr, structure=st)
            sizes = np.bincount(lab.ravel())[1:]
            mass = ndimage.sum(s - t_thr, lab, range(1, n + 1)) if n else [0.0]
            row.append([s.max(), sizes.max() if n else 0, np.max(mass)])
        out[tuple(x.astype(int))] = np.array(row)
    return out


def _exact_level(values, alpha):
    """Share of relabellings whose p = #{null >= own} / N is below alpha (and value > 0)."""
    v = np.asarray(values, dtype=float)
    p = (v[None, :] >= v[:, None] - 1e-9).sum(axis=1) / v.size
    return float(np.mean((p < alpha) & (v > 0)))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_exhaustive_null_and_exact_levels_match_brute_force(connectivity):
    Y = _data()
    x = np.r_[np.ones(N // 2), np.zeros(N // 2)]
    prep = prepare_glm(Y, x, np.ones((N, 1)))
    t_thr = float(sstats.t.isf(0.01, prep.df))
    schedule = make_schedule(x, 1000, seed=0, scheme="draper-stoneman")
    assert schedule.exhaustive and schedule.n_perm == 70
    graph = voxel_graph(np.argwhere(np.ones(SHAPE, bool)), SHAPE, connectivity)
    settings = NullSettings(scheme="draper-stoneman", t_threshold=t_thr)
    null = null_maxima_local(prep, graph, schedule, settings, 16)
    ref = _reference(Y, connectivity, t_thr)
    keys = [tuple(x[p].astype(int)) for p in schedule.table]
    assert sorted(keys) == sorted(ref)
    brute = np.stack([ref[k] for k in keys])  # (70, 2 signs, 3 stats)
    np.testing.assert_allclose(null[:, :, :3], brute, rtol=1e-9, atol=1e-9)

    # every relabelling as the observed one: cfhdask's p-values and rule vs brute force
    count = np.stack([exceed_counts(null, null[k]) for k in range(70)])
    p = split_p_values(count, np.full(70, 70))
    found = found_by_method(p, null, np.full(70, np.inf), ALPHA, tfce=False)
    for method, j in (("voxel_fwe", 0), ("cluster_extent_fwe", 1), ("cluster_mass_fwe", 2)):
        exact = [_exact_level(brute[:, i, j], ALPHA) for i in range(2)]
        assert found[method].mean(axis=0) == pytest.approx(exact, abs=1e-12)
        assert tie_level(null[:, :, j], ALPHA) == pytest.approx(np.mean(exact), abs=1e-12)
    # the continuous max t reaches the rule's level; integer cluster sizes fall below it
    assert found["voxel_fwe"].mean() == pytest.approx(rule_level(ALPHA, 70)) == 3 / 70
    assert found["cluster_extent_fwe"].mean() <= 3 / 70
    if connectivity == 18:  # SPM's: the 3 largest max sizes tie, only 1 relabelling of 70
        assert found["cluster_extent_fwe"].mean() == pytest.approx(1 / 70)
    sizes = null[:, :, NULL_STATS.index("max_size")]
    assert (sizes == 0).any() and len(np.unique(sizes)) < sizes.size  # no cluster, ties


def test_tie_level_of_random_schedules():
    """With N random permutations, the binomial level of continuous values is the rule's."""
    rng = np.random.default_rng(0)
    cont = rng.standard_normal((20000, 1)) + 10
    assert tie_level(cont, ALPHA, n_perm=41) == pytest.approx(rule_level(ALPHA, 41), abs=2e-3)
    # an atom holding the top 10 % of an exhaustive distribution: nothing can be rejected
    atoms = np.where(np.arange(20000) % 10 == 0, 5.0, rng.random(20000))
    assert tie_level(atoms, ALPHA) == 0.0
    assert tie_level(atoms[atoms < 5], ALPHA) == pytest.approx(0.05, abs=1e-4)
    # zero (no cluster) never rejects, whatever its rank
    zeros = np.zeros((100, 2))
    assert tie_level(zeros, ALPHA) == 0.0
