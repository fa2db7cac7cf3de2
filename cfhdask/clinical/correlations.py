"""Partial correlations of cluster CFH with clinical variables (paper section 2.6).

For each significant cluster, each participant's mean CFH over the cluster is
correlated, in the patient group, with the clinical variables (illness
duration, JRS total, severity and frequency) controlling for the covariates
(age, sex, education, SAS, SDS).  The partial correlation is the correlation
of the residuals of both variables after regressing out the covariates (with
an intercept); the Spearman version does the same on ranks of every column,
as :func:`pingouin.partial_corr` does.  p-values use a t distribution with
``n - 2 - k`` degrees of freedom (k covariate columns), confidence intervals
Fisher's z with standard error ``1 / sqrt(n - k - 3)``; false discovery rate
by Benjamini-Hochberg across the family of tests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import dask
import numpy as np
import pandas as pd
from scipy import stats

from cfhdask.errors import CfhdaskInputError
from cfhdask.io.atomic import atomic_write
from cfhdask.stats.design import encode_covariates

log = logging.getLogger(__name__)

METHODS = ("pearson", "spearman")


# --------------------------------------------------------------------------- kernels
def residualise(y: np.ndarray, confounds: np.ndarray) -> np.ndarray:
    """Residuals of ``y`` after least-squares regression on ``confounds`` and an intercept.

    Parameters
    ----------
    y : ndarray of shape (n,) or (n, m)
    confounds : ndarray of shape (n, k)
        Confound columns (an intercept is added; k may be 0).

    Returns
    -------
    ndarray shaped like ``y``, float64
    """
    y = np.asarray(y, dtype=np.float64)
    n = y.shape[0]
    design = np.column_stack([np.ones(n), np.asarray(confounds, dtype=np.float64).reshape(n, -1)])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    return y - design @ beta


def partial_corr(x: np.ndarray, y: np.ndarray, confounds: np.ndarray, *,
                 method: str = "pearson", confidence: float = 0.95) -> dict[str, float]:
    """Partial correlation of ``x`` and ``y`` controlling for ``confounds``.

    Parameters
    ----------
    x, y : ndarray of shape (n,)
    confounds : ndarray of shape (n, k)
        Numeric confound columns (categorical ones already encoded).
    method : {"pearson", "spearman"}
        Spearman ranks x, y and every confound column first.
    confidence : float
        Level of the Fisher-z confidence interval.

    Returns
    -------
    dict
        ``n``, ``k`` (confound columns), ``r``, ``p`` (two-sided), ``ci_low``,
        ``ci_high``.
    """
    if method not in METHODS:
        raise CfhdaskInputError(f"partial correlation method must be one of {METHODS}, "
                                f"got {method!r}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    z = np.asarray(confounds, dtype=np.float64).reshape(x.size, -1)
    n, k = x.size, z.shape[1]
    if method == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)
        z = np.column_stack([stats.rankdata(c) for c in z.T]) if k else z
    rx = residualise(x, z)
    ry = residualise(y, z)
    denom = np.sqrt(np.dot(rx, rx) * np.dot(ry, ry))
    r = float(np.clip(np.dot(rx, ry) / denom, -1.0, 1.0)) if denom > 0 else np.nan
    dof = n - 2 - k
    if not np.isfinite(r) or dof < 1:
        p = np.nan
    elif np.isclose(r * r, 1.0):
        p = 0.0
    else:
        t = r * np.sqrt(dof / (1.0 - r * r))
        p = float(2.0 * stats.t.sf(abs(t), dof))
    if np.isfinite(r) and n - k - 3 > 0 and abs(r) < 1:
        crit = stats.norm.ppf(0.5 + confidence / 2)
        half = crit / np.sqrt(n - k - 3)
        ci = np.tanh([np.arctanh(r) - half, np.arctanh(r) + half])
    else:
        ci = np.array([np.nan, np.nan])
    return {"n": n, "k": k, "r": r, "p": p, "ci_low": float(ci[0]), "ci_high": float(ci[1])}


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv)
    scaled = pv[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    adj = np.empty(m)
    adj[order] = np.minimum(q, 1.0)
    out[ok] = adj
    return out


# --------------------------------------------------------------------------- tables
def cluster_means(cfh, labels: np.ndarray, *, subjects: Sequence[str] | None = None,
                  prefix: str = "cluster_") -> pd.DataFrame:
    """Each subject's mean CFH over each cluster.

    Parameters
    ----------
    cfh : ndarray, dask array or xarray.DataArray of shape (n_subjects, n_voxels)
        CFH maps in the store's voxel order (NaN voxels are ignored).  A
        DataArray with a ``subject`` coordinate gives the row names; a lazy
        one is reduced lazily and computed once.
    labels : ndarray of shape (n_voxels,)
        Cluster label of each voxel (0 = none), e.g. a clusters volume indexed
        at the store's ``ijk`` (see :func:`labels_at_voxels`).
    subjects : sequence of str, optional
        Row names (default: the DataArray's ``subject`` coordinate, else 0..n-1).
    prefix : str
        Column names are ``f"{prefix}{label}"``.

    Returns
    -------
    DataFrame (subject x cluster)
    """
    labels = np.asarray(labels).ravel()
    if subjects is None and hasattr(cfh, "coords") and "subject" in cfh.coords:
        subjects = [str(s) for s in cfh.coords["subject"].values]
    data = cfh.data if hasattr(cfh, "coords") else cfh
    if data.ndim != 2:
        raise CfhdaskInputError(f"cluster_means: cfh must be (subject, voxel), got shape "
                                f"{tuple(data.shape)}")
    if data.shape[1] != labels.size:
        raise CfhdaskInputError(
            f"cluster_means: {labels.size} cluster labels for {data.shape[1]} voxels")
    ids = [int(v) for v in np.unique(labels) if v > 0]
    if subjects is None:
        subjects = [str(i) for i in range(data.shape[0])]
    if len(subjects) != data.shape[0]:
        raise CfhdaskInputError(f"cluster_means: {len(subjects)} subject names for "
                                f"{data.shape[0]} rows")
    columns = []
    for lab in ids:
        sel = np.flatnonzero(labels == lab)
        block = data[:, sel]
        columns.append(np.nanmean(block, axis=1) if isinstance(block, np.ndarray)
                       else _dask_nanmean(block))
    if columns:
        (columns,) = dask.compute(columns)
    values = np.column_stack(columns) if columns else np.empty((len(subjects), 0))
    return pd.DataFrame(values, index=pd.Index(subjects, name="subject"),
                        columns=[f"{prefix}{lab}" for lab in ids])


def _dask_nanmean(block):
    import dask.array as da

    return da.nanmean(block, axis=1)


def labels_at_voxels(volume, ijk: np.ndarray) -> np.ndarray:
    """Values of a 3-D volume (array or nibabel image) at voxel indices ``ijk`` (n, 3)."""
    arr = np.asarray(volume.dataobj) if hasattr(volume, "dataobj") else np.asarray(volume)
    ijk = np.asarray(ijk, dtype=np.int64)
    if arr.ndim != 3:
        raise CfhdaskInputError(f"cluster label volume must be 3-D, got shape {arr.shape}")
    if ijk.size and ((ijk < 0).any() or (ijk >= np.array(arr.shape)).any()):
        raise CfhdaskInputError("cluster label volume: voxel indices outside its grid "
                                f"{arr.shape} (was it written on another grid?)")
    return arr[ijk[:, 0], ijk[:, 1], ijk[:, 2]]


def _index_participants(participants: pd.DataFrame, subject_column: str) -> pd.DataFrame:
    if subject_column in participants.columns:
        return participants.set_index(participants[subject_column].astype(str))
    out = participants.copy()
    out.index = out.index.astype(str)
    return out


def _covariate_matrix(frame: pd.DataFrame, covariates: Sequence[str],
                      categorical: Sequence[str] | None) -> np.ndarray:
    """Covariates encoded as the GLM encodes them (:func:`cfhdask.stats.design.encode_covariates`)."""
    if categorical is None:
        from cfhdask.settings import settings

        categorical = settings().design.categorical
    X, _ = encode_covariates(frame, list(covariates), categorical,
                             source="participants table (partial correlations)", center=False)
    return X


def _patient_frame(values: pd.DataFrame, participants: pd.DataFrame, *, group: str,
                   group_value: str, columns: Sequence[str], subject_column: str) -> pd.DataFrame:
    table = _index_participants(participants, subject_column)
    missing_cols = [c for c in [group, *columns] if c not in table.columns]
    if missing_cols:
        raise CfhdaskInputError(
            f"participants table: column(s) {', '.join(map(repr, missing_cols))} not found")
    patients = table.index[table[group].astype(str) == str(group_value)]
    if len(patients) == 0:
        raise CfhdaskInputError(
            f"participants table: no participant with {group} == {group_value!r}")
    values = values.copy()
    values.index = values.index.astype(str)
    absent = [s for s in patients if s not in values.index]
    if absent:
        raise CfhdaskInputError(
            f"cluster values missing for participant(s) {', '.join(absent[:10])}"
            + (" ..." if len(absent) > 10 else ""))
    return table.loc[patients, list(columns)]


def cluster_correlations(
    values: pd.DataFrame,
    participants: pd.DataFrame,
    *,
    group: str = "group",
    group_value: str = "patient",
    variables: Sequence[str] = (),
    covariates: Sequence[str] = (),
    categorical: Sequence[str] | None = None,
    methods: Sequence[str] = METHODS,
    subject_column: str = "participant_id",
    fdr_family: str = "method",
    confidence: float = 0.95,
    drop_missing: bool = False,
) -> pd.DataFrame:
    """Partial correlations of cluster values with clinical variables in one group.

    Parameters
    ----------
    values : DataFrame (subject x cluster)
        E.g. :func:`cluster_means`; the index holds participant ids.
    participants : DataFrame
        Participants table with ``subject_column`` (or ids as index), ``group``,
        the variables and the covariates.
    group, group_value : str
        Only participants with ``participants[group] == group_value`` are used.
    variables : sequence of str
        Clinical variables correlated with every cluster.
    covariates : sequence of str
        Controlled for, encoded as in the GLM: those in ``categorical``
        dummy-coded (first level dropped); the others must be numeric.
    categorical : sequence of str, optional
        Categorical covariates (default ``cfhdask.design.categorical``).
    methods : sequence of {"pearson", "spearman"}
    subject_column : str
        Column of participant ids (falls back to the index when absent).
    fdr_family : {"method", "all"}
        Benjamini-Hochberg across all clusters x variables of each method
        (default; Pearson and Spearman are two analyses of the same
        hypotheses), or across every row.
    confidence : float
        Level of the confidence interval.
    drop_missing : bool
        False (default): a missing variable or covariate value is an error
        naming the column and participants; True: such participants are left
        out of the tests that need the value (``n`` reports how many remain).

    Returns
    -------
    DataFrame
        Columns ``cluster, variable, method, n, k, r, ci_low, ci_high, p, p_fdr``.

    Raises
    ------
    CfhdaskInputError
        Missing columns, participants without values, missing values (unless
        ``drop_missing``), unknown method or family.
    """
    methods = list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise CfhdaskInputError(f"correlation method(s) {bad} unknown; use {list(METHODS)}")
    if fdr_family not in ("method", "all"):
        raise CfhdaskInputError(f"fdr_family must be 'method' or 'all', got {fdr_family!r}")
    variables, covariates = list(variables), list(covariates)
    if not variables:
        raise CfhdaskInputError("cluster_correlations: no clinical variable given "
                                "(clinical.variables)")
    frame = _patient_frame(values, participants, group=group, group_value=group_value,
                           columns=[*variables, *covariates], subject_column=subject_column)
    vals = values.copy()
    vals.index = vals.index.astype(str)
    vals = vals.loc[frame.index]
    _check_missing(frame, vals, drop_missing)
    non_numeric = [v for v in variables if not pd.api.types.is_numeric_dtype(frame[v])]
    if non_numeric:
        raise CfhdaskInputError(
            f"participants table: clinical variable(s) {non_numeric} are not numeric")
    rows = []
    for cluster in vals.columns:
        for var in variables:
            sub = pd.concat([vals[[cluster]].rename(columns={cluster: "__y__"}),
                             frame[[var, *covariates]]], axis=1).dropna()
            z = _covariate_matrix(sub, covariates, categorical)
            for method in methods:
                res = partial_corr(sub[var].to_numpy(), sub["__y__"].to_numpy(), z,
                                   method=method, confidence=confidence)
                rows.append({"cluster": cluster, "variable": var, "method": method, **res})
    out = pd.DataFrame(rows, columns=["cluster", "variable", "method", "n", "k", "r",
                                      "ci_low", "ci_high", "p"])
    out["p_fdr"] = np.nan
    if len(out):
        if fdr_family == "all":
            out["p_fdr"] = fdr_bh(out["p"].to_numpy())
        else:
            for _, idx in out.groupby("method").groups.items():
                out.loc[idx, "p_fdr"] = fdr_bh(out.loc[idx, "p"].to_numpy())
    log.info("cluster_correlations: %d tests (%d clusters x %d variables x %d methods)",
             len(out), vals.shape[1], len(variables), len(methods))
    return out


def _check_missing(frame: pd.DataFrame, vals: pd.DataFrame, drop_missing: bool) -> None:
    if drop_missing:
        return
    problems = []
    for name, col in list(frame.items()) + list(vals.items()):
        missing = col.index[col.isna()].tolist()
        if missing:
            problems.append(f"{name!r} ({', '.join(map(str, missing[:5]))}"
                            + (" ..." if len(missing) > 5 else "") + ")")
    if problems:
        raise CfhdaskInputError(
            "missing values in " + "; ".join(problems)
            + " — fill them or pass drop_missing=True")


def partial_residuals(
    values: pd.DataFrame,
    participants: pd.DataFrame,
    *,
    cluster: str,
    variable: str,
    method: str = "pearson",
    group: str = "group",
    group_value: str = "patient",
    covariates: Sequence[str] = (),
    categorical: Sequence[str] | None = None,
    subject_column: str = "participant_id",
) -> pd.DataFrame:
    """Residualised clinical variable and cluster value (what a partial-correlation plot shows).

    Returns
    -------
    DataFrame indexed by subject with columns ``x`` (variable residual) and
    ``y`` (cluster-value residual); their Pearson correlation is the partial
    correlation of ``method`` (on ranks for Spearman).  Rows with a missing
    value are left out.  ``categorical`` covariates are dummy-coded as in
    :func:`cluster_correlations` (default ``cfhdask.design.categorical``).
    """
    covariates = list(covariates)
    frame = _patient_frame(values, participants, group=group, group_value=group_value,
                           columns=[variable, *covariates], subject_column=subject_column)
    if cluster not in values.columns:
        raise CfhdaskInputError(f"cluster values: no column {cluster!r}")
    vals = values.copy()
    vals.index = vals.index.astype(str)
    sub = pd.concat([vals.loc[frame.index, [cluster]].rename(columns={cluster: "__y__"}),
                     frame], axis=1).dropna()
    x = sub[variable].to_numpy(np.float64)
    y = sub["__y__"].to_numpy(np.float64)
    z = _covariate_matrix(sub, covariates, categorical)
    if method == "spearman":
        x, y = stats.rankdata(x), stats.rankdata(y)
        z = np.column_stack([stats.rankdata(c) for c in z.T]) if z.shape[1] else z
    return pd.DataFrame({"x": residualise(x, z), "y": residualise(y, z)}, index=sub.index)


def write_correlations(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a correlation table (or cluster values) as TSV, atomically."""
    path = Path(path)
    atomic_write(path, lambda tmp: df.to_csv(tmp, sep="\t", index=df.index.name is not None,
                                             float_format="%.6g", na_rep="n/a"))
    return path


def significant_cluster_values(
    cfh,
    ijk: np.ndarray,
    cluster_imgs: Mapping[str, object],
    clusters: pd.DataFrame | None = None,
    *,
    alpha: float = 0.05,
    p_column: str = "p_fwe",
) -> pd.DataFrame:
    """Each subject's mean CFH over each significant cluster of each contrast.

    Parameters
    ----------
    cfh : array or DataArray (n_subjects, n_voxels)
        CFH maps in the store's voxel order.
    ijk : ndarray (n_voxels, 3)
        The store's voxel indices (``CohortStore.ijk``).
    cluster_imgs : dict contrast -> nibabel image, path or 3-D array
        Cluster label maps (``<contrast>_clusters.nii.gz``).
    clusters : DataFrame, optional
        The cluster table (``clusters.tsv``: ``contrast``, ``cluster`` and
        ``p_column``); when given only clusters with ``p_column < alpha`` are kept.
    alpha : float
        Significance level of the cluster p-values.
    p_column : str
        Which p-value decides significance.

    Returns
    -------
    DataFrame (subject x cluster)
        Columns ``f"{contrast}_c{label}"``.
    """
    import nibabel as nib

    if clusters is not None:
        missing = [c for c in ("contrast", "cluster", p_column) if c not in clusters.columns]
        if missing:
            raise CfhdaskInputError(f"cluster table: column(s) {missing} not found")
    frames = []
    for contrast, img in cluster_imgs.items():
        if isinstance(img, (str, Path)):
            img = nib.load(str(img))
        labels = np.asarray(labels_at_voxels(img, ijk)).astype(np.int64)
        if clusters is not None:
            rows = clusters[(clusters["contrast"] == contrast) & (clusters[p_column] < alpha)]
            keep = np.isin(labels, rows["cluster"].astype(np.int64).to_numpy())
            labels = np.where(keep, labels, 0)
        frames.append(cluster_means(cfh, labels, prefix=f"{contrast}_c"))
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, axis=1)
