"""Export per-subject CFH results as NIfTI images on the input grid."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from cfhdask.errors import CfhdaskInputError
from cfhdask.io.atomic import atomic_write
from cfhdask.io.store import CohortStore, open_store

log = logging.getLogger(__name__)


def _save(data: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description.encode()[:79]
    atomic_write(path, lambda tmp: nib.save(img, tmp))  # never a half-written image


def export_maps(store: CohortStore | str, out_dir: str | os.PathLike,
                subjects: Sequence[str] | None = None,
                storage_options: dict | None = None) -> list[Path]:
    """Write each subject's CFH map and counterpart coordinates as NIfTI.

    Parameters
    ----------
    store : CohortStore or str
        The cohort store (or its URL).
    out_dir : path
        Output directory (created if needed).
    subjects : sequence of str, optional
        Default: every subject with complete CFH results.
    storage_options : dict, optional
        fsspec options of a remote store given as a URL.

    Returns
    -------
    list of Path
        For each subject ``<subject>_cfh.nii.gz`` (3D Fisher z, 0 outside the
        mask and where there is no CFH) and ``<subject>_counterpart.nii.gz``
        (4D, 3 volumes: the counterpart's MNI x, y, z in mm; 0 where none).
    """
    if not isinstance(store, CohortStore):
        store = open_store(str(store), storage_options=storage_options)
    available = store.subjects("cfh")
    names = list(available if subjects is None else subjects)
    missing = [s for s in names if s not in available]
    if missing:
        raise CfhdaskInputError(
            f"store {store.url}: no CFH results for {', '.join(missing)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    xyz = store.xyz.astype(np.float32)
    paths: list[Path] = []
    for subject in names:
        cfh = np.asarray(store.cfh_maps([subject], "cfh").values[0], dtype=np.float32)
        cfh = np.where(np.isfinite(cfh), cfh, np.float32(0))
        counterpart = np.asarray(store.cfh_maps([subject], "counterpart").values[0])
        has = counterpart >= 0
        coords = np.zeros((store.n_voxels, 3), dtype=np.float32)
        coords[has] = xyz[counterpart[has]]
        p_cfh = out / f"{subject}_cfh.nii.gz"
        p_cp = out / f"{subject}_counterpart.nii.gz"
        _save(store.to_volume(cfh), store.affine, p_cfh, f"cfhdask CFH Fisher z {subject}")
        _save(store.to_volume(coords.T), store.affine, p_cp,
              f"cfhdask counterpart MNI xyz {subject}")
        paths += [p_cfh, p_cp]
        log.info("Exported %s and %s", p_cfh, p_cp)
    return paths
