"""Simulated cohort: files, headers, layouts, reproducibility, bad input."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cfhdask.errors import CfhdaskInputError
from cfhdask.sim.anatomy import Effect, build_anatomy, resolve_grid
from cfhdask.sim.cohort import simulate_cohort

GRID = "6mm"  # 31 x 37 x 31, whole MNI brain, ~9k brain voxels: fast
KW = dict(grid=GRID, n_volumes=24, tr=2.0, layout="bids")


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def bids_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("bids")
    df = simulate_cohort(out, n_patients=2, n_controls=3, seed=5, n_jobs=2, **KW)
    return out, df


def test_bids_files_headers(bids_cohort):
    out, df = bids_cohort
    shape, affine = resolve_grid(GRID)
    assert list(df["participant_id"]) == ["sub-P01", "sub-P02", "sub-C01", "sub-C02", "sub-C03"]
    for pid in df["participant_id"]:
        bold = out / pid / "func" / f"{pid}_task-rest_bold.nii.gz"
        img = nib.load(bold)
        assert img.shape == (*shape, 24)
        np.testing.assert_allclose(img.affine, affine)
        assert img.header.get_zooms()[3] == pytest.approx(2.0)
        assert img.header.get_xyzt_units() == ("mm", "sec")
        data = img.get_fdata(dtype=np.float32)
        assert np.isfinite(data).all()
        brain = data.std(axis=3) > 0
        assert 5000 < brain.sum() < 12000            # the MNI brain at 6 mm
        assert np.all(data[~brain] == 0)              # zeros outside the brain
        assert 600 < data[brain].mean() < 1400        # baseline ~1000
        side = json.loads((out / pid / "func" / f"{pid}_task-rest_bold.json").read_text())
        assert side["RepetitionTime"] == 2.0
    back = pd.read_csv(out / "participants.tsv", sep="\t")
    pd.testing.assert_frame_equal(back, df, check_dtype=False)
    sim = json.loads((out / "simulation.json").read_text())
    assert sim["grid_shape"] == list(shape) and len(sim["effects"]) == 2
    assert not list(out.rglob("*.part"))


def test_uncompressed_float32_matches_int16(tmp_path, bids_cohort):
    out, _ = bids_cohort
    simulate_cohort(tmp_path, n_patients=2, n_controls=0, seed=5, compress=False,
                    dtype="float32", n_jobs=1, **KW)
    a = nib.load(tmp_path / "sub-P02/func/sub-P02_task-rest_bold.nii").get_fdata()
    b = nib.load(out / "sub-P02/func/sub-P02_task-rest_bold.nii.gz").get_fdata()
    slope = float(nib.load(out / "sub-P02/func/sub-P02_task-rest_bold.nii.gz").dataobj.slope)
    assert np.max(np.abs(a - b)) <= slope * 0.5 + 1e-3  # int16 quantisation only


def test_reproducible_independent_of_jobs(tmp_path, bids_cohort):
    out, df = bids_cohort
    df1 = simulate_cohort(tmp_path, n_patients=2, n_controls=3, seed=5, n_jobs=1, **KW)
    pd.testing.assert_frame_equal(df1, df)
    for pid in df["participant_id"]:
        rel = f"{pid}/func/{pid}_task-rest_bold.nii.gz"
        assert _sha(tmp_path / rel) == _sha(out / rel)
    # adding subjects does not change existing ones; another seed does
    more = tmp_path / "more"
    simulate_cohort(more, n_patients=3, n_controls=1, seed=5, n_jobs=2, **KW)
    assert _sha(more / "sub-C01/func/sub-C01_task-rest_bold.nii.gz") == \
        _sha(out / "sub-C01/func/sub-C01_task-rest_bold.nii.gz")
    other = tmp_path / "other"
    simulate_cohort(other, n_patients=1, n_controls=0, seed=6, n_jobs=1, **KW)
    assert _sha(other / "sub-P01/func/sub-P01_task-rest_bold.nii.gz") != \
        _sha(out / "sub-P01/func/sub-P01_task-rest_bold.nii.gz")


def test_same_on_dask_client(tmp_path, bids_cohort, local_client):
    out, df = bids_cohort
    df2 = simulate_cohort(tmp_path, n_patients=2, n_controls=3, seed=5, client=local_client,
                          **KW)
    pd.testing.assert_frame_equal(df2, df)
    rel = "sub-C03/func/sub-C03_task-rest_bold.nii.gz"
    assert _sha(tmp_path / rel) == _sha(out / rel)


def test_fmriprep_layout(tmp_path):
    simulate_cohort(tmp_path, n_patients=1, n_controls=1, seed=1, n_jobs=1,
                    **{**KW, "layout": "fmriprep"})
    func = tmp_path / "sub-C01" / "func"
    stem = "sub-C01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold"
    img = nib.load(func / f"{stem}.nii.gz")
    assert img.shape[3] == 24
    assert json.loads((func / f"{stem}.json").read_text())["RepetitionTime"] == 2.0
    conf_path = func / "sub-C01_task-rest_desc-confounds_timeseries.tsv"
    assert "n/a" in conf_path.read_text().splitlines()[1]
    conf = pd.read_csv(conf_path, sep="\t")
    assert len(conf) == 24
    motion = ["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    for m in motion:
        for suffix in ("", "_derivative1", "_power2", "_derivative1_power2"):
            assert m + suffix in conf
        assert np.isnan(conf[f"{m}_derivative1"].iloc[0])
        assert conf[f"{m}_derivative1"].iloc[1:].notna().all()
        np.testing.assert_allclose(conf[f"{m}_derivative1"].iloc[1:],
                                   np.diff(conf[m]), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(conf[f"{m}_power2"], conf[m] ** 2, rtol=1e-5, atol=1e-12)
    for c in ("global_signal", "white_matter", "csf"):
        assert conf[c].notna().all()
    # global signal = mean over brain voxels of the image
    data = img.get_fdata()
    brain = data.std(axis=3) > 0
    np.testing.assert_allclose(conf["global_signal"], data[brain].mean(axis=0), rtol=1e-3)
    assert (conf[["trans_x", "trans_y", "trans_z"]].abs().max() < 5).all()
    assert (conf[["rot_x", "rot_y", "rot_z"]].abs().max() < 0.1).all()
    desc = json.loads((tmp_path / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"


def test_dpabi_layout(tmp_path):
    simulate_cohort(tmp_path, n_patients=1, n_controls=1, seed=1, n_jobs=1, **{**KW, "layout": "dpabi"})
    for pid in ("sub-P01", "sub-C01"):
        niis = list((tmp_path / "FunImgARCW" / pid).glob("*.nii"))
        assert len(niis) == 1
        assert nib.load(niis[0]).shape[3] == 24
        rps = list((tmp_path / "RealignParameter" / pid).glob("rp_*.txt"))
        assert len(rps) == 1
        rp = np.loadtxt(rps[0])
        assert rp.shape == (24, 6)
        np.testing.assert_allclose(rp[0], 0.0, atol=1e-12)
        assert np.abs(rp[:, :3]).max() < 5 and np.abs(rp[:, 3:]).max() < 0.1
    assert (tmp_path / "participants.tsv").exists()


@pytest.mark.parametrize("kwargs, field", [
    (dict(layout="afni"), "layout"),
    (dict(n_patients=0, n_controls=0), "n_patients"),
    (dict(n_volumes=1), "n_volumes"),
    (dict(tr=0.0), "tr"),
    (dict(effect_size=-1.0), "effect_size"),
    (dict(dtype="int8"), "dtype"),
    (dict(grid="5mm"), "grid"),
    (dict(effects=(Effect("nowhere", (0.0, -200.0, 0.0)),)), "effects"),
])
def test_bad_input(tmp_path, kwargs, field):
    args = dict(n_patients=1, n_controls=1, grid=GRID, n_volumes=12, n_jobs=1)
    args.update(kwargs)
    with pytest.raises(CfhdaskInputError, match=field):
        simulate_cohort(tmp_path / "x", **args)
    assert not list((tmp_path).rglob("*.nii*"))


def test_cli_simulate(tmp_path, capsys):
    from cfhdask.cli import main

    rc = main(["simulate", "--out", str(tmp_path), "--n-patients", "1", "--n-controls", "1",
               "--n-volumes", "12", "--grid", GRID, "--layout", "fmriprep", "--seed", "3",
               "--no-compress", "--tr", "2.5"])
    assert rc == 0
    assert "Simulated 1 patients and 1 controls" in capsys.readouterr().out
    bold = next(tmp_path.rglob("*desc-preproc_bold.nii"))
    assert nib.load(bold).header.get_zooms()[3] == pytest.approx(2.5)
    assert main(["simulate", "--out", str(tmp_path), "--grid", "7mm"]) == 2


def test_anatomy_lateral_counterparts():
    an = build_anatomy(GRID)
    # every parcel pair has voxels in both hemispheres
    for code in (-1, 1):
        assert set(np.unique(an.pair[an.hemisphere == code])) == set(range(an.n_pairs))
    assert 0.0 < an.loading.min() and an.loading.max() < 1.0
