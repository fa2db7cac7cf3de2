"""Denoising kernels against nilearn (signal.clean, smooth_img) and hand references."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from nilearn import image, signal

from cfhdask.prep import denoise as kern
from cfhdask.prep.confounds import friston24


def rel_err(a, b) -> float:
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(np.asarray(a, dtype=np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("high_pass, low_pass", [(0.01, 0.1), (0.01, None), (None, 0.1),
                                                 (None, None)])
@pytest.mark.parametrize("detrend", [True, False])
@pytest.mark.parametrize("with_confounds", [True, False])
def test_clean_series_equals_nilearn(rng, high_pass, low_pass, detrend, with_confounds):
    n, t = 40, 90
    s = (rng.standard_normal((n, t)).cumsum(axis=1) + 50).astype(np.float32)
    c = rng.standard_normal((t, 6)) if with_confounds else None
    ref = signal.clean(s.T.astype(np.float64), confounds=c, detrend=detrend, standardize=None,
                       standardize_confounds=True, filter="butterworth", high_pass=high_pass,
                       low_pass=low_pass, t_r=2.0).T
    ours = kern.clean_series(s, c, tr=2.0, detrend=detrend, high_pass=high_pass,
                             low_pass=low_pass)
    assert ours.shape == (n, t)
    assert rel_err(ours, ref) < 1e-5


def test_sequential_regress_then_filter_equals_two_nilearn_calls(rng):
    s = rng.standard_normal((30, 80)) + 10
    c = rng.standard_normal((80, 4))
    r1 = signal.clean(s.T, confounds=c, detrend=True, standardize=None, filter=False)
    r2 = signal.clean(r1, detrend=False, standardize=None, high_pass=0.01, low_pass=0.1,
                      t_r=2.0).T
    x = kern.detrend_linear(s)
    x = kern.regress_out(x, kern.confound_basis(c, detrend=True))
    x = kern.bandpass(x, kern.butterworth_sos(2.0, 0.01, 0.1))
    assert rel_err(x, r2) < 1e-10


def test_rank_deficient_confounds_equal_nilearn(rng):
    s = rng.standard_normal((20, 70)) + 5
    c = rng.standard_normal((70, 5))
    c[:, 4] = 2 * c[:, 3] - c[:, 2]  # dependent column: dropped by the pivoted QR
    ref = signal.clean(s.T, confounds=c, detrend=True, standardize=None, filter=False).T
    ours = kern.clean_series(s, c, detrend=True)
    assert rel_err(ours, ref) < 1e-10
    assert kern.confound_basis(c).shape == (70, 4)


def test_regress_out_leaves_residual_orthogonal(rng):
    s = rng.standard_normal((5, 60))
    c = rng.standard_normal((60, 3))
    q = kern.confound_basis(c, detrend=False)
    r = kern.regress_out(s, q)
    cz = (c - c.mean(0))
    np.testing.assert_allclose(r @ cz, 0, atol=1e-10)
    np.testing.assert_allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-12)


def test_detrend_removes_line_exactly():
    t = np.arange(30.0)
    x = np.vstack([3 + 0.5 * t, -2 * t])
    np.testing.assert_allclose(kern.detrend_linear(x), 0, atol=1e-12)


def test_butterworth_cutoff_above_nyquist_is_clamped():
    sos = kern.butterworth_sos(2.0, 0.01, 0.5)  # 0.5 Hz >= Nyquist 0.25 Hz
    assert sos is not None and np.isfinite(sos).all()
    with pytest.raises(ValueError, match="below"):
        kern.butterworth_sos(2.0, 0.1, 0.01)
    assert kern.butterworth_sos(2.0, None, None) is None
    assert kern.min_volumes_for_filter(kern.butterworth_sos(2.0, 0.01, 0.1)) == 34


@pytest.mark.parametrize("affine", [np.diag([-3.0, 3.0, 3.0, 1.0]),
                                    np.diag([2.0, 2.5, 3.5, 1.0])])
@pytest.mark.parametrize("fwhm", [4.0, (4.0, 0.0, 6.0)])
def test_smoothing_equals_nilearn(rng, affine, fwhm):
    vol = rng.standard_normal((12, 14, 10, 4)).astype(np.float32)
    vol[0, 0, 0, 0] = np.nan  # nilearn sets non-finite values to 0 first
    ref = image.smooth_img(nib.Nifti1Image(vol, affine), fwhm).get_fdata(dtype=np.float32)
    ours = kern.smooth_volumes(vol, affine, fwhm)
    assert ours.dtype == np.float32
    assert rel_err(ours, ref) < 1e-5
    assert np.isnan(vol[0, 0, 0, 0])  # input untouched
    ours3d = kern.smooth_volumes(vol[..., 1], affine, fwhm)
    assert rel_err(ours3d, ref[..., 1]) < 1e-5


def test_smoothing_off_returns_copy(rng):
    vol = rng.standard_normal((4, 4, 4)).astype(np.float32)
    out = kern.smooth_volumes(vol, np.eye(4), None)
    np.testing.assert_array_equal(out, vol)
    assert out is not vol


def test_friston24_hand_reference():
    r = np.arange(18, dtype=np.float64).reshape(3, 6) ** 1.5
    f = friston24(r)
    assert f.shape == (3, 24)
    for t in range(3):
        for j in range(6):
            d = 0.0 if t == 0 else r[t, j] - r[t - 1, j]
            assert f[t, j] == r[t, j]
            assert f[t, 6 + j] == d
            assert f[t, 12 + j] == r[t, j] ** 2
            assert f[t, 18 + j] == d**2


def test_masked_means(rng):
    vols = rng.standard_normal((5, 6, 7, 3)).astype(np.float32)
    masks = np.stack([vols[..., 0] > 0, vols[..., 1] > 1])
    m = kern.masked_means(vols, masks)
    for k in range(2):
        np.testing.assert_allclose(m[:, k], vols[masks[k]].astype(np.float64).mean(0))
