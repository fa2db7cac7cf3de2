"""Write a :class:`~cfhdask.stats.inference.GroupResult` to a directory.

Per contrast: ``<contrast>_tstat.nii.gz``, ``_logp_uncorrected``,
``_logp_vox_fwe``, ``_logp_cluster_fwe``, ``_logp_cluster_mass_fwe``,
``_logp_tfce_fwe`` (with TFCE), ``_clusters.nii.gz`` (labels) and the null
maxima ``<contrast>_null_<stat>.npy``; then ``clusters.tsv`` and, last,
``stats.json`` (parameters, seed, permutations used, package versions).

``clusters.tsv`` has one row per cluster, every cluster however small: size,
mass, cluster-extent / mass (/ TFCE) FWE p, then up to three local maxima more
than 8 mm apart, as SPM lists them (``peak_*``, ``peak2_*``, ``peak3_*``: t,
MNI x/y/z, voxel FWE p ``*_vox_p_fwe``) with their atlas labels
(``<atlas>_peak[2|3]``, Harvard-Oxford probabilities ``*_prob``) and the
regions each cluster covers (``<atlas>_regions``).
Every file is written to a temporary name and renamed into place, so a
reader never sees a half-written file; files gain the umask's permissions.
Files a previous run wrote in the same folder (as listed in its
``stats.json``) are removed first, so two analyses are never mixed.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cfhdask._version import package_versions
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.atomic import atomic_write, write_json
from cfhdask.io.nifti import write_nifti

if TYPE_CHECKING:
    from cfhdask.stats.results import GroupResult

log = logging.getLogger(__name__)

def write_outputs(result: GroupResult, out_dir: str) -> list[str]:
    """Write every output of an analysis to ``out_dir`` (created if needed).

    Returns
    -------
    list of str
        Paths written.
    """
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise CfhdaskInputError(f"--out {out_dir}: cannot create the directory: {exc}") from exc
    removed = clear_previous_outputs(out_dir)
    if removed:
        log.info("Removed %d file(s) of the previous analysis in %s", len(removed), out_dir)
    written: list[str] = []

    def nifti(name: str, values: np.ndarray, dtype) -> None:
        path = os.path.join(out_dir, name)
        vol = result.to_volume(np.asarray(values).astype(dtype))
        written.append(write_nifti(path, vol, result.affine, dtype=dtype,
                                   description=f"cfhdask {name}"))

    for name, c in result.contrasts.items():
        nifti(f"{name}_tstat.nii.gz", c.t, np.float32)
        nifti(f"{name}_logp_uncorrected.nii.gz", c.logp_uncorrected, np.float32)
        nifti(f"{name}_logp_vox_fwe.nii.gz", c.logp_vox_fwe, np.float32)
        nifti(f"{name}_logp_cluster_fwe.nii.gz", c.logp_cluster_fwe, np.float32)
        nifti(f"{name}_logp_cluster_mass_fwe.nii.gz", c.logp_cluster_mass_fwe, np.float32)
        if c.logp_tfce_fwe is not None:
            nifti(f"{name}_tfce.nii.gz", c.tfce, np.float32)
            nifti(f"{name}_logp_tfce_fwe.nii.gz", c.logp_tfce_fwe, np.float32)
        nifti(f"{name}_clusters.nii.gz", c.cluster_labels, np.int32)
        for stat, values in c.null.items():
            path = os.path.join(out_dir, f"{name}_null_{stat}.npy")
            atomic_write(path, lambda tmp, v=values: np.save(tmp, v))
            written.append(path)
    path = os.path.join(out_dir, "clusters.tsv")
    atomic_write(path, lambda tmp: result.clusters.to_csv(tmp, sep="\t", index=False,
                                                     float_format="%.6g"))
    written.append(path)
    meta = dict(result.params)
    meta["versions"] = package_versions()
    meta["outputs"] = sorted(os.path.basename(p) for p in written)
    path = os.path.join(out_dir, "stats.json")
    write_json(path, meta)
    written.append(path)
    log.info("Wrote %d files to %s", len(written), out_dir)
    return written


def clear_previous_outputs(out_dir: str) -> list[str]:
    """Delete the files a previous :func:`write_outputs` wrote in ``out_dir`` (only those).

    They are the ``outputs`` listed in its ``stats.json``, which goes first, so
    that an interrupted rerun never leaves a ``stats.json`` describing files of
    two analyses.  A rerun with other contrasts, without TFCE or with fewer
    statistics thus leaves no stale map or null distribution behind.

    Returns
    -------
    list of str
        Paths removed.
    """
    meta_path = os.path.join(out_dir, "stats.json")
    try:
        with open(meta_path) as f:
            listed = json.load(f).get("outputs") or []
    except (OSError, ValueError, AttributeError):
        return []
    removed = []
    for name in ["stats.json", *listed]:
        path = os.path.join(out_dir, os.path.basename(str(name)))
        if os.path.isfile(path):
            os.remove(path)
            removed.append(path)
    return removed


def contrast_order(contrasts: list[str], table: pd.DataFrame) -> list[str]:
    """Contrasts with the most significant cluster first (ties: as given)."""
    if "p_fwe" not in table.columns or "contrast" not in table.columns:
        return list(contrasts)
    best = table.groupby("contrast")["p_fwe"].min().to_dict()
    return sorted(contrasts, key=lambda c: best.get(c, 1.0))


def summary_clusters(table: pd.DataFrame, alpha: float, n_other: int = 5) -> pd.DataFrame:
    """Per contrast: every significant cluster, then the ``n_other`` largest others.

    The full list stays in ``clusters.tsv``; singletons of noise would bury the findings.
    """
    if table is None or table.empty or "contrast" not in table.columns:
        return table
    parts = []
    for _, rows in table.groupby("contrast", sort=False):
        if "p_fwe" in rows.columns:
            rows = rows.sort_values(["p_fwe", "size_voxels"], ascending=[True, False],
                                    kind="stable")
            sig = rows["p_fwe"] < alpha
            rows = pd.concat([rows[sig], rows[~sig].head(n_other)])
        parts.append(rows)
    order = contrast_order(list(table["contrast"].unique()), table)
    return pd.concat(sorted(parts, key=lambda r: order.index(r["contrast"].iloc[0])))


def clusters_to_show(rows: pd.DataFrame, alpha: float, max_clusters: int,
                     n_fallback: int = 1) -> pd.DataFrame:
    """Significant clusters (by p_fwe, then size); if none, the ``n_fallback`` largest."""
    if "p_fwe" not in rows.columns:
        return rows.head(max_clusters)
    rows = rows.sort_values(["p_fwe", "size_voxels"], ascending=[True, False], kind="stable")
    sig = rows[rows["p_fwe"] < alpha]
    return (sig if len(sig) else rows.head(n_fallback)).head(max_clusters)
