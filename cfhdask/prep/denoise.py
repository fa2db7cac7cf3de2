"""Denoising kernels: detrend, confound regression, band-pass, Gaussian smoothing.

Pure array functions (no Dask, no I/O) written once for NumPy and CuPy through
:func:`cfhdask.backend.array_module`.  Series are stored **voxel x time**
(``(n, T)``, time last) as in the cohort store; confound tables are
**time x regressor** (``(T, k)``) as in fMRIPrep/nilearn.

The arithmetic reproduces :func:`nilearn.signal.clean` and
:func:`nilearn.image.smooth_img` step for step (checked in the tests within
1e-5 relative):

* linear detrend = remove the mean, then the projection on the centred,
  unit-norm ramp (nilearn ``_detrend``);
* band-pass = Butterworth, order 5, second-order sections, applied forward and
  backward with :func:`scipy.signal.sosfiltfilt` (odd padding, SciPy's default
  pad length), the critical frequencies nudged below Nyquist as nilearn does;
* confound regression = confounds detrended (and, in the combined
  :func:`clean_series` step, band-passed) like the signals, z-scored
  (``ddof=1``), then a pivoted economic QR whose columns with
  ``|R_ii| <= 100 eps`` are dropped, and ``s -= Q Q^T s``;
* smoothing = :func:`scipy.ndimage.gaussian_filter1d` along each spatial axis,
  ``sigma = FWHM / (sqrt(8 ln 2) * voxel size)`` with voxel sizes from the
  affine's column norms, ``mode="reflect"``, ``truncate=4``.

Series kernels compute in float64 and return float64; callers cast.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.signal

from cfhdask.backend import array_module, to_numpy

#: Butterworth order used by nilearn's ``signal.clean``.
BUTTERWORTH_ORDER = 5
_FWHM_OVER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))


def _scipy_for(xp):
    """(scipy.signal, scipy.ndimage) or their cupyx counterparts for ``xp``."""
    if xp is np:
        return scipy.signal, scipy.ndimage
    import cupyx.scipy.ndimage as cndimage  # pragma: no cover - GPU only
    import cupyx.scipy.signal as csignal  # pragma: no cover

    return csignal, cndimage  # pragma: no cover


def detrend_linear(x, axis: int = -1):
    """Remove the mean and the linear trend along ``axis`` (nilearn's ``_detrend``).

    Parameters
    ----------
    x : ndarray
        Series; time along ``axis``.
    axis : int
        Time axis.

    Returns
    -------
    ndarray, float64
        Detrended copy. A length-1 series is returned (as float64) unchanged.
    """
    xp = array_module(x)
    x = xp.moveaxis(xp.asarray(x, dtype=xp.float64), axis, -1)
    n = x.shape[-1]
    if n == 1:
        return xp.moveaxis(x.copy(), -1, axis)
    x = x - x.mean(axis=-1, keepdims=True)
    ramp = xp.arange(n, dtype=xp.float64)
    ramp -= ramp.mean()
    ramp /= xp.sqrt((ramp**2).sum())
    x = x - (x @ ramp)[..., None] * ramp
    return xp.moveaxis(x, -1, axis)


def _critical_frequency(freq: float, nyq: float) -> float:
    """nilearn's ``_check_wn``: keep a cutoff strictly inside (0, Nyquist)."""
    eps = float(np.finfo(np.float32).eps)
    if freq >= nyq:
        return nyq - nyq * 10 * eps
    if freq < 0.0:
        return nyq * eps
    return freq


def butterworth_sos(
    tr: float,
    high_pass: float | None,
    low_pass: float | None,
    order: int = BUTTERWORTH_ORDER,
) -> np.ndarray | None:
    """Second-order sections of nilearn's Butterworth band/high/low-pass filter.

    Parameters
    ----------
    tr : float
        Repetition time in seconds (sampling rate ``1/tr``).
    high_pass, low_pass : float or None
        Cutoffs in Hz (``high_pass`` removes slower drifts, ``low_pass``
        faster fluctuations).  Both None: no filter.
    order : int
        Filter order (5 as nilearn).

    Returns
    -------
    ndarray of shape (n_sections, 6) or None
        None when no filtering is asked for (or, as nilearn, when both
        cutoffs collapse onto the same frequency).

    Raises
    ------
    ValueError
        ``high_pass >= low_pass``.
    """
    if high_pass is None and low_pass is None:
        return None
    if high_pass is not None and low_pass is not None and high_pass >= low_pass:
        raise ValueError(f"high_pass ({high_pass}) must be below low_pass ({low_pass})")
    fs = 1.0 / float(tr)
    nyq = 0.5 * fs
    wn: list[float] = []
    if high_pass is not None:
        wn.append(_critical_frequency(float(high_pass), nyq))
        btype = "high"
    if low_pass is not None:
        wn.append(_critical_frequency(float(low_pass), nyq))
        btype = "low"
    if len(wn) == 2:
        btype = "band"
        if wn[0] == wn[1]:
            return None
        crit: float | list[float] = wn
    else:
        crit = wn[0]
    return scipy.signal.butter(N=order, Wn=crit, btype=btype, output="sos", fs=fs)


def bandpass(x, sos: np.ndarray | None, axis: int = -1):
    """Zero-phase Butterworth filtering along ``axis`` (``sosfiltfilt``, odd padding).

    Parameters
    ----------
    x : ndarray
        Series, time along ``axis``; its length must exceed SciPy's pad length
        (``3 * (2 * n_sections + 1)``).
    sos : ndarray or None
        From :func:`butterworth_sos`; None returns ``x`` as float64.
    axis : int
        Time axis.
    """
    xp = array_module(x)
    x = xp.asarray(x, dtype=xp.float64)
    if sos is None:
        return x.copy()
    signal, _ = _scipy_for(xp)
    return signal.sosfiltfilt(xp.asarray(sos), x, axis=axis, padtype="odd")


def min_volumes_for_filter(sos: np.ndarray | None) -> int:
    """Fewest time points :func:`bandpass` accepts (SciPy's pad length + 1)."""
    if sos is None:
        return 1
    n_sections = np.asarray(sos).shape[0]
    return 3 * (2 * n_sections + 1) + 1


def confound_basis(
    confounds,
    *,
    detrend: bool = True,
    sos: np.ndarray | None = None,
):
    """Orthonormal basis of the confound space, prepared as ``signal.clean`` does.

    Parameters
    ----------
    confounds : ndarray of shape (T, k)
        Nuisance regressors, time first.
    detrend : bool
        Detrend the confounds (as the signals are).
    sos : ndarray, optional
        Band-pass the confounds with this filter first (combined
        regress + filter step, Lindquist et al. 2018); None: not filtered.

    Returns
    -------
    ndarray of shape (T, r), float64
        ``Q`` with orthonormal columns spanning the usable confounds
        (``r <= k``; near-dependent columns dropped by the pivoted QR).
    """
    xp = array_module(confounds)
    c = xp.asarray(confounds, dtype=xp.float64)
    if c.ndim == 1:
        c = c[:, None]
    if detrend:
        c = detrend_linear(c, axis=0)
    if sos is not None:
        c = bandpass(c, sos, axis=0)
    # z-score (ddof=1) as nilearn's standardize_signal(..., "zscore_sample")
    c = c - c.mean(axis=0)
    std = c.std(axis=0, ddof=1)
    std = xp.where(std < np.finfo(np.float64).eps, 1.0, std)
    c = c / std
    # pivoted QR: SciPy on the host (k is tiny), moved back to the backend.
    q, r, _ = scipy.linalg.qr(to_numpy(c), mode="economic", pivoting=True)
    q = q[:, np.abs(np.diag(r)) > np.finfo(np.float64).eps * 100.0]
    return xp.asarray(q)


def regress_out(signals, basis):
    """Remove the span of ``basis`` (T, r) from each series of ``signals`` (n, T).

    Returns float64 ``signals - (signals @ Q) @ Q^T``.
    """
    xp = array_module(signals, basis)
    s = xp.asarray(signals, dtype=xp.float64)
    q = xp.asarray(basis, dtype=xp.float64)
    if q.shape[1] == 0:
        return s.copy()
    return s - (s @ q) @ q.T


def clean_series(
    signals,
    confounds=None,
    *,
    tr: float | None = None,
    detrend: bool = True,
    high_pass: float | None = None,
    low_pass: float | None = None,
):
    """nilearn's ``signal.clean`` (``standardize=False``) on voxel x time series.

    Order (as nilearn): detrend signals and confounds; band-pass both; regress
    the prepared confounds out of the signals.

    Parameters
    ----------
    signals : ndarray of shape (n, T)
    confounds : ndarray of shape (T, k), optional
    tr : float, optional
        Needed when a cutoff is given.
    detrend : bool
    high_pass, low_pass : float, optional
        Cutoffs in Hz.

    Returns
    -------
    ndarray of shape (n, T), float64
    """
    xp = array_module(signals)
    s = xp.asarray(signals, dtype=xp.float64)
    sos = None
    if high_pass is not None or low_pass is not None:
        if tr is None:
            raise ValueError("band-pass filtering needs the repetition time (tr)")
        sos = butterworth_sos(tr, high_pass, low_pass)
    if detrend:
        s = detrend_linear(s, axis=-1)
    if sos is not None:
        s = bandpass(s, sos, axis=-1)
    if confounds is not None:
        s = regress_out(s, confound_basis(confounds, detrend=detrend, sos=sos))
    return s


def smoothing_sigmas(affine: np.ndarray, fwhm: float | tuple[float, float, float]) -> np.ndarray:
    """Gaussian sigma in voxels along each axis for a FWHM in mm (nilearn's rule)."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    vox = np.sqrt(np.sum(a**2, axis=0))
    fwhm_arr = np.broadcast_to(np.asarray(fwhm, dtype=np.float64), (3,))
    return fwhm_arr / (_FWHM_OVER_SIGMA * vox)


def smooth_volumes(volumes, affine: np.ndarray, fwhm):
    """Gaussian smoothing of 3D volumes (axes 0-2), as ``nilearn.image.smooth_img``.

    Parameters
    ----------
    volumes : ndarray of shape (X, Y, Z) or (X, Y, Z, t)
        Float data (integers are converted to float32 as nilearn does);
        non-finite values are set to 0 first, as nilearn does.
    affine : ndarray (4, 4)
        Voxel-to-world affine (voxel sizes from its column norms).
    fwhm : float or sequence of 3 floats or None
        Full width at half maximum in mm; None or 0: no smoothing (copy).

    Returns
    -------
    ndarray
        Smoothed copy, in the input's float dtype.
    """
    xp = array_module(volumes)
    arr = xp.asarray(volumes)
    if arr.dtype.kind in "iu":
        arr = arr.astype(xp.float64 if arr.dtype.itemsize == 8 else xp.float32)
    else:
        arr = arr.copy()
    bad = ~xp.isfinite(arr)
    if bool(bad.any()):
        arr[bad] = 0
    if fwhm is None or np.all(np.asarray(fwhm) == 0):
        return arr
    _, ndimage = _scipy_for(xp)
    for axis, sigma in enumerate(smoothing_sigmas(affine, fwhm)):
        if sigma > 0.0:
            ndimage.gaussian_filter1d(arr, float(sigma), output=arr, axis=axis)
    return arr


def masked_means(volumes, masks):
    """Mean signal inside each mask, per volume.

    Parameters
    ----------
    volumes : ndarray of shape (X, Y, Z, t)
    masks : ndarray of shape (m, X, Y, Z), bool
        Non-empty masks (e.g. white matter, CSF, brain).

    Returns
    -------
    ndarray of shape (t, m), float64
    """
    xp = array_module(volumes, masks)
    v = xp.asarray(volumes).reshape(-1, volumes.shape[-1])
    m = xp.asarray(masks).reshape(masks.shape[0], -1)
    return xp.stack([v[mi].mean(axis=0, dtype=xp.float64) for mi in m], axis=1)
