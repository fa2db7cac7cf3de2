"""Tiny fMRIPrep-like and DPABI-like folders for the denoising tests."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prep_helpers import SPACE, fmriprep_table, make_bold, save_bold, save_table


@pytest.fixture
def fmriprep_dir(tmp_path, rng):
    """Derivatives: sub-01; sub-02 with two sessions; sub-03 with two runs;
    sub-04 without confounds; a run in another space and another task."""
    root = tmp_path / "derivatives"
    n_vol = 50

    def run(sub, ses=None, run=None, task="rest", space=SPACE, confounds=True, tr=2.0):
        ents = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_task-{task}" + (
            f"_run-{run}" if run else "")
        func = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"
        bold = save_bold(func / f"{ents}_space-{space}_desc-preproc_bold.nii.gz",
                         make_bold(rng, n_vol), tr=tr)
        (func / f"{ents}_space-{space}_desc-preproc_bold.json").write_text(
            json.dumps({"RepetitionTime": 2.0, "TaskName": task}))
        if confounds:
            save_table(func / f"{ents}_desc-confounds_timeseries.tsv", fmriprep_table(rng, n_vol))
        return bold

    run("01")
    run("02", ses="1")
    run("02", ses="2")
    run("03", run="1")
    run("03", run="2")
    run("04", confounds=False)
    run("01", space="MNI152NLin6Asym")
    run("01", task="motor")
    return root


@pytest.fixture
def dpabi_dir(tmp_path, rng):
    """DPABI: sub001 and sub002 with rp files, sub003 without."""
    root = tmp_path / "dpabi"
    n_vol = 50
    for sub in ("sub001", "sub002", "sub003"):
        save_bold(root / "FunImgARCW" / sub / f"wCovRegressed_4DVolume_{sub}.nii",
                  make_bold(rng, n_vol))
        if sub != "sub003":
            rp = root / "RealignParameter" / sub / f"rp_{sub}.txt"
            rp.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(rp, rng.standard_normal((n_vol, 6)).cumsum(axis=0) * 0.05, fmt="%.8e")
    return root
