"""The per-subject denoising graph: equal to nilearn, chunk-independent, lazy, on Dask."""

from __future__ import annotations

import json
import logging

import dask
import nibabel as nib
import numpy as np
import pytest
from nilearn import image, signal
from prep_helpers import AFFINE, SHAPE, fmriprep_table, make_bold, save_bold, save_table

from cfhdask.cli import main
from cfhdask.errors import CfhdaskInputError
from cfhdask.grid import voxel_table
from cfhdask.inputs import SubjectInput
from cfhdask.io.nifti import read_header
from cfhdask.io.store import CohortStore
from cfhdask.prep import confounds as conf
from cfhdask.prep import denoise as kern
from cfhdask.prep.discover import discover_inputs
from cfhdask.prep.ingest import StoreInfo, ingest
from cfhdask.prep.mask import gm_mask
from cfhdask.prep.pipeline import (
    DenoiseParams,
    denoise_graph,
    make_prepare,
    plan_subject,
    prepare_series,
)

DROP = 6


@pytest.fixture(scope="module")
def store_ijk():
    return voxel_table(gm_mask(SHAPE, AFFINE), AFFINE).ijk


def info_for(bold, ijk, drop=DROP):
    return StoreInfo(url="mem://", grid_shape=SHAPE, affine=AFFINE, ijk=ijk, drop_volumes=drop,
                     header=read_header(bold))


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def nilearn_reference(bold, ijk, confounds, *, tr=2.0, fwhm=4.0, order="sequential"):
    """Paper pipeline with nilearn: smooth_img, then signal.clean (regress, then filter)."""
    img = nib.load(bold)
    kept = np.asarray(img.get_fdata(dtype=np.float32))[..., DROP:]
    if fwhm:
        kept = image.smooth_img(nib.Nifti1Image(kept, img.affine), fwhm).get_fdata(
            dtype=np.float32)
    series = kept[ijk[:, 0], ijk[:, 1], ijk[:, 2]].T.astype(np.float64)
    if order == "clean":
        return signal.clean(series, confounds=confounds, detrend=True, standardize=None,
                            high_pass=0.01, low_pass=0.1, t_r=tr).T
    r = signal.clean(series, confounds=confounds, detrend=True, standardize=None, filter=False)
    return signal.clean(r, detrend=False, standardize=None, high_pass=0.01, low_pass=0.1,
                        t_r=tr).T


def image_tissue_means(bold):
    kept = np.asarray(nib.load(bold).get_fdata(dtype=np.float32))[..., DROP:]
    return np.stack([kept[m].mean(axis=0, dtype=np.float64)
                     for m in conf.tissue_masks(SHAPE, AFFINE)], axis=1)


@pytest.mark.parametrize("order", [("smooth", "regress", "filter"), ("smooth", "clean")])
def test_fmriprep_subject_equals_nilearn(fmriprep_dir, store_ijk, order):
    inputs, _ = discover_inputs(bids_derivatives=str(fmriprep_dir), participant_label="01")
    inp = inputs[0]
    params = DenoiseParams(drop_volumes=DROP, order=order)
    series, attrs = prepare_series(inp, info_for(inp.bold, store_ijk), params)
    out = series.compute(scheduler="sync")
    table = conf.read_confounds_table(inp.confounds).fillna(0.0)  # n/a only in first rows
    cols = conf.friston24_names() + ["white_matter", "csf", "global_signal"]
    ref = nilearn_reference(inp.bold, store_ijk, table[cols].to_numpy()[DROP:],
                            order="clean" if "clean" in order else "sequential")
    assert out.dtype == np.float32 and out.shape == (len(store_ijk), 50 - DROP)
    assert rel_err(out, ref) < 1e-5
    pre = attrs["preprocessing"]
    assert attrs["tr"] == 2.0 and attrs["n_volumes"] == 44 and attrs["n_dropped"] == DROP
    assert pre["steps"] == list(order) and pre["regressors"] == cols
    assert pre["regressors_from_images"] == [] and pre["tr_source"] == "sidecar"
    assert pre["parameters"] == params.to_dict()


def test_dpabi_subject_equals_nilearn(dpabi_dir, store_ijk):
    inputs, _ = discover_inputs(dpabi=str(dpabi_dir))
    inp = inputs[0]
    params = DenoiseParams(drop_volumes=DROP)
    series, attrs = prepare_series(inp, info_for(inp.bold, store_ijk), params)
    out = series.compute(scheduler="sync")
    motion = np.loadtxt(inp.realign)
    confounds = np.hstack([conf.friston24(motion)[DROP:], image_tissue_means(inp.bold)])
    assert rel_err(out, nilearn_reference(inp.bold, store_ijk, confounds)) < 1e-5
    pre = attrs["preprocessing"]
    assert pre["regressors_from_images"] == ["white_matter", "csf", "global_signal"]
    assert pre["tr_source"] == "header" and "csf" in pre["tissue_masks"]


