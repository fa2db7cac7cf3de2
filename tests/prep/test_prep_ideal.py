"""DPABI's ideal band-pass: the kernel against y_IdealFilter.m written out by hand,
the exact band rank, the pipeline option and its bad inputs."""

from __future__ import annotations

import cmath
import math

import nibabel as nib
import numpy as np
import pytest
import yaml
from nilearn import image, signal
from prep_helpers import AFFINE, SHAPE, fmriprep_table, make_bold, save_bold, save_table

from cfhdask import settings
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
from cfhdask.prep.pipeline import DenoiseParams, make_prepare, plan_subject, prepare_series

DROP = 6


def y_ideal_filter(data: np.ndarray, sample_period: float, band) -> np.ndarray:
    """DPABI's y_IdealFilter.m, statement by statement, with MATLAB's 1-based indices and
    an explicit DFT (no FFT).  ``data`` is time x series; ``band`` as DPABI's, 0 = none."""
    n_time, n_series = data.shape
    sample_freq = 1.0 / sample_period
    padded = 1
    while padded < n_time:  # 2^nextpow2(n_time)
        padded *= 2
    low_cutoff, high_cutoff = band
    if low_cutoff >= sample_freq / 2:
        idx_low = padded / 2 + 1
    else:
        idx_low = math.ceil(low_cutoff * padded * sample_period + 1)
    if high_cutoff >= sample_freq / 2 or high_cutoff == 0:
        idx_high = padded / 2 + 1
    else:
        idx_high = math.trunc(high_cutoff * padded * sample_period + 1)
    mask = [0] * (padded + 2)  # mask[1..padded] (MATLAB grows it to padded + 1 for idx 1)
    i = int(idx_low)
    while i <= idx_high:  # FrequencyMask(idxLow:idxHigh) = 1
        mask[i] = 1
        i += 1
    i = int(padded - idx_low + 2)
    while i >= padded - idx_high + 2:  # FrequencyMask(P-idxLow+2:-1:P-idxHigh+2) = 1
        mask[i] = 1
        i -= 1
    zero_index = [i for i in range(1, padded + 1) if mask[i] == 0]
    out = np.empty((n_time, n_series))
    for s in range(n_series):
        x = [float(v) for v in data[:, s]]
        mean = sum(x) / n_time
        x = [v - mean for v in x] + [0.0] * (padded - n_time)  # demean, zero-pad
        spec = [sum(x[t] * cmath.exp(-2j * math.pi * k * t / padded) for t in range(padded))
                for k in range(padded)]
        for i in zero_index:
            spec[i - 1] = 0.0
        for t in range(n_time):
            out[t, s] = (sum(spec[k] * cmath.exp(2j * math.pi * k * t / padded)
                             for k in range(padded)) / padded).real
    return out


#: (T, TR, high-pass, low-pass): the paper's band; cutoffs exactly on bins; low-pass
#: only (DC kept); high-pass only; a low-pass above Nyquist; a high-pass above Nyquist
#: (only the Nyquist bin); an HCP-like TR; T a power of two.
CASES = [
    (44, 2.0, 0.01, 0.1),
    (64, 1.0, 4 / 64, 16 / 64),
    (50, 2.0, None, 0.08),
    (50, 2.0, 0.05, None),
    (37, 2.0, 0.02, 0.4),
    (40, 2.0, 0.3, None),
    (90, 0.72, 0.01, 0.1),
    (32, 2.0, 0.01, 0.1),
]


@pytest.mark.parametrize("n_time, tr, high_pass, low_pass", CASES)
def test_ideal_filter_equals_dpabi_written_out(rng, n_time, tr, high_pass, low_pass):
    x = rng.standard_normal((3, n_time)).cumsum(axis=1) + 20.0
    ref = y_ideal_filter(x.T, tr, (high_pass or 0.0, low_pass or 0.0)).T
    ours = kern.ideal_bandpass(x, tr, high_pass, low_pass)
    assert ours.dtype == np.float64 and ours.shape == x.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10 * np.abs(ref).max() + 1e-12)
    # time along axis 0 as well
    np.testing.assert_allclose(kern.ideal_bandpass(x.T, tr, high_pass, low_pass, axis=0), ref.T,
                               rtol=0, atol=1e-10 * np.abs(ref).max() + 1e-12)


