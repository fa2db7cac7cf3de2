"""Export per-subject maps (CFH, VMHC, autonomy index) as NIfTI images on the input grid."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cfhdask.cfh.mirror import counterpart_displacement
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.nifti import write_nifti
from cfhdask.io.store import METRIC_LABELS, METRICS, CohortStore, open_store
from cfhdask.io.urls import check_writable

log = logging.getLogger(__name__)

__all__ = ["check_export_dir", "counterpart_coordinates", "export_maps"]


def check_export_dir(out_dir: str | os.PathLike) -> Path:
    """Create the export directory ``out_dir`` if needed and check that files can be written
    in it; call it before any compute.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    CfhdaskInputError
        One line naming ``out_dir`` when it cannot be created (a parent is a file, or
        not writable) or is not a writable directory.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # FileExistsError (a file), NotADirectoryError, PermissionError
        raise CfhdaskInputError(f"--export directory {out}: cannot be created: "
                                f"{type(exc).__name__}: {exc.strerror or exc}") from None
    check_writable(str(out), what="--export directory")
    return out


def counterpart_coordinates(store: CohortStore, index: np.ndarray) -> np.ndarray:
    """MNI x, y, z (mm) of each voxel's counterpart, shape (3, n_voxels); 0 where none."""
    index = np.asarray(index)
    coords = np.zeros((store.n_voxels, 3), dtype=np.float32)
    has = index >= 0
    coords[has] = store.xyz.astype(np.float32)[index[has]]
    return coords.T


def _volume(store, values, what: str, path: Path) -> Path:
    values = np.asarray(values, dtype=np.float32)
    vol = store.to_volume(np.where(np.isfinite(values), values, np.float32(0)))
    write_nifti(path, vol, store.affine, description=f"cfhdask {what}")
    log.info("Exported %s", path)
    return path


def export_maps(store: CohortStore | str, out_dir: str | os.PathLike,
                subjects: Sequence[str] | None = None,
                storage_options: dict | None = None, metric: str = "cfh") -> list[Path]:
    """Write each subject's map of one metric as NIfTI (and its counterparts for CFH).

    Parameters
    ----------
    store : CohortStore or str
        The cohort store (or its URL).
    out_dir : path
        Output directory (created if needed).
    subjects : sequence of str, optional
        Default: every subject with complete maps of ``metric``.
    storage_options : dict, optional
        fsspec options of a remote store given as a URL.
    metric : {"cfh", "cfh_subject", "vmhc", "ai"}
        Which maps.

    Returns
    -------
    list of Path
        For each subject ``<subject>_<metric>.nii.gz`` (3D; Fisher z for CFH
        and VMHC, the index itself for AI; 0 outside the mask and where there
        is no value).  With ``cfh_subject`` also ``<subject>_counterpart_subject.nii.gz``
        (4D, 3 volumes: the counterpart's MNI x, y, z in mm; 0 where none).
        With ``cfh`` also, once, ``group_counterpart.nii.gz`` (the group
        counterpart's x, y, z) and ``group_counterpart_displacement.nii.gz``
        (mm from each voxel's mirror position to its group counterpart).
    """
    if metric not in METRICS:
        raise CfhdaskInputError(f"metric {metric!r}: not one of {', '.join(METRICS)}")
    if not isinstance(store, CohortStore):
        store = open_store(str(store), storage_options=storage_options)
    available = store.subjects(metric)
    names = list(available if subjects is None else subjects)
    missing = [s for s in names if s not in available]
    if missing:
        raise CfhdaskInputError(
            f"store {store.url}: no {METRIC_LABELS[metric]} results for {', '.join(missing)}")
    out = check_export_dir(out_dir)
    paths: list[Path] = []
    for subject in names:
        values = store.cfh_maps([subject], metric).values[0]
        paths.append(_volume(store, values, f"{metric} {subject}",
                             out / f"{subject}_{metric}.nii.gz"))
        if metric == "cfh_subject":
            cp = store.cfh_maps([subject], "cfh_subject_counterpart").values[0]
            paths.append(_volume(store, counterpart_coordinates(store, cp),
                                 f"counterpart MNI xyz {subject}",
                                 out / f"{subject}_counterpart_subject.nii.gz"))
    group = store.group_counterpart() if metric == "cfh" else None
    if group is not None:
        paths.append(_volume(store, counterpart_coordinates(store, group["index"]),
                             "group counterpart MNI xyz", out / "group_counterpart.nii.gz"))
        paths.append(_volume(store, counterpart_displacement(store.xyz, group["index"]),
                             "group counterpart distance to the mirror voxel (mm)",
                             out / "group_counterpart_displacement.nii.gz"))
    return paths
