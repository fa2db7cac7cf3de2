"""Confound tables, Friston-24 selection, TR resolution and tissue masks; bad inputs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from prep_helpers import AFFINE, SHAPE, fmriprep_table, save_table

from cfhdask.errors import CfhdaskInputError
from cfhdask.prep import confounds as conf


def test_fmriprep_table_uses_its_columns_and_fills_first_row(tmp_path, rng):
    table = fmriprep_table(rng, 20)
    table["trans_x_power2"] = 7.0  # not the square: proves the table column is used
    path = save_table(tmp_path / "sub-01_desc-confounds_timeseries.tsv", table)
    t = conf.read_confounds_table(path)
    assert np.isnan(t["trans_x_derivative1"].iloc[0])
    sel = conf.select_confounds(t, path, n_volumes=20)
    assert sel.names == conf.friston24_names() + ["white_matter", "csf", "global_signal"]
    assert sel.from_data == []
    m = sel.matrix
    assert m.shape == (20, 27) and np.isfinite(m).all()
    assert (m[:, sel.names.index("trans_x_power2")] == 7.0).all()
    assert m[0, sel.names.index("rot_z_derivative1")] == 0.0
    assert m[0, sel.names.index("rot_z_derivative1_power2")] == 0.0
    np.testing.assert_array_equal(m[:, sel.names.index("csf")], table["csf"].to_numpy())
    assert any("first-row n/a set to 0" in n for n in sel.notes)


def test_rp_file_friston24_computed(tmp_path, rng):
    motion = rng.standard_normal((15, 6))
    path = tmp_path / "rp_sub001.txt"
    np.savetxt(path, motion)
    t = conf.read_confounds_table(str(path))
    assert list(t.columns) == list(conf.MOTION_COLUMNS)
    sel = conf.select_confounds(t, str(path), n_volumes=15)
    np.testing.assert_allclose(sel.matrix, conf.friston24(motion), rtol=1e-12)
    assert sel.from_data == ["white_matter", "csf", "global_signal"]
    six = conf.select_confounds(t, str(path), n_volumes=15, motion="6", wm=False, csf=False,
                                global_signal=False)
    np.testing.assert_allclose(six.matrix, motion, rtol=1e-12)


def test_plain_csv_with_header(tmp_path, rng):
    motion = rng.standard_normal((12, 6))
    path = tmp_path / "sub-02_confounds.csv"
    pd.DataFrame(motion, columns=conf.MOTION_COLUMNS).assign(csf=1.0).to_csv(path, index=False)
    sel = conf.select_confounds(conf.read_confounds_table(str(path)), str(path), n_volumes=12,
                                wm=False, global_signal=False)
    assert sel.names[-1] == "csf" and sel.matrix.shape == (12, 25)


def test_wrong_row_count_names_file(tmp_path, rng):
    path = save_table(tmp_path / "c.tsv", fmriprep_table(rng, 20))
    with pytest.raises(CfhdaskInputError, match=r"c\.tsv has 20 rows but the BOLD run has 25"):
        conf.select_confounds(conf.read_confounds_table(path), path, n_volumes=25)


def test_missing_motion_columns_names_file(tmp_path, rng):
    table = fmriprep_table(rng, 10).drop(columns=["rot_y"])
    path = save_table(tmp_path / "bad.tsv", table)
    with pytest.raises(CfhdaskInputError, match=r"bad\.tsv lacks the motion columns \['rot_y'\]"):
        conf.select_confounds(conf.read_confounds_table(path), path, n_volumes=10)
    # no motion model: the table is fine
    conf.select_confounds(conf.read_confounds_table(path), path, n_volumes=10, motion=None)


def test_nan_inside_column_is_an_error(tmp_path, rng):
    table = fmriprep_table(rng, 10)
    table.loc[4, "trans_y"] = np.nan
    path = save_table(tmp_path / "nan.tsv", table)
    with pytest.raises(CfhdaskInputError, match=r"nan\.tsv: column 'trans_y'.*rows \[4\]"):
        conf.select_confounds(conf.read_confounds_table(path), path, n_volumes=10)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CfhdaskInputError, match="nope.tsv: no such file"):
        conf.read_confounds_table(str(tmp_path / "nope.tsv"))
    (tmp_path / "empty.tsv").write_text("\n")
    with pytest.raises(CfhdaskInputError, match="empty.tsv is empty"):
        conf.read_confounds_table(str(tmp_path / "empty.tsv"))


def test_tr_missing_asks_for_tr():
    with pytest.raises(CfhdaskInputError, match=r"no repetition time for b\.nii.*--tr"):
        conf.resolve_tr(bold="b.nii", header=None, sidecar=None, sidecar_path="b.json")


def test_tr_disagreement_warns_with_both_values(caplog):
    with caplog.at_level(logging.WARNING, logger="cfhdask.prep.confounds"):
        tr, src = conf.resolve_tr(bold="b.nii", header=2.5, sidecar=2.0, sidecar_path="b.json")
    assert (tr, src) == (2.0, "sidecar")
    assert "2 s in sidecar b.json vs 2.5 s in the header of b.nii" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cfhdask.prep.confounds"):
        assert conf.resolve_tr(bold="b.nii", header=2.0, sidecar=2.0, user=1.5) == (1.5, "--tr")
    assert "--tr 1.5 s overrides TR 2 s" in caplog.text
    assert conf.resolve_tr(bold="b.nii", header=2.0) == (2.0, "header")


def test_sidecar_tr(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"RepetitionTime": 0.72}))
    assert conf.sidecar_tr(str(p)) == 0.72
    p.write_text(json.dumps({"TaskName": "rest"}))
    assert conf.sidecar_tr(str(p)) is None
    p.write_text("{not json")
    with pytest.raises(CfhdaskInputError, match="s.json is not valid JSON"):
        conf.sidecar_tr(str(p))


def test_tissue_masks_on_small_grid():
    masks = conf.tissue_masks(SHAPE, AFFINE)
    assert masks.shape == (3, *SHAPE) and masks.dtype == bool
    wm, csf, brain = masks
    assert wm.any() and csf.any() and brain.any()
    assert not (wm & csf).any()
    assert (csf <= brain).all()
    far = AFFINE.copy()
    far[:3, 3] += 500.0  # a grid far outside MNI space
    empty = conf.tissue_masks(SHAPE, far, ["csf"])
    with pytest.raises(CfhdaskInputError, match="x.nii: the MNI csf mask has no voxel"):
        conf.check_tissue_masks(empty, ["csf"], "x.nii")