def test_ideal_bins_at_the_band_edges():
    # T = 64, TR = 1 s: bins every 1/64 Hz; cutoffs exactly on bins 4 and 16 keep both
    assert kern.ideal_padded_length(64) == 64 and kern.ideal_padded_length(65) == 128
    assert kern.ideal_padded_length(1) == 1
    bins = kern.ideal_filter_bins(64, 1.0, 4 / 64, 16 / 64)
    assert bins[0] == 4 and bins[-1] == 16 and len(bins) == 13
    # the paper's band at TR 2, T = 220: P = 256, bins 6 (0.0117 Hz) .. 51 (0.0996 Hz)
    bins = kern.ideal_filter_bins(220, 2.0, 0.01, 0.1)
    assert (bins[0], bins[-1]) == (6, 51)
    assert kern.ideal_rank(220, 2.0, 0.01, 0.1) == 2 * 46
    # low-pass only keeps the DC bin (not counted in the rank: the mean is removed)
    assert kern.ideal_filter_bins(50, 2.0, None, 0.08)[0] == 0
    assert kern.ideal_rank(50, 2.0, None, 0.08) == 2 * 10
    # no low-pass: up to the Nyquist bin, which adds one dimension
    bins = kern.ideal_filter_bins(50, 2.0, 0.1, None)
    assert (bins[0], bins[-1]) == (13, 32)
    assert kern.ideal_rank(50, 2.0, 0.1, None) == 2 * 19 + 1
    assert kern.ideal_rank(50, 2.0, 0.05, None) == 49  # at most T - 1: no mean
    # a band between two bins holds none
    assert kern.ideal_rank(20, 2.0, 0.02, 0.03) == 0
    assert len(kern.ideal_filter_bins(20, 2.0, 0.02, 0.03)) == 0


def kept_bin_basis(n_time: int, tr: float, high_pass, low_pass) -> np.ndarray:
    """(T, 2 K) cosines and sines of the kept non-DC bins over the T samples."""
    padded = kern.ideal_padded_length(n_time)
    t = np.arange(n_time)
    cols = []
    for k in kern.ideal_filter_bins(n_time, tr, high_pass, low_pass):
        if k > 0:
            cols.append(np.cos(2 * np.pi * k * t / padded))
            if 2 * k != padded:  # the Nyquist bin has no sine
                cols.append(np.sin(2 * np.pi * k * t / padded))
    return np.stack(cols, axis=1)


def residual_outside(series: np.ndarray, basis: np.ndarray) -> float:
    """Largest norm left in a series after projecting it on span(basis), relative."""
    coef, *_ = np.linalg.lstsq(basis, series.T, rcond=None)
    return float(np.linalg.norm(series.T - basis @ coef, axis=0).max()
                 / np.linalg.norm(series, axis=1).max())


@pytest.mark.parametrize("n_time, tr, high_pass, low_pass",
                         [*CASES, (220, 2.0, 0.01, 0.1), (1200, 0.72, 0.01, 0.1)])
def test_filtered_series_lie_in_the_kept_bins(rng, n_time, tr, high_pass, low_pass):
    """Nothing outside the cosines and sines of the kept bins: an exact basis of
    ``ideal_rank`` dimensions (cut to T < P samples some of its directions carry
    little energy: the exponentials are then close to dependent)."""
    x = rng.standard_normal((50, n_time)).cumsum(axis=1)
    basis = kept_bin_basis(n_time, tr, high_pass, low_pass)
    assert min(basis.shape[1], n_time - 1) == kern.ideal_rank(n_time, tr, high_pass, low_pass)
    assert residual_outside(kern.ideal_bandpass(x, tr, high_pass, low_pass), basis) < 1e-12


@pytest.mark.parametrize("n_time, tr, high_pass, low_pass",
                         [c for c in CASES if c[0] in (32, 37, 40, 64)])
def test_filtered_series_span_exactly_the_kept_bins(rng, n_time, tr, high_pass, low_pass):
    # well conditioned: T = P, or a band far from T - 1 dimensions
    x = rng.standard_normal((400, n_time))
    s = np.linalg.svd(kern.ideal_bandpass(x, tr, high_pass, low_pass), compute_uv=False)
    rank = kern.ideal_rank(n_time, tr, high_pass, low_pass)
    assert s[rank - 1] > 1e-2 * s[0]
    assert rank == n_time - 1 or s[rank] < 1e-12 * s[0]


def test_band_filter_kinds(rng):
    x = rng.standard_normal((4, 60))
    np.testing.assert_array_equal(kern.band_filter(2.0, 0.01, 0.1, "ideal")(x),
                                  kern.ideal_bandpass(x, 2.0, 0.01, 0.1))
    np.testing.assert_array_equal(kern.band_filter(2.0, 0.01, 0.1)(x),
                                  kern.bandpass(x, kern.butterworth_sos(2.0, 0.01, 0.1)))
    assert kern.band_filter(2.0, None, None, "ideal") is None
    with pytest.raises(ValueError, match="unknown filter 'fir'"):
        kern.band_filter(2.0, 0.01, 0.1, "fir")
    with pytest.raises(ValueError, match="below"):
        kern.band_filter(2.0, 0.1, 0.01, "ideal")
    assert kern.FILTERS == settings.FILTERS


