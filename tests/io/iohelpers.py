"""Helpers of the I/O tests: a tiny grid, NIfTI writing, store snapshots."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np

#: 10 x 12 x 8 grid, 3 mm, x-flipped (x = 15 - 3 i: i = 5 is the midline).
SHAPE = (10, 12, 8)
AFFINE = np.array([[-3.0, 0, 0, 15.0], [0, 3.0, 0, -18.0], [0, 0, 3.0, -12.0], [0, 0, 0, 1]])


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE,
                tr: float | None = 2.0) -> str:
    """Save ``data`` as NIfTI (gz by suffix) with TR in seconds; return the path."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None and data.ndim == 4:
        img.header.set_zooms((*img.header.get_zooms()[:3], tr))
    nib.save(img, path)
    return str(path)


def tree_digest(root: str | Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under ``root`` (empty if absent)."""
    root = Path(root)
    out = {}
    if not root.exists():
        return out
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out
