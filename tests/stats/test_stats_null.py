"""The null's float32 fast path against the float64 reference path."""

from __future__ import annotations

import numpy as np
import pytest

from cfhdask.stats.clusters import tfce, voxel_graph
from cfhdask.stats.glm import exact_t, permuted_t, permuted_t_fast, prepare_glm
from cfhdask.stats.null import (
    REFINE_TOL,
    SIGNS,
    NullSettings,
    batch_null_maxima,
    map_maxima,
    null_settings,
)
from cfhdask.stats.permute import make_schedule

SHAPE = (9, 10, 8)


def _problem(rng, n=24):
    from scipy import ndimage

    ijk = np.argwhere(np.ones(SHAPE, bool))
    x = np.r_[np.ones(n // 2), np.zeros(n - n // 2)]
    cov = rng.normal(size=n)
    Z = np.column_stack([np.ones(n), cov, rng.integers(0, 2, n)])
    Y = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0).ravel()
                  for _ in range(n)]) + 0.3 * cov[:, None]
    return prepare_glm(Y, x, Z), voxel_graph(ijk, SHAPE, 18), x


@pytest.mark.parametrize("scheme", ["freedman-lane", "draper-stoneman"])
def test_fast_t_close_to_float64_and_exact_t_equal(rng, scheme):
    prep, _, x = _problem(rng)
    assert prep.Qv.shape[1] == prep.Qz.shape[1] - 1  # the constant never enters the GEMM
    perms = make_schedule(x, 40, seed=2).batch(0, 40)
    ref = permuted_t(prep, perms, scheme)
    fast = permuted_t_fast(prep, perms, scheme, chunk=100)  # several chunks
    assert fast.dtype == np.float32
    err = np.abs(fast - ref) / (1 + np.abs(ref))
    assert err.max() < REFINE_TOL / 20
    idx = np.array([0, 5, 77, prep.n_voxels - 1])
    np.testing.assert_allclose(exact_t(prep, perms[3], idx, scheme), ref[3, idx],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scheme", ["freedman-lane", "draper-stoneman"])
def test_fast_null_makes_the_float64_decisions(rng, scheme):
    prep, graph, x = _problem(rng)
    sched = make_schedule(x, 48, seed=5, scheme=scheme)
    ref_t = permuted_t(prep, sched.batch(0, 48), scheme)
    # put the threshold and a TFCE level 1e-9 away from real float64 t-values, where
    # float32 alone would misclassify the voxel
    thr = float(np.sort(np.abs(ref_t[7]))[-30]) - 1e-9
    dh = float(ref_t[9].max()) / 40 * (1 - 1e-10)
    settings = NullSettings(scheme=scheme, t_threshold=thr, tfce_dh=dh)
    got = batch_null_maxima(prep, graph, sched, 0, 48, settings)
    ref = np.array([map_maxima(graph, t, settings) for t in ref_t])
    np.testing.assert_allclose(got[:, :, 0], ref[:, :, 0], rtol=1e-12)  # max t
    np.testing.assert_array_equal(got[:, :, 1], ref[:, :, 1])  # max cluster size
    np.testing.assert_allclose(got[:, :, 2], ref[:, :, 2], rtol=1e-5, atol=1e-5)  # mass
    np.testing.assert_allclose(got[:, :, 3], ref[:, :, 3], rtol=1e-9)  # TFCE
    assert (ref[:, :, 1] > 0).any()


@pytest.mark.parametrize("scheme", ["freedman-lane", "draper-stoneman"])
@pytest.mark.parametrize("on", ["t", "z"])
def test_tfce_scores_every_map_with_its_own_step(rng, scheme, on):
    """The TFCE statistic is one function of a map: every permuted map, like the observed
    one, is scored with a step of its own peak / 100 (FSL, PALM).  A step taken from the
    observed map would put its peak, and only its peak, exactly on a level."""
    prep, graph, x = _problem(rng)
    sched = make_schedule(x, 24, seed=5, scheme=scheme)
    ref_t = permuted_t(prep, sched.batch(0, 24), scheme)
    kw = dict(scheme=scheme, cluster_p=0.05, tfce=True, mass_tfce_on=on)
    settings = null_settings(prep.df, **kw)
    got = batch_null_maxima(prep, graph, sched, 0, 24, settings)
    for k, t in enumerate(ref_t):
        e = settings.enhanced(t)
        for i, sign in enumerate(SIGNS):
            s = sign * e
            dh = s.max() / 100 * (1 - 1e-12)  # 100 levels up to this map's peak
            assert np.floor(s.max() / dh) == 100
            np.testing.assert_allclose(got[k, i, 3], tfce(graph, s, dh).max(), rtol=1e-6)
        np.testing.assert_allclose(got[k, :, 3], map_maxima(graph, t, settings)[:, 3],
                                   rtol=1e-9)