def test_clean_series_ideal_equals_filter_then_nilearn_regression(rng):
    n, t = 30, 70
    s = rng.standard_normal((n, t)).cumsum(axis=1) + 50
    c = rng.standard_normal((t, 5))
    det_s = signal.clean(s.T, detrend=True, standardize=None, filter=False)
    det_c = signal.clean(c, detrend=True, standardize=None, filter=False)
    fs, fc = (y_ideal_filter(a, 2.0, (0.01, 0.1)) for a in (det_s, det_c))
    ref = signal.clean(fs, confounds=fc, detrend=False, standardize=None, filter=False,
                       standardize_confounds=True).T
    ours = kern.clean_series(s, c, tr=2.0, high_pass=0.01, low_pass=0.1, filter="ideal")
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9 * np.abs(ref).max())


# ----------------------------------------------------------------- pipeline


@pytest.fixture(scope="module")
def store_ijk():
    return voxel_table(gm_mask(SHAPE, AFFINE), AFFINE).ijk


def _info(bold, ijk):
    return StoreInfo(url="mem://", grid_shape=SHAPE, affine=AFFINE, ijk=ijk, drop_volumes=DROP,
                     header=read_header(bold))


def test_pipeline_ideal_equals_nilearn_then_dpabi_filter(fmriprep_dir, store_ijk):
    inp = discover_inputs(bids_derivatives=str(fmriprep_dir), participant_label="01")[0][0]
    params = DenoiseParams(drop_volumes=DROP, filter="ideal")
    series, attrs = prepare_series(inp, _info(inp.bold, store_ijk), params)
    out = series.compute(scheduler="sync")
    img = nib.load(inp.bold)
    kept = image.smooth_img(nib.Nifti1Image(img.get_fdata(dtype=np.float32)[..., DROP:],
                                            img.affine), 4.0).get_fdata(dtype=np.float32)
    x = kept[store_ijk[:, 0], store_ijk[:, 1], store_ijk[:, 2]].T.astype(np.float64)
    table = conf.read_confounds_table(inp.confounds).fillna(0.0)
    cols = conf.friston24_names() + ["white_matter", "csf", "global_signal"]
    regressed = signal.clean(x, confounds=table[cols].to_numpy()[DROP:], detrend=True,
                             standardize=None, filter=False)
    ref = y_ideal_filter(regressed[:, :40], 2.0, (0.01, 0.1))  # the reference is slow
    assert np.abs(out[:40] - ref.T).max() < 1e-5 * np.abs(ref).max()
    band = attrs["preprocessing"]["filter"]
    assert band["kind"] == "ideal" and band["padded_length"] == 64 and band["bins"] == [2, 12]
    assert band["rank"] == 22 and band["band"] == "0.01-0.1 Hz"
    assert attrs["preprocessing"]["parameters"]["filter"] == "ideal"
    assert residual_outside(out.astype(np.float64), kept_bin_basis(44, 2.0, 0.01, 0.1)) < 1e-5


def test_subject_series_span_exactly_the_kept_bins(tmp_path, rng, store_ijk):
    """The paper's pipeline with the ideal filter on a 70-volume run (64 kept, TR 2 s):
    the subject's series span 2 x 11 dimensions, the cosines and sines of bins 2-12."""
    bold = save_bold(tmp_path / "sub-08_task-rest_bold.nii.gz", make_bold(rng, 70))
    table = save_table(tmp_path / "sub-08_desc-confounds_timeseries.tsv",
                       fmriprep_table(rng, 70))
    inp = SubjectInput("sub-08", bold, confounds=table)
    params = DenoiseParams(drop_volumes=DROP, filter="ideal")
    series, attrs = prepare_series(inp, _info(bold, store_ijk), params)
    out = series.compute(scheduler="sync").astype(np.float64)
    assert attrs["preprocessing"]["filter"]["rank"] == 22
    s = np.linalg.svd(out, compute_uv=False)
    assert s[21] > 1e-2 * s[0] and s[22] < 1e-6 * s[0]  # float32 output: ~1e-7 noise
    assert residual_outside(out, kept_bin_basis(64, 2.0, 0.01, 0.1)) < 1e-5


def test_butterworth_provenance(fmriprep_dir, store_ijk):
    inp = discover_inputs(bids_derivatives=str(fmriprep_dir), participant_label="01")[0][0]
    _, attrs = prepare_series(inp, _info(inp.bold, store_ijk), DenoiseParams(drop_volumes=DROP))
    band = attrs["preprocessing"]["filter"]
    assert band["kind"] == "butterworth" and "order 5" in band["definition"]
    _, attrs = prepare_series(inp, _info(inp.bold, store_ijk),
                              DenoiseParams(drop_volumes=DROP, high_pass=None, low_pass=None))
    assert attrs["preprocessing"]["filter"] is None


