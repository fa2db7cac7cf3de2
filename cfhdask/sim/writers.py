"""Writing a simulated subject: NIfTI, confounds, realignment files, sidecars.

NIfTI files are written directly (nibabel header + one data block, int16 with
``scl_slope`` or float32), gzip level 1 when compressed, to a temporary name
that is renamed when complete.  This is ~3x faster than ``nibabel.save`` of a
float image and leaves no half-written file.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cfhdask.io.atomic import write_text
from cfhdask.sim.anatomy import Anatomy

MOTION_NAMES = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
LAYOUTS = ("bids", "fmriprep", "dpabi")
FMRIPREP_SPACE = "MNI152NLin2009cAsym"


def subject_paths(out_dir: Path, subject: str, layout: str, compress: bool) -> dict[str, Path]:
    """Where a subject's files go in each layout (keys: bold, sidecar, confounds, realign)."""
    ext = ".nii.gz" if compress else ".nii"
    if layout == "bids":
        func = out_dir / subject / "func"
        stem = f"{subject}_task-rest"
        return {"bold": func / f"{stem}_bold{ext}", "sidecar": func / f"{stem}_bold.json"}
    if layout == "fmriprep":
        func = out_dir / subject / "func"
        stem = f"{subject}_task-rest_space-{FMRIPREP_SPACE}_desc-preproc_bold"
        return {"bold": func / f"{stem}{ext}", "sidecar": func / f"{stem}.json",
                "confounds": func / f"{subject}_task-rest_desc-confounds_timeseries.tsv"}
    if layout == "dpabi":
        return {"bold": out_dir / "FunImgARCW" / subject / f"wra{subject}_4DVolume.nii",
                "realign": out_dir / "RealignParameter" / subject / f"rp_a{subject}_4DVolume.txt"}
    raise ValueError(layout)


def _atomic(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.part")


def write_volume_series(path: Path, anatomy: Anatomy, data: np.ndarray, tr: float,
                        dtype: str = "int16") -> None:
    """Write brain-voxel series (T, n) as a 4D NIfTI on the anatomy's grid.

    Parameters
    ----------
    path : Path
        ``.nii`` or ``.nii.gz`` (gzip level 1).
    anatomy : Anatomy
        Grid and voxel order.
    data : ndarray (T, n) float32
    tr : float
        Repetition time written as pixdim[4] (seconds).
    dtype : {"int16", "float32"}
        int16 stores ``round(y / slope)`` with ``scl_slope = max|y| / 32000``.
    """
    t_len = data.shape[0]
    nx, ny, nz = anatomy.shape
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((nx, ny, nz, t_len))
    zooms = np.sqrt(np.sum(anatomy.affine[:3, :3] ** 2, axis=0))
    hdr.set_zooms((*zooms.tolist(), float(tr)))
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_qform(anatomy.affine, code=4)
    hdr.set_sform(anatomy.affine, code=4)
    hdr["descrip"] = b"cfhdask simulate"
    if dtype == "int16":
        hdr.set_data_dtype(np.int16)
        slope = float(np.max(np.abs(data))) / 32000.0 or 1.0
        q = np.empty(data.shape, dtype=np.int16)
        np.rint(data / np.float32(slope), out=q, casting="unsafe")
        hdr["scl_slope"], hdr["scl_inter"] = slope, 0.0
    elif dtype == "float32":
        hdr.set_data_dtype(np.float32)
        q = np.asarray(data, dtype=np.float32)
        hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    else:
        raise ValueError(dtype)
    hdr["vox_offset"] = 352
    hdr["cal_min"], hdr["cal_max"] = 0.0, 0.0
    vol = np.zeros((t_len, nx * ny * nz), dtype=q.dtype)  # C (T, Z, Y, X) == F (X, Y, Z, T)
    for src, dst, n in anatomy.runs:
        vol[:, dst:dst + n] = q[:, src:src + n]
    head = hdr.binaryblock + b"\x00\x00\x00\x00"
    tmp = _atomic(path)
    try:
        if str(path).endswith(".gz"):
            # gzip container, deflate level 1 with the run-length strategy: ~1.5x faster
            # than the default strategy on this data, smaller, and deterministic bytes.
            comp = zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_RLE)
            with open(tmp, "wb") as f:
                f.write(comp.compress(head))
                f.write(comp.compress(memoryview(vol).cast("B")))
                f.write(comp.flush())
        else:
            with open(tmp, "wb") as f:
                f.write(head)
                f.write(memoryview(vol).cast("B"))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def motion_confounds(motion: np.ndarray) -> pd.DataFrame:
    """The 24 fMRIPrep motion columns: params, derivative1, power2, derivative1_power2."""
    cols = {}
    for j, name in enumerate(MOTION_NAMES):
        x = motion[:, j]
        d = np.concatenate([[np.nan], np.diff(x)])
        cols[name] = x
        cols[f"{name}_derivative1"] = d
        cols[f"{name}_power2"] = x ** 2
        cols[f"{name}_derivative1_power2"] = d ** 2
    return pd.DataFrame(cols)


def tissue_signals(anatomy: Anatomy, data: np.ndarray) -> pd.DataFrame:
    """Mean signals per volume: global_signal (brain), white_matter, csf."""
    return pd.DataFrame({
        "global_signal": data.mean(axis=1, dtype=np.float64),
        "white_matter": data[:, anatomy.wm_mask].mean(axis=1, dtype=np.float64),
        "csf": data[:, anatomy.csf_mask].mean(axis=1, dtype=np.float64),
    })


def write_confounds(path: Path, anatomy: Anatomy, data: np.ndarray, motion: np.ndarray) -> None:
    """fMRIPrep-like ``desc-confounds_timeseries.tsv`` (first derivative row ``n/a``)."""
    df = pd.concat([tissue_signals(anatomy, data), motion_confounds(motion)], axis=1)
    write_text(path, df.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.12g"))


def write_realign(path: Path, motion: np.ndarray) -> None:
    """SPM/DPABI ``rp_*.txt``: six columns (mm, mm, mm, rad, rad, rad), one row per volume."""
    write_text(path, "".join("  ".join(f"{v: .7e}" for v in row) + "\n" for row in motion))


