"""Calibration: the FWER of every method on null CFH cohorts made by the real pipeline.

A null cohort (simulated with effect size 0, ingested, CFH computed: the
``null_cohort`` fixture) is split at random into two pseudo-groups of 10, and
each split goes through the study's inference (covariates age and sex, TFCE
on).  The empirical FWER of every FWE method, pooled over both contrasts of
every split, must match the level the method can attain on these data (its
``attainable`` level, ties and empty maps included, see
:func:`~cfhdask.stats.fwer.tie_level`) within 3 Monte-Carlo SD, under
Freedman-Lane and Draper-Stoneman.  Voxel-FWE, cluster-mass and TFCE (continuous
statistics) must moreover be within 0.05 ± 0.014 (3 Monte-Carlo SD of 2000
tests); cluster extent, whose integer sizes tie on this coarse grid, is held to
its attainable level and to never exceed that band (docs/null-check.md); the
uncorrected p < 0.001 rate must be far above it.  1000 splits per scheme, in
``make test`` (about a minute each on 2 cores).  41 permutations per split give
an exact size of 2/41 = 0.0488 for ``p < 0.05``
(:func:`~cfhdask.stats.fwer.rule_level`) at a fortieth of the cost of 1000.
"""

from __future__ import annotations

import logging

import dask
import numpy as np
import pandas as pd
import pytest

from cfhdask.clinical.correlations import METHODS, cluster_correlations, fdr_bh, partial_corr
from cfhdask.stats.fwer import rule_level
from cfhdask.stats.nullcheck import null_check

N_PERM = 41
FWE_METHODS = ["voxel_fwe", "cluster_extent_fwe", "cluster_mass_fwe", "tfce_fwe"]
#: Methods of continuous statistics (no ties): held to the nominal band.
CONTINUOUS = ["voxel_fwe", "cluster_mass_fwe", "tfce_fwe"]
#: Cluster-forming threshold (Eklund et al. tested 0.01 and 0.001); on this coarse grid
#: clusters at 0.001 are a few voxels, so ties make extent inference conservative.
CLUSTER_P = 0.01


def _calibrate(null_cohort, scheme: str, n_splits: int) -> pd.DataFrame:
    store, participants = null_cohort
    logging.getLogger("cfhdask").setLevel(logging.WARNING)
    with dask.config.set(scheduler="threads"):  # maps read here, whatever client came before
        res = null_check(store, participants, group="group", level="control",
                         n_splits=n_splits, n_perm=N_PERM, seed=11, scheme=scheme,
                         covariates=["age", "sex"], tfce=True, cluster_p=CLUSTER_P,
                         compute="local")
    tab = res.summary.set_index("method")
    print(f"\n{scheme}, {n_splits} splits x {N_PERM} permutations, "
          f"{res.params['mask']['n_voxels_analysed']} voxels:\n"
          f"{tab[['n_tests', 'n_positive', 'fwer', 'ci_low', 'ci_high', 'attainable']]}")
    assert (tab.n_tests == 2 * n_splits).all()
    return tab


def _check(tab: pd.DataFrame) -> None:
    assert rule_level(0.05, N_PERM) == pytest.approx(0.0488, abs=1e-4)
    n_tests = int(tab.n_tests.iloc[0])
    margin = 3 * np.sqrt(0.05 * 0.95 / n_tests)  # 0.014 for 2000 tests
    for m in FWE_METHODS:
        fwer, att = tab.loc[m, "fwer"], tab.loc[m, "attainable"]
        # as exact as its ties allow: the rate matches the level its null distributions give
        assert att <= rule_level(0.05, N_PERM) + 1e-12, (m, att)
        assert abs(fwer - att) <= 3 * np.sqrt(att * (1 - att) / n_tests) + 1 / n_tests, \
            (m, fwer, att)
    for m in CONTINUOUS:  # no ties: nominal
        assert abs(tab.loc[m, "fwer"] - 0.05) <= margin, (m, tab.loc[m, "fwer"], margin)
    # integer cluster sizes on this coarse grid tie: extent is conservative, never above 0.05
    assert tab.loc["cluster_extent_fwe", "fwer"] <= 0.05 + margin
    assert tab.loc["uncorrected", "fwer"] > 0.3  # what the correction protects against


@pytest.mark.timeout(900)  # about a minute per scheme on 2 free cores, more when shared
@pytest.mark.parametrize("scheme", ["freedman-lane", "draper-stoneman"])
def test_fwer_nominal_on_null_cfh_cohort(null_cohort, scheme):
    _check(_calibrate(null_cohort, scheme, 1000))


def test_clinical_fdr_family_under_shuffled_scores():
    """Benjamini-Hochberg families of partial correlations reject at <= 0.05 under the null.

    3 cluster values x 3 clinical scores, controlling for age and sex, Pearson
    and Spearman families (as :func:`cluster_correlations` forms them, checked
    on the first shuffle); the scores are shuffled 1000 times among the
    patients, so no correlation is real: a family rejects when any q < 0.05.
    """
    rng = np.random.default_rng(4)
    n, n_shuffles = 30, 1000
    age, sex = rng.normal(45, 10, n), rng.choice(["F", "M"], n)
    base = rng.standard_normal((n, 3))
    values = pd.DataFrame(base + 0.5 * base[:, :1], columns=["c1", "c2", "c3"],
                          index=[f"sub-{i:02d}" for i in range(n)])
    scores = rng.standard_normal((n, 3))
    scores[:, 1] += 0.6 * scores[:, 0]
    confounds = np.column_stack([age - age.mean(), sex == "M"]).astype(float)
    variables = ["JRS", "SAS", "SDS"]
    rejected = dict.fromkeys(METHODS, 0)
    for s in range(n_shuffles):
        shuffled = scores[rng.permutation(n)]
        q = {}
        for method in METHODS:
            p = [partial_corr(shuffled[:, v], values[c].to_numpy(), confounds,
                              method=method)["p"]
                 for c in values.columns for v in range(3)]
            q[method] = fdr_bh(np.array(p))
            rejected[method] += bool((q[method] < 0.05).any())
        if s == 0:  # the same families as the clinical stage forms them
            table = pd.DataFrame({"participant_id": values.index, "group": "patient",
                                  "age": age, "sex": sex,
                                  **{v: shuffled[:, j] for j, v in enumerate(variables)}})
            res = cluster_correlations(values, table, variables=variables,
                                       covariates=["age", "sex"], categorical=["sex"])
            for method in METHODS:
                np.testing.assert_allclose(res[res.method == method].p_fdr, q[method],
                                           rtol=1e-9)
    rates = {m: k / n_shuffles for m, k in rejected.items()}
    print(f"FDR families rejecting over {n_shuffles} shuffles: {rates}")
    for m, r in rates.items():
        assert r <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / n_shuffles), (m, r)
        assert r > 0.01, (m, r)  # the test can see a rejection at all
