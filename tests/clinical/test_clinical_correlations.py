"""Cluster means and partial correlations against pingouin, NumPy and statsmodels."""

from __future__ import annotations

import dask.array as da
import nibabel as nib
import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import xarray as xr
from statsmodels.stats.multitest import multipletests

from cfhdask.clinical.correlations import (
    cluster_correlations,
    cluster_means,
    fdr_bh,
    labels_at_voxels,
    partial_corr,
    partial_residuals,
    write_correlations,
)
from cfhdask.errors import CfhdaskInputError

COVS = ["age", "sex", "education", "SAS", "SDS"]
VARS = ["illness_duration", "JRS_total", "JRS_severity", "JRS_frequency"]


def _cohort(rng: np.random.Generator, n_pat: int = 30, n_con: int = 6):
    n = n_pat + n_con
    ids = [f"sub-{i:02d}" for i in range(n)]
    age = rng.normal(50, 6, n)
    part = pd.DataFrame({
        "participant_id": ids,
        "group": ["patient"] * n_pat + ["control"] * n_con,
        "age": age,
        "sex": rng.choice(["M", "F"], n),
        "education": rng.integers(6, 16, n).astype(float),
        "SAS": rng.normal(43, 6, n),
        "SDS": rng.normal(45, 6, n),
        "illness_duration": rng.normal(12, 5, n),
        "JRS_total": rng.integers(2, 7, n).astype(float),  # ties: Spearman ranks average
        "JRS_severity": rng.integers(1, 4, n).astype(float),
        "JRS_frequency": rng.integers(1, 4, n).astype(float),
    })
    values = pd.DataFrame({
        "cluster_1": 0.3 + 0.01 * part["illness_duration"].to_numpy() + 0.004 * age + rng.normal(0, .05, n),
        "cluster_2": 0.5 + 0.02 * part["JRS_total"].to_numpy() + rng.normal(0, .05, n),
    }, index=pd.Index(ids, name="subject"))
    return values, part


def test_partial_correlations_match_pingouin(rng):
    values, part = _cohort(rng)
    res = cluster_correlations(values, part, variables=VARS, covariates=COVS)
    assert len(res) == 2 * 4 * 2
    pat = part[part.group == "patient"].set_index("participant_id")
    data = pat.join(values).assign(sex=lambda d: (d.sex == "M").astype(float))
    for row in res.itertuples():
        ref = pg.partial_corr(data=data, x=row.variable, y=row.cluster, covar=COVS,
                              method=row.method)
        assert row.n == 30 and row.k == 5
        assert row.r == pytest.approx(ref["r"].iloc[0], abs=1e-10)
        assert row.p == pytest.approx(ref["p_val"].iloc[0], rel=1e-8, abs=1e-12)
        # pingouin's table rounds the CI to 2 decimals: check against the unrounded one
        lo, hi = ref["CI95"].iloc[0]
        assert row.ci_low == pytest.approx(lo, abs=0.005 + 1e-9)
        lo, hi = pg.compute_esci(stat=row.r, nx=30 - 5, ny=30 - 5, eftype="r", decimals=14)
        assert (row.ci_low, row.ci_high) == pytest.approx((lo, hi), abs=1e-12)
    # the planted association is found
    top = res[(res.cluster == "cluster_1") & (res.variable == "illness_duration")]
    assert (top.p < 1e-3).all()


def test_fdr_matches_statsmodels_per_family(rng):
    values, part = _cohort(rng)
    res = cluster_correlations(values, part, variables=VARS, covariates=COVS)
    for _, fam in res.groupby("method"):
        ref = multipletests(fam.p.to_numpy(), method="fdr_bh")[1]
        np.testing.assert_allclose(fam.p_fdr.to_numpy(), ref, rtol=1e-12)
    allfam = cluster_correlations(values, part, variables=VARS, covariates=COVS,
                                  fdr_family="all")
    np.testing.assert_allclose(allfam.p_fdr, multipletests(allfam.p, method="fdr_bh")[1],
                               rtol=1e-12)
    p = rng.uniform(size=50) ** 3
    p[[3, 7]] = np.nan
    q = fdr_bh(p)
    assert np.isnan(q[[3, 7]]).all()
    ok = np.isfinite(p)
    np.testing.assert_allclose(q[ok], multipletests(p[ok], method="fdr_bh")[1], rtol=1e-12)