def in_memory(bold, ijk, params, confounds, tr=2.0):
    """The whole run in memory with the kernels: any order of steps."""
    data = np.asarray(nib.load(bold).get_fdata(dtype=np.float32))[..., params.drop_volumes:]
    brain = conf.tissue_masks(SHAPE, AFFINE, ["global_signal"])[0].copy()
    brain[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = False
    wide = np.concatenate([ijk, np.argwhere(brain)])
    steps = params.steps()
    smooth_late = "smooth" in steps and steps.index("smooth") > 0
    sel = wide if smooth_late else ijk
    vol = data
    s = None
    detrended = False
    for st in steps:
        if st == "smooth":
            if s is not None:
                vol = np.zeros_like(data)
                vol[sel[:, 0], sel[:, 1], sel[:, 2]] = s
            vol = kern.smooth_volumes(vol, AFFINE, params.smoothing_fwhm)
            s = None
            sel = ijk
            continue
        if s is None:
            s = vol[sel[:, 0], sel[:, 1], sel[:, 2]].astype(np.float64)
        if not detrended:
            s, detrended = kern.detrend_linear(s), True
        if st == "regress":
            s = kern.regress_out(s, kern.confound_basis(confounds))
        elif st == "filter":
            s = kern.bandpass(s, kern.butterworth_sos(tr, params.high_pass, params.low_pass))
    if s is None:
        s = vol[sel[:, 0], sel[:, 1], sel[:, 2]]
    return s[: len(ijk)]


@pytest.mark.parametrize("order", [("regress", "filter", "smooth"), ("regress", "smooth", "filter"),
                                   ("smooth", "regress", "filter")])
def test_chunked_graph_equals_in_memory(dpabi_dir, store_ijk, order):
    inputs, _ = discover_inputs(dpabi=str(dpabi_dir))
    inp = inputs[1]
    params = DenoiseParams(drop_volumes=DROP, order=order)
    header = read_header(inp.bold)
    plan = plan_subject(inp, header, params)
    confounds = np.hstack([plan.table, image_tissue_means(inp.bold)])
    ref = in_memory(inp.bold, store_ijk, params, confounds)
    outs = []
    for tb, vc in ((7, 50), (44, 1000), (1, 333)):
        x = denoise_graph(plan, header, store_ijk, params, time_block=tb, voxel_chunk=vc)
        assert x.chunks[0][0] == min(vc, len(store_ijk)) and len(x.chunks[1]) == 1
        outs.append(x.compute(scheduler="sync"))
    for out in outs:
        assert rel_err(out, ref) < 1e-5
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-5 * np.abs(ref).max())


def test_steps_switched_off(dpabi_dir, store_ijk):
    inp = discover_inputs(dpabi=str(dpabi_dir))[0][0]
    params = DenoiseParams(drop_volumes=DROP, smoothing_fwhm=None, motion=None, wm=False,
                           csf=False, global_signal=False, high_pass=None, low_pass=None,
                           detrend=False)
    series, attrs = prepare_series(inp, info_for(inp.bold, store_ijk), params)
    raw = np.asarray(nib.load(inp.bold).dataobj)[..., DROP:]
    np.testing.assert_array_equal(series.compute(scheduler="sync"),
                                  raw[store_ijk[:, 0], store_ijk[:, 1], store_ijk[:, 2]])
    assert attrs["preprocessing"]["steps"] == []
    only_detrend = DenoiseParams(drop_volumes=DROP, smoothing_fwhm=0, motion=None, wm=False,
                                 csf=False, global_signal=False, high_pass=None, low_pass=None)
    out = prepare_series(inp, info_for(inp.bold, store_ijk), only_detrend)[0].compute()
    ref = signal.clean(raw[store_ijk[:, 0], store_ijk[:, 1], store_ijk[:, 2]].T.astype(float),
                       detrend=True, standardize=None, filter=False).T
    assert rel_err(out, ref) < 1e-5


def test_graph_building_is_lazy(fmriprep_dir, store_ijk):
    inp = discover_inputs(bids_derivatives=str(fmriprep_dir))[0][0]

    def refuse(*args, **kwargs):
        raise AssertionError("graph building computed something")

    with dask.config.set(scheduler=refuse):
        series, _ = prepare_series(inp, info_for(inp.bold, store_ijk),
                                   DenoiseParams(drop_volumes=DROP))
    assert series.shape == (len(store_ijk), 44)