def test_ideal_band_without_bins_is_an_input_error(tmp_path, rng):
    bold = save_bold(tmp_path / "sub-07_task-rest_bold.nii", make_bold(rng, 26))
    table = save_table(tmp_path / "sub-07_desc-confounds_timeseries.tsv",
                       fmriprep_table(rng, 26))
    inp = SubjectInput("sub-07", bold, confounds=table)
    params = DenoiseParams(drop_volumes=DROP, filter="ideal", high_pass=0.02, low_pass=0.03)
    with pytest.raises(CfhdaskInputError,
                       match=r"sub-07_task-rest_bold.nii: the ideal filter's band 0.02-0.03 Hz "
                             r"holds no frequency bin at TR 2 s and T = 20 volumes \(zero-padded "
                             r"to 32: bins every 0.01562 Hz\)"):
        plan_subject(inp, read_header(bold), params)
    wider = DenoiseParams(drop_volumes=DROP, filter="ideal", high_pass=0.02, low_pass=0.05)
    assert plan_subject(inp, read_header(bold), wider).steps[-1] == "filter"  # bins 2 and 3


def test_cli_filter_option_and_bad_values(fmriprep_dir, tmp_path, capsys):
    args = ["--bids-derivatives", str(fmriprep_dir), "--participant-label", "01",
            "--drop-volumes", str(DROP)]
    assert main(["confounds", *args, "--filter", "ideal"]) == 0
    assert "filter': 'ideal'" in capsys.readouterr().out
    for cmd in (["confounds"], ["ingest", "--out", str(tmp_path / "s.zarr")]):
        assert main([*cmd, *args, "--filter", "fir"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith("error: --filter: input should be 'butterworth' or 'ideal' "
                            "(got 'fir')") and "\n" not in err
        # at T = 44, TR 2 s the bins are 1/128 Hz apart: 0.05-0.054 Hz holds none
        rc = main([*cmd, *args, "--filter", "ideal", "--high-pass", "0.05",
                   "--low-pass", "0.054"])
        out = capsys.readouterr().out
        assert rc == 1
        assert "the ideal filter's band 0.05-0.054 Hz holds no frequency bin at TR 2 s and " \
               "T = 44 volumes" in out
    assert not (tmp_path / "s.zarr").exists()


def test_ingest_with_ideal_filter_records_the_band(local_client, fmriprep_dir, tmp_path):
    inputs, _ = discover_inputs(bids_derivatives=str(fmriprep_dir), participant_label="01")
    params = DenoiseParams(drop_volumes=DROP, filter="ideal")
    store = ingest(inputs, str(tmp_path / "s.zarr"), drop_volumes=DROP,
                   prepare=make_prepare(params), client=local_client)
    pre = CohortStore.open(store.url).subject_attrs("sub-01")["preprocessing"]
    assert pre["filter"]["kind"] == "ideal" and pre["filter"]["rank"] == 22
    assert pre["filter"]["frequencies_hz"] == [2 / 128, 12 / 128]



def test_study_yaml_filter_errors(tmp_path, capsys):
    from cfhdask.sim.cohort import simulate_cohort
    from cfhdask.study.config import validate_config

    sim = tmp_path / "sim"
    simulate_cohort(str(sim), n_patients=1, n_controls=1, n_volumes=30, grid="9mm",
                    layout="fmriprep", seed=1, n_jobs=1)
    cfg = {"output": str(tmp_path / "out"), "participants": str(sim / "participants.tsv"),
           "inputs": {"bids_derivatives": str(sim)},
           "preprocessing": {"drop_volumes": 4, "filter": "fir"},
           "cluster": {"n_workers": 1, "processes": False}}
    with pytest.raises(CfhdaskInputError, match=r"config key 'preprocessing.filter': input "
                                                r"should be 'butterworth' or 'ideal'"):
        validate_config(cfg, str(tmp_path))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 2
    assert "'preprocessing.filter'" in capsys.readouterr().err
    # T = 26 at TR 2 s: bins 1/64 Hz apart, none in 0.05-0.054 Hz
    cfg["preprocessing"].update(filter="ideal", high_pass=0.05, low_pass=0.054)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 2  # every run skipped before any compute
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no input runs found" in err
    assert not (tmp_path / "out").exists()
    assert "the ideal filter's band 0.05-0.054 Hz holds no frequency bin at TR 2 s and " \
           "T = 26 volumes" in err