def test_partial_corr_kernel_equals_brute_force_and_no_confounds(rng):
    x, y = rng.normal(size=25), rng.normal(size=25)
    z = rng.normal(size=(25, 3))
    # brute force: regress with numpy normal equations, then corrcoef
    d = np.column_stack([np.ones(25), z])
    h = d @ np.linalg.inv(d.T @ d) @ d.T
    r_ref = np.corrcoef(x - h @ x, y - h @ y)[0, 1]
    assert partial_corr(x, y, z)["r"] == pytest.approx(r_ref, abs=1e-12)
    # no confounds: plain Pearson / Spearman from scipy
    from scipy import stats
    res = partial_corr(x, y, np.empty((25, 0)))
    assert res["r"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert res["p"] == pytest.approx(stats.pearsonr(x, y).pvalue, rel=1e-10)
    res = partial_corr(x, y, np.empty((25, 0)), method="spearman")
    assert res["r"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_partial_residuals_correlate_to_r(rng):
    values, part = _cohort(rng)
    res = cluster_correlations(values, part, variables=["JRS_total"], covariates=COVS)
    for method in ("pearson", "spearman"):
        resid = partial_residuals(values, part, cluster="cluster_2", variable="JRS_total",
                                  method=method, covariates=COVS)
        assert len(resid) == 30
        r = res[(res.cluster == "cluster_2") & (res.method == method)].r.iloc[0]
        assert np.corrcoef(resid.x, resid.y)[0, 1] == pytest.approx(r, abs=1e-12)


def test_cluster_means_numpy_dask_xarray(rng, tmp_path):
    cfh = rng.normal(size=(4, 40)).astype(np.float32)
    cfh[1, 5] = np.nan
    labels = np.zeros(40, int)
    labels[3:9], labels[20:23] = 2, 5
    ref = np.column_stack([np.nanmean(cfh[:, 3:9], axis=1), np.nanmean(cfh[:, 20:23], axis=1)])
    out = cluster_means(cfh, labels)
    assert list(out.columns) == ["cluster_2", "cluster_5"]
    np.testing.assert_allclose(out.to_numpy(), ref, rtol=1e-6)
    subjects = [f"sub-{i}" for i in range(4)]
    lazy = xr.DataArray(da.from_array(cfh, chunks=(2, 16)), dims=("subject", "voxel"),
                        coords={"subject": subjects})
    out2 = cluster_means(lazy, labels)
    assert list(out2.index) == subjects
    np.testing.assert_allclose(out2.to_numpy(), ref, rtol=1e-6)
    # labels read from a clusters volume at voxel indices
    vol = np.zeros((4, 5, 2), np.int16)
    ijk = np.array([[0, 0, 0], [3, 4, 1], [2, 2, 0]])
    vol[3, 4, 1], vol[2, 2, 0] = 1, 2
    img = nib.Nifti1Image(vol, np.eye(4))
    np.testing.assert_array_equal(labels_at_voxels(img, ijk), [0, 1, 2])
    with pytest.raises(CfhdaskInputError, match="outside its grid"):
        labels_at_voxels(vol, np.array([[4, 0, 0]]))
    with pytest.raises(CfhdaskInputError, match="39 cluster labels for 40 voxels"):
        cluster_means(cfh, labels[:-1])
    path = write_correlations(out2, tmp_path / "cluster_values.tsv")
    back = pd.read_csv(path, sep="\t", index_col=0)
    np.testing.assert_allclose(back.to_numpy(), ref, rtol=1e-5)


def test_correlations_bad_input_is_named(rng):
    values, part = _cohort(rng, n_pat=10, n_con=2)
    with pytest.raises(CfhdaskInputError, match="'SAS2'"):
        cluster_correlations(values, part, variables=VARS, covariates=["age", "SAS2"])
    with pytest.raises(CfhdaskInputError, match="no participant with group == 'patients'"):
        cluster_correlations(values, part, variables=VARS, covariates=COVS,
                             group_value="patients")
    with pytest.raises(CfhdaskInputError, match="sub-03"):
        cluster_correlations(values.drop(index="sub-03"), part, variables=VARS, covariates=COVS)
    holes = part.copy()
    holes.loc[4, "JRS_total"] = np.nan
    with pytest.raises(CfhdaskInputError, match=r"'JRS_total' \(sub-04\)"):
        cluster_correlations(values, holes, variables=VARS, covariates=COVS)
    res = cluster_correlations(values, holes, variables=VARS, covariates=COVS,
                               drop_missing=True)
    assert set(res[res.variable == "JRS_total"].n) == {9}
    assert set(res[res.variable == "illness_duration"].n) == {10}
    with pytest.raises(CfhdaskInputError, match="kendall"):
        cluster_correlations(values, part, variables=VARS, covariates=COVS,
                             methods=["kendall"])
    with pytest.raises(CfhdaskInputError, match="no clinical variable"):
        cluster_correlations(values, part)
    with pytest.raises(CfhdaskInputError, match="fdr_family"):
        cluster_correlations(values, part, variables=VARS, covariates=COVS,
                             fdr_family="cluster")
