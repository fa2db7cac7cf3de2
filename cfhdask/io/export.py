"""Export per-subject CFH results as NIfTI images on the input grid."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cfhdask.errors import CfhdaskInputError
from cfhdask.io.nifti import write_nifti
from cfhdask.io.store import CohortStore, open_store

log = logging.getLogger(__name__)


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
        write_nifti(p_cfh, store.to_volume(cfh), store.affine,
                    description=f"cfhdask CFH Fisher z {subject}")
        write_nifti(p_cp, store.to_volume(coords.T), store.affine,
                    description=f"cfhdask counterpart MNI xyz {subject}")
        paths += [p_cfh, p_cp]
        log.info("Exported %s and %s", p_cfh, p_cp)
    return paths
