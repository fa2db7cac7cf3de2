"""GLM kernels against statsmodels, brute-force refits and nilearn's permuted_ols."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm

from cfhdask.stats.glm import ols_t, permuted_t, prepare_glm


def _design(rng, n=20):
    x = np.r_[np.ones(n // 2), np.zeros(n - n // 2)]
    Z = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    return x, Z


def test_identity_t_equals_statsmodels(rng):
    x, Z = _design(rng)
    Y = rng.normal(size=(20, 50)) + 0.8 * x[:, None]
    X = np.column_stack([x, Z])
    ref = np.array([sm.OLS(Y[:, v], X).fit().tvalues[0] for v in range(Y.shape[1])])
    prep = prepare_glm(Y, x, Z)
    for scheme in ("freedman-lane", "draper-stoneman"):
        t = permuted_t(prep, np.arange(20)[None], scheme)[0]
        np.testing.assert_allclose(t, ref, rtol=1e-6)
    np.testing.assert_allclose(ols_t(Y, X, np.r_[1.0, 0, 0, 0])[0], ref, rtol=1e-6)
    assert prep.df == 20 - 4


def test_freedman_lane_equals_refit_of_permuted_data(rng):
    x, Z = _design(rng)
    Y = rng.normal(size=(20, 30))
    X = np.column_stack([x, Z])
    prep = prepare_glm(Y, x, Z)
    hz = Z @ np.linalg.pinv(Z)
    E = Y - hz @ Y
    perms = np.array([rng.permutation(20) for _ in range(5)])
    got = permuted_t(prep, perms, "freedman-lane")
    for k, p in enumerate(perms):
        ystar = E[p] + hz @ Y
        ref = np.array([sm.OLS(ystar[:, v], X).fit().tvalues[0] for v in range(30)])
        np.testing.assert_allclose(got[k], ref, rtol=1e-8, atol=1e-10)


def test_draper_stoneman_equals_refit_with_permuted_labels(rng):
    x, Z = _design(rng)
    Y = rng.normal(size=(20, 30))
    prep = prepare_glm(Y, x, Z)
    perms = np.array([rng.permutation(20) for _ in range(5)])
    got = permuted_t(prep, perms, "draper-stoneman")
    for k, p in enumerate(perms):
        Xp = np.column_stack([x[p], Z])
        ref = np.array([sm.OLS(Y[:, v], Xp).fit().tvalues[0] for v in range(30)])
        np.testing.assert_allclose(got[k], ref, rtol=1e-8, atol=1e-10)


def test_unknown_scheme(rng):
    x, Z = _design(rng)
    prep = prepare_glm(rng.normal(size=(20, 3)), x, Z)
    with pytest.raises(ValueError, match="scheme"):
        permuted_t(prep, np.arange(20)[None], "bogus")


def test_voxel_fwe_agrees_with_nilearn_permuted_ols(rng):
    from nilearn.mass_univariate import permuted_ols

    from cfhdask.stats.permute import make_schedule
    from cfhdask.stats.results import fwe_p

    n, V, n_perm = 30, 200, 2000
    x = np.r_[np.ones(15), np.zeros(15)]
    cov = rng.normal(size=n)
    Y = rng.normal(size=(n, V)) + 0.5 * cov[:, None]
    Y[:, :40] += np.linspace(0.2, 1.2, 40) * x[:, None]
    prep = prepare_glm(Y, x, np.column_stack([np.ones(n), cov]))
    sched = make_schedule(x, n_perm, seed=1)
    t_all = permuted_t(prep, sched.batch(0, n_perm), "freedman-lane")
    ours = fwe_p(t_all.max(axis=1), t_all[0])
    out = permuted_ols(x[:, None], Y, confounding_vars=cov[:, None], model_intercept=True,
                       n_perm=n_perm, two_sided_test=False, random_state=0,
                       output_type="dict", verbose=0)
    theirs = 10 ** -out["logp_max_t"][0]
    np.testing.assert_allclose(t_all[0], out["t"][0], rtol=1e-6)
    informative = (ours > 0.01) & (ours < 0.9)
    assert informative.sum() >= 5
    # Monte-Carlo sd of a difference of two estimates <= sqrt(2 * 0.25 / n_perm) ~ 0.016
    assert np.max(np.abs(ours - theirs)[informative]) < 0.06