def test_on_local_client_same_as_sync(local_client, dpabi_dir, store_ijk):
    inp = discover_inputs(dpabi=str(dpabi_dir))[0][0]
    params = DenoiseParams(drop_volumes=DROP)
    x, _ = prepare_series(inp, info_for(inp.bold, store_ijk), params)
    np.testing.assert_array_equal(local_client.compute(x).result(),
                                  x.compute(scheduler="sync"))


def test_ingest_with_denoising_keeps_good_subjects(local_client, fmriprep_dir, tmp_path):
    # break sub-03 run-2: a confounds table one row short
    bad = next(fmriprep_dir.glob("sub-03/func/*run-2_desc-confounds_timeseries.tsv"))
    save_table(bad, fmriprep_table(np.random.default_rng(1), 49))
    inputs, skipped = discover_inputs(bids_derivatives=str(fmriprep_dir))
    params = DenoiseParams(drop_volumes=DROP)
    url = str(tmp_path / "store.zarr")
    with pytest.raises(CfhdaskInputError, match=r"sub-03_run-2:.*has 49 rows but the BOLD"):
        ingest(inputs, url, drop_volumes=DROP, prepare=make_prepare(params),
               client=local_client)
    store = CohortStore.open(url)
    assert store.subjects() == ["sub-01", "sub-02_ses-1", "sub-02_ses-2", "sub-03_run-1"]
    attrs = store.subject_attrs("sub-02_ses-1")
    assert attrs["preprocessing"]["parameters"]["order"] == ["smooth", "regress", "filter"]
    assert attrs["n_volumes"] == 44 and attrs["tr"] == 2.0
    assert store.bold("sub-01").shape == (store.n_voxels, 44)


def test_bad_inputs_name_the_file(tmp_path, rng, store_ijk, caplog):
    bold = save_bold(tmp_path / "sub-05_task-rest_bold.nii", make_bold(rng, 40), tr=None)
    header = read_header(bold)
    params = DenoiseParams(drop_volumes=DROP)
    with pytest.raises(CfhdaskInputError, match="sub-05_task-rest_bold.nii: no confounds table"):
        plan_subject(SubjectInput("sub-05", bold), header, params)
    table = save_table(tmp_path / "sub-05_desc-confounds_timeseries.tsv", fmriprep_table(rng, 40))
    inp = SubjectInput("sub-05", bold, confounds=table)
    with pytest.raises(CfhdaskInputError, match="no repetition time for .*sub-05.*--tr"):
        plan_subject(inp, header, params)
    assert plan_subject(inp, header, DenoiseParams(drop_volumes=DROP, tr=2.0)).tr == 2.0
    # header 2.5 s, sidecar 2 s: warning with both values, the sidecar wins
    bold2 = save_bold(tmp_path / "sub-06_task-rest_bold.nii", make_bold(rng, 40), tr=2.5)
    side = tmp_path / "sub-06_task-rest_bold.json"
    side.write_text(json.dumps({"RepetitionTime": 2.0}))
    with caplog.at_level(logging.WARNING):
        plan = plan_subject(SubjectInput("sub-06", bold2, confounds=table, sidecar=str(side)),
                            read_header(bold2), params)
    assert plan.tr == 2.0 and "2.5" in caplog.text and "sub-06_task-rest_bold.json" in caplog.text
    with pytest.raises(CfhdaskInputError, match="sub-05_task-rest_bold.nii: 40 volumes, 5 after"):
        plan_subject(SubjectInput("sub-05", bold, confounds=table, tr=2.0), header,
                     DenoiseParams(drop_volumes=35))


def test_params_validation():
    with pytest.raises(CfhdaskInputError, match="--order: .*'smooth'.*got 'blur'"):
        DenoiseParams(order=("smooth", "blur"))
    with pytest.raises(CfhdaskInputError, match="replaces"):
        DenoiseParams(order=("clean", "filter"))
    with pytest.raises(CfhdaskInputError, match="high-pass 0.2 Hz must be below low-pass 0.1"):
        DenoiseParams(high_pass=0.2, low_pass=0.1)
    assert DenoiseParams(motion="none").motion is None


def test_cli_confounds_lists_subjects(fmriprep_dir, dpabi_dir, capsys):
    rc = main(["confounds", "--bids-derivatives", str(fmriprep_dir), "--drop-volumes", "10"])
    out = capsys.readouterr().out
    assert rc == 1  # sub-04 has no confounds
    assert "sub-02_ses-2" in out and "40/50" in out and "Friston-24" in out
    assert "2 (sidecar)" in out and "smooth > regress > filter" in out
    assert "sub-04: " in out and "no confounds table" in out
    rc = main(["confounds", "--dpabi", str(dpabi_dir), "--participant-label", "sub001",
               "--order", "smooth,clean", "--no-global-signal"])
    out = capsys.readouterr().out
    assert rc == 0 and "white_matter*, csf*" in out and "global" not in out.split("\n")[1]
    assert "smooth > clean" in out
