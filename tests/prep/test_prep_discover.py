"""Input discovery: fMRIPrep derivatives, DPABI folders, plain files."""

from __future__ import annotations

import os

import pytest

from cfhdask.errors import CfhdaskInputError
from cfhdask.prep.discover import discover_inputs, subject_id


def test_subject_id():
    assert subject_id("/d/sub-01_ses-2_task-rest_run-3_bold.nii.gz") == "sub-01_ses-2_run-3"
    assert subject_id("sub-01_task-rest_desc-confounds_timeseries.tsv") == "sub-01"
    assert subject_id("s3://b/patient7.nii") == "patient7"
    assert subject_id("rp_patient7.txt") == "patient7"


def test_fmriprep_sessions_runs_and_skips(fmriprep_dir):
    inputs, skipped = discover_inputs(bids_derivatives=str(fmriprep_dir))
    subs = [i.subject for i in inputs]
    assert subs == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03_run-1", "sub-03_run-2"]
    for inp in inputs:
        assert "_space-MNI152NLin2009cAsym_" in inp.bold and "_task-rest_" in inp.bold
        assert inp.confounds.endswith("_desc-confounds_timeseries.tsv")
        assert os.path.basename(inp.confounds).split("_desc-")[0] == \
            os.path.basename(inp.bold).split("_space-")[0]
        assert inp.sidecar.endswith("_desc-preproc_bold.json")
        assert inp.extra["layout"] == "fmriprep"
    assert len(skipped) == 1 and skipped[0][0] == "sub-04"
    assert "sub-04_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz: no confounds" \
        in skipped[0][1]


def test_fmriprep_filters(fmriprep_dir):
    inputs, skipped = discover_inputs(bids_derivatives=str(fmriprep_dir),
                                      participant_label=["02", "sub-03"])
    assert [i.subject for i in inputs] == ["sub-02_ses-1", "sub-02_ses-2", "sub-03_run-1",
                                           "sub-03_run-2"]
    assert skipped == []
    other, _ = discover_inputs(bids_derivatives=str(fmriprep_dir), space="MNI152NLin6Asym")
    assert [i.subject for i in other] == ["sub-01"]
    motor, _ = discover_inputs(bids_derivatives=str(fmriprep_dir), task="motor")
    assert [i.subject for i in motor] == ["sub-01"]
    with pytest.raises(CfhdaskInputError, match="no \\*_space-T1w\\*_desc-preproc_bold"):
        discover_inputs(bids_derivatives=str(fmriprep_dir), space="T1w")
    with pytest.raises(CfhdaskInputError, match="not a folder"):
        discover_inputs(bids_derivatives=str(fmriprep_dir / "nope"))


def test_dpabi_layout(dpabi_dir):
    inputs, skipped = discover_inputs(dpabi=str(dpabi_dir))
    assert [i.subject for i in inputs] == ["sub001", "sub002"]
    assert all(i.realign.endswith(f"rp_{i.subject}.txt") and i.confounds is None for i in inputs)
    assert inputs[0].bold.endswith("FunImgARCW/sub001/wCovRegressed_4DVolume_sub001.nii")
    assert skipped == [("sub003", skipped[0][1])]
    assert "no RealignParameter/sub003/rp_*.txt" in skipped[0][1]
    # without motion regressors sub003 needs nothing else
    inputs, skipped = discover_inputs(dpabi=str(dpabi_dir), require_confounds=False)
    assert len(inputs) == 3 and skipped == []


def test_dpabi_several_image_folders(dpabi_dir):
    (dpabi_dir / "FunImgARCWS").mkdir()
    inputs, _ = discover_inputs(dpabi=str(dpabi_dir))  # the exact name wins
    assert len(inputs) == 2
    os.rename(dpabi_dir / "FunImgARCW", dpabi_dir / "FunImgARCWF")
    with pytest.raises(CfhdaskInputError, match="several FunImgARCW\\* folders.*--dpabi-dir"):
        discover_inputs(dpabi=str(dpabi_dir))
    inputs, _ = discover_inputs(dpabi=str(dpabi_dir), dpabi_dir="FunImgARCWF")
    assert len(inputs) == 2


def test_plain_files_paired_by_subject(tmp_path, dpabi_dir):
    b1 = tmp_path / "sub-01_task-rest_bold.nii"
    b2 = tmp_path / "sub-02_task-rest_bold.nii"
    c1 = tmp_path / "sub-01_desc-confounds_timeseries.tsv"
    r2 = tmp_path / "rp_sub-02_task-rest_bold.txt"
    for p in (b1, b2, c1, r2):
        p.write_text("x")
    (tmp_path / "sub-01_task-rest_bold.json").write_text("{}")
    inputs, skipped = discover_inputs(files=[str(b1), str(b2)], confounds=[str(r2), str(c1)],
                                      tr=2.5)
    a, b = inputs
    assert (a.subject, a.confounds, a.realign, a.tr) == ("sub-01", str(c1), None, 2.5)
    assert a.sidecar.endswith("sub-01_task-rest_bold.json")
    assert (b.subject, b.confounds, b.realign) == ("sub-02", None, str(r2))
    inputs, skipped = discover_inputs(files=[str(b1), str(b2)], confounds=[str(c1)])
    assert [i.subject for i in inputs] == ["sub-01"]
    assert skipped[0][0] == "sub-02" and "sub-02_task-rest_bold.nii: no confounds" in skipped[0][1]
    with pytest.raises(CfhdaskInputError, match="no BOLD file for subject.*sub-09"):
        discover_inputs(files=[str(b1), str(b2)], confounds=[str(tmp_path / "sub-09_c.tsv")])


def test_exactly_one_source(fmriprep_dir, dpabi_dir):
    with pytest.raises(CfhdaskInputError, match="exactly one input source"):
        discover_inputs()
    with pytest.raises(CfhdaskInputError, match="exactly one input source"):
        discover_inputs(bids_derivatives=str(fmriprep_dir), dpabi=str(dpabi_dir))
