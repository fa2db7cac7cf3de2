"""Builders of tiny BOLD images and confounds tables for the denoising tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cfhdask.prep.confounds import MOTION_COLUMNS, friston24, friston24_names

#: A 12 x 14 x 10 grid at 3 mm (x flipped) around the MNI centre: it holds
#: voxels of every template mask (WM, CSF, brain).
SHAPE = (12, 14, 10)
AFFINE = np.array([[-3.0, 0, 0, 16.5], [0, 3.0, 0, -36.0], [0, 0, 3.0, 0.0], [0, 0, 0, 1.0]])
SPACE = "MNI152NLin2009cAsym"


def make_bold(rng: np.random.Generator, n_vol: int, shape=SHAPE) -> np.ndarray:
    """Spatially smooth-ish noise with drifts and a shared slow signal, float32."""
    t = np.arange(n_vol)
    data = rng.standard_normal((*shape, n_vol))
    data += 0.5 * np.sin(2 * np.pi * 0.03 * t * 2.0)  # a 0.03 Hz signal at TR 2
    data += 0.02 * t  # drift
    return (data + 100.0).astype(np.float32)


def save_bold(path: Path, data: np.ndarray, affine=AFFINE, tr: float | None = 2.0) -> str:
    """Write a 4D NIfTI; ``tr`` into pixdim[4] (None: 0, i.e. unset)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = tr or 0.0
    nib.save(img, str(path))
    return str(path)


def fmriprep_table(rng: np.random.Generator, n_vol: int, *, tissue: bool = True) -> pd.DataFrame:
    """An fMRIPrep-like confounds table (expansions, n/a first-row derivatives)."""
    motion = rng.standard_normal((n_vol, 6)).cumsum(axis=0) * 0.05
    table = pd.DataFrame(friston24(motion), columns=friston24_names())
    for c in MOTION_COLUMNS:
        table.loc[0, f"{c}_derivative1"] = np.nan
        table.loc[0, f"{c}_derivative1_power2"] = np.nan
    if tissue:
        for c in ("white_matter", "csf", "global_signal"):
            table[c] = 500 + rng.standard_normal(n_vol)
    table["framewise_displacement"] = np.r_[np.nan, np.abs(rng.standard_normal(n_vol - 1))]
    return table


def save_table(path: Path, table: pd.DataFrame) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return str(path)
