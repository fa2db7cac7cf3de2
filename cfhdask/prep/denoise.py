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
  or DPABI's ideal (FFT) filter, :func:`ideal_bandpass` (``y_IdealFilter.m``);
* confound regression = confounds detrended (and, in the combined
  :func:`clean_series` step, band-passed) like the signals, z-scored
  (``ddof=1``), then a pivoted economic QR whose columns with
  ``|R_ii| <= 100 eps`` are dropped, and ``s -= Q Q^T s``;
* smoothing = :func:`scipy.ndimage.gaussian_filter1d` along each spatial axis,
  ``sigma = FWHM / (sqrt(8 ln 2) * voxel size)`` with voxel sizes from the
  affine's column norms, ``mode="reflect"``, ``truncate=4``; done one volume
  at a time (the three passes stay in cache) and, when only some voxels are
  wanted (:func:`smooth_gather`), on their bounding box grown by the kernel's
  reach only.

Every series step is linear along time, so a sequence of them is one T x T
matrix (:func:`time_operator`): applying it is a single GEMM over the voxels.

Series kernels compute in float64 and return float64; callers cast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.signal

from cfhdask.backend import array_module, to_numpy

__all__ = [
    "BUTTERWORTH_ORDER", "FILTERS", "SmoothGather", "band_filter", "bandpass",
    "butterworth_sos", "clean_series", "confound_basis", "detrend_linear", "ideal_bandpass",
    "ideal_filter_bins", "ideal_padded_length", "ideal_rank", "masked_means",
    "min_volumes_for_filter", "regress_out", "smooth_gather", "smooth_volumes",
    "smoothing_box", "smoothing_sigmas", "time_operator",
]

#: Butterworth order used by nilearn's ``signal.clean``.
BUTTERWORTH_ORDER = 5
#: Band-pass filters: nilearn's Butterworth, DPABI's ideal (FFT) filter (the values
#: of ``cfhdask.settings.FILTERS``; kernels do not import the settings).
FILTERS = ("butterworth", "ideal")
#: scipy.ndimage.gaussian_filter1d's default kernel reach, in sigmas.
_TRUNCATE = 4.0
_FWHM_OVER_SIGMA = float(np.sqrt(8.0 * np.log(2.0)))

#: A temporal filter: ``f(x, axis=-1) -> filtered float64 copy``.
TemporalFilter = Callable[..., object]


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


# --------------------------------------------------------------- ideal filter
# DPABI's ideal band-pass, y_IdealFilter.m (DPABI V4+, DPARSF/Subfunctions/
# y_IdealFilter.m, "Written by YAN Chao-Gan 120504 based on REST"; called by
# y_bandpass.m, which DPARSFA_run uses for the "Filter" step).  Its definition,
# with P = 2^nextpow2(T), the series' length padded to a power of two:
#
#   idxLow  = P/2 + 1                     if LowCutoff_HighPass >= fs/2
#             ceil(LowCutoff_HighPass * P * TR + 1)           otherwise
#   idxHigh = P/2 + 1                     if HighCutoff_LowPass >= fs/2 or == 0
#             fix(HighCutoff_LowPass * P * TR + 1)            otherwise
#   mask(idxLow:idxHigh) = 1 ; mask(P-idxLow+2 : -1 : P-idxHigh+2) = 1  (mirror)
#   Data = Data - mean(Data)            % the mean removed before zero padding
#   Data = ifft(mask .* fft([Data; zeros(P-T, n)]));  Data = Data(1:T, :)
#
# MATLAB indices are 1-based: frequency bin k (0-based, k / (P TR) Hz) is kept
# when ceil(hp P TR) <= k <= fix(lp P TR), i.e. bins exactly on a cutoff are
# kept; no high-pass (DPABI's 0) keeps the DC bin, which is zero anyway once
# the mean is removed; no low-pass, or one at/above Nyquist, keeps every bin up
# to the Nyquist bin P/2.  The mean is not added back (y_bandpass.m's
# AddMeanBack option); correlations do not depend on it.  Older REST/DPARSF
# copies pad to rest_nextpow2_one35(T) (2^a, 3 2^a, 5 2^a or 15 2^a); DPABI
# pads to a power of two, as here.


def ideal_padded_length(n_time: int) -> int:
    """``2^nextpow2(T)``: the zero-padded length of DPABI's ideal filter (1 for T = 1)."""
    n_time = int(n_time)
    if n_time < 1:
        raise ValueError(f"a series needs at least one time point (got {n_time})")
    return 1 << (n_time - 1).bit_length()


def ideal_filter_bins(n_time: int, tr: float, high_pass: float | None,
                      low_pass: float | None) -> np.ndarray:
    """The frequency bins DPABI's ideal filter keeps, 0-based, in ``0..P/2``.

    Bin ``k`` is the frequency ``k / (P * tr)`` Hz of the ``P``-point DFT
    (``P = ideal_padded_length(n_time)``); the mirrored bins ``P - k`` are kept
    with them.  ``high_pass``/``low_pass`` None mean no cutoff (DPABI's 0).
    Empty when the band holds no bin.
    """
    p = ideal_padded_length(n_time)
    tr = float(tr)
    nyquist = (1.0 / tr) / 2.0
    hp = 0.0 if high_pass is None else float(high_pass)
    lp = 0.0 if low_pass is None else float(low_pass)
    # the same floating-point operations, in the same order, as y_IdealFilter.m
    lo = p // 2 + 1 if hp >= nyquist else int(np.ceil(hp * p * tr + 1))
    hi = p // 2 + 1 if (lp >= nyquist or lp == 0) else int(np.fix(lp * p * tr + 1))
    return np.arange(max(lo, 1) - 1, min(hi, p // 2 + 1), dtype=np.int64)


def ideal_rank(n_time: int, tr: float, high_pass: float | None,
               low_pass: float | None) -> int:
    """Dimensions the ideal filter's output spans: 2 per kept bin (a cosine and a
    sine over the ``T`` samples), 1 for the Nyquist bin, at most ``T - 1``.

    The DC bin adds nothing and removes one dimension: the mean is removed
    before the transform.  The output of many generic series spans exactly
    this many dimensions (the kept complex exponentials, cut to ``T``
    samples, are independent: a Vandermonde matrix with distinct nodes).
    0: the band holds no usable bin.
    """
    bins = ideal_filter_bins(n_time, tr, high_pass, low_pass)
    p = ideal_padded_length(n_time)
    bins = bins[bins > 0]
    return int(min(n_time - 1, 2 * len(bins) - np.count_nonzero(2 * bins == p)))


def ideal_bandpass(x, tr: float, high_pass: float | None, low_pass: float | None,
                   axis: int = -1):
    """DPABI's ideal band-pass (``y_IdealFilter.m``) along ``axis``.

    Each series has its mean removed, is zero-padded to ``P = 2^nextpow2(T)``,
    transformed, has every bin outside :func:`ideal_filter_bins` (and their
    mirrors) set to zero, and is transformed back and cut to ``T``.

    Parameters
    ----------
    x : ndarray
        Series, time along ``axis``.
    tr : float
        Repetition time in seconds.
    high_pass, low_pass : float or None
        Cutoffs in Hz (None: no cutoff on that side).
    axis : int
        Time axis.

    Returns
    -------
    ndarray, float64
        The filtered series (real part of the inverse transform).
    """
    xp = array_module(x)
    x = xp.moveaxis(xp.asarray(x, dtype=xp.float64), axis, -1)
    n = x.shape[-1]
    p = ideal_padded_length(n)
    spec = xp.fft.rfft(x - x.mean(axis=-1, keepdims=True), n=p, axis=-1)
    keep = xp.zeros(spec.shape[-1], dtype=bool)
    keep[xp.asarray(ideal_filter_bins(n, tr, high_pass, low_pass))] = True
    spec[..., ~keep] = 0.0
    out = xp.fft.irfft(spec, n=p, axis=-1)[..., :n]
    return xp.moveaxis(xp.ascontiguousarray(out), -1, axis)


def band_filter(tr: float | None, high_pass: float | None, low_pass: float | None,
                kind: str = "butterworth") -> TemporalFilter | None:
    """The temporal filter ``f(x, axis=-1)`` of a band, or None when nothing is filtered.

    Parameters
    ----------
    tr : float
        Repetition time in seconds (needed when a cutoff is given).
    high_pass, low_pass : float or None
        Cutoffs in Hz.
    kind : {"butterworth", "ideal"}
        nilearn's Butterworth (:func:`bandpass`) or DPABI's ideal filter
        (:func:`ideal_bandpass`).

    Raises
    ------
    ValueError
        Unknown ``kind``, no ``tr`` with a cutoff, ``high_pass >= low_pass``.
    """
    if kind not in FILTERS:
        raise ValueError(f"unknown filter {kind!r} (one of {', '.join(FILTERS)})")
    if high_pass is None and low_pass is None:
        return None
    if tr is None:
        raise ValueError("band-pass filtering needs the repetition time (tr)")
    if kind == "ideal":
        if high_pass is not None and low_pass is not None and high_pass >= low_pass:
            raise ValueError(f"high_pass ({high_pass}) must be below low_pass ({low_pass})")
        return partial(ideal_bandpass, tr=float(tr), high_pass=high_pass, low_pass=low_pass)
    sos = butterworth_sos(tr, high_pass, low_pass)
    return None if sos is None else partial(bandpass, sos=sos)


def time_operator(steps: Callable, n_time: int, xp=np):
    """The ``(T, T)`` matrix ``A`` of a linear map along time: ``steps(x) == x @ A``.

    Every series step (detrend, confound regression, either filter) acts on
    each series independently and linearly, so applying a sequence of them to
    the identity gives one matrix; ``x @ A`` (a GEMM) then replaces the
    sequence.  ``steps`` takes and returns ``(n, T)`` float64 arrays.
    """
    return xp.ascontiguousarray(steps(xp.eye(int(n_time), dtype=xp.float64)))


def confound_basis(
    confounds,
    *,
    detrend: bool = True,
    band: TemporalFilter | None = None,
):
    """Orthonormal basis of the confound space, prepared as ``signal.clean`` does.

    Parameters
    ----------
    confounds : ndarray of shape (T, k)
        Nuisance regressors, time first.
    detrend : bool
        Detrend the confounds (as the signals are).
    band : callable, optional
        Band-pass the confounds with this filter (:func:`band_filter`) first
        (combined regress + filter step, Lindquist et al. 2018); None: not filtered.

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
    if band is not None:
        c = band(c, axis=0)
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
    filter: str = "butterworth",
):
    """nilearn's ``signal.clean`` (``standardize=False``) on voxel x time series.

    Order (as nilearn): detrend signals and confounds; band-pass both; regress
    the prepared confounds out of the signals.  With ``filter="ideal"`` both
    are band-passed with DPABI's ideal filter instead of the Butterworth.

    Parameters
    ----------
    signals : ndarray of shape (n, T)
    confounds : ndarray of shape (T, k), optional
    tr : float, optional
        Needed when a cutoff is given.
    detrend : bool
    high_pass, low_pass : float, optional
        Cutoffs in Hz.
    filter : {"butterworth", "ideal"}
        The band-pass filter (:func:`band_filter`).

    Returns
    -------
    ndarray of shape (n, T), float64
    """
    xp = array_module(signals)
    s = xp.asarray(signals, dtype=xp.float64)
    band = band_filter(tr, high_pass, low_pass, filter)
    if detrend:
        s = detrend_linear(s, axis=-1)
    if band is not None:
        s = band(s, axis=-1)
    if confounds is not None:
        s = regress_out(s, confound_basis(confounds, detrend=detrend, band=band))
    return s


def smoothing_sigmas(affine: np.ndarray, fwhm: float | tuple[float, float, float]) -> np.ndarray:
    """Gaussian sigma in voxels along each axis for a FWHM in mm (nilearn's rule)."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    vox = np.sqrt(np.sum(a**2, axis=0))
    fwhm_arr = np.broadcast_to(np.asarray(fwhm, dtype=np.float64), (3,))
    return fwhm_arr / (_FWHM_OVER_SIGMA * vox)


def _kernel_radius(sigma: float) -> int:
    """Half-width of scipy's Gaussian kernel: ``int(truncate * sigma + 0.5)``."""
    return int(_TRUNCATE * float(sigma) + 0.5) if sigma > 0 else 0


def smoothing_box(ijk, grid_shape, sigmas) -> tuple[slice, slice, slice]:
    """Bounding box of the voxels ``ijk`` grown by the Gaussian's reach, clipped to the grid.

    Smoothing the box alone gives, at ``ijk``, the values of smoothing the
    whole grid: each separable pass at a voxel reads only the ``2r + 1``
    neighbours along its axis, all inside the box; where the box meets the
    grid's edge, so does the reflection.
    """
    ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
    reach = np.array([_kernel_radius(s) for s in sigmas], dtype=np.int64)
    lo = np.maximum(ijk.min(axis=0) - reach, 0)
    hi = np.minimum(ijk.max(axis=0) + reach + 1, np.asarray(grid_shape, dtype=np.int64))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _smooth_one(volume, sigmas, ndimage, buffers):
    """The three separable passes over one 3D volume; returns a buffer (or ``volume``)."""
    src, n_done = volume, 0
    for axis, sigma in enumerate(sigmas):
        if sigma > 0.0:
            dst = buffers[n_done % 2]
            ndimage.gaussian_filter1d(src, float(sigma), axis=axis, output=dst,
                                      truncate=_TRUNCATE)
            src, n_done = dst, n_done + 1
    return src


def _float_volumes(xp, volumes):
    arr = xp.asarray(volumes)
    if arr.dtype.kind in "iub":
        arr = arr.astype(xp.float64 if arr.dtype.itemsize == 8 else xp.float32)
    return arr


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
        Smoothed copy, in the input's float dtype.  Volumes are smoothed one
        at a time (each stays in cache for its three passes).
    """
    xp = array_module(volumes)
    arr = _float_volumes(xp, volumes)
    out = xp.array(arr, copy=True, order="F")
    bad = ~xp.isfinite(out)
    if bool(bad.any()):
        out[bad] = 0
    if fwhm is None or np.all(np.asarray(fwhm) == 0):
        return out
    _, ndimage = _scipy_for(xp)
    sigmas = smoothing_sigmas(affine, fwhm)
    buffers = [xp.empty(out.shape[:3], dtype=out.dtype, order="F") for _ in range(2)]
    stack = out.reshape(*out.shape[:3], -1)  # a view: (X, Y, Z, t)
    for t in range(stack.shape[3]):
        stack[..., t] = _smooth_one(stack[..., t], sigmas, ndimage, buffers)
    return out


def _gaussian_weights(sigma: float) -> np.ndarray:
    """scipy's Gaussian weights for ``sigma`` (its impulse response, exact in float64)."""
    r = _kernel_radius(sigma)
    impulse = np.zeros(4 * r + 1)
    impulse[2 * r] = 1.0
    return scipy.ndimage.gaussian_filter1d(impulse, float(sigma), truncate=_TRUNCATE)[r:3 * r + 1]


def _tap_index(local_ijk: np.ndarray, box_shape, axis: int, radius: int) -> np.ndarray:
    """Flat (Fortran) box indices of the ``2 r + 1`` neighbours along ``axis`` of each
    voxel, reflected at the box's edges as scipy's ``mode="reflect"`` (``-1 -> 0``)."""
    n = box_shape[axis]
    taps = []
    for k in range(-radius, radius + 1):
        c = local_ijk.copy()
        pos = c[:, axis] + k
        pos = np.where(pos < 0, -pos - 1, pos)
        c[:, axis] = np.where(pos >= n, 2 * n - pos - 1, pos)
        taps.append(np.ravel_multi_index(tuple(c.T), box_shape, order="F"))
    return np.stack(taps)


def _last_pass_at(volume, taps, weights, xp):
    """The last separable pass, computed only at the wanted voxels.

    The arithmetic of scipy's symmetric ``correlate1d`` in float64, in its
    order (centre, then the pairs from the outermost in), rounded once to the
    volume's dtype: the values of the full pass at those voxels.
    """
    g = xp.take(volume.ravel(order="F"), taps)  # (2 r + 1, n)
    r = len(weights) // 2
    acc = g[r] * np.float64(weights[r])  # float64, as the line buffer of correlate1d
    for k in range(r, 0, -1):
        pair = xp.add(g[r - k], g[r + k], dtype=xp.float64)
        pair *= weights[r + k]
        acc += pair
    return acc


@dataclass(frozen=True)
class SmoothGather:
    """Gaussian smoothing of volumes evaluated at some voxels only (see :func:`smooth_gather`).

    Built once per run (:meth:`plan`), applied to each batch of volumes.
    """

    box: tuple[slice, slice, slice]
    first_sigmas: np.ndarray  # the passes run on the whole box (the last one zeroed)
    taps: np.ndarray | None  # (2 r + 1, n) box indices of the last pass; None: no smoothing
    weights: np.ndarray | None
    flat: np.ndarray  # box indices of the voxels

    @classmethod
    def plan(cls, grid_shape, affine: np.ndarray, fwhm, ijk) -> SmoothGather:
        """The box, the passes and the gather indices for voxels ``ijk`` of ``grid_shape``."""
        ijk = np.asarray(ijk, dtype=np.int64).reshape(-1, 3)
        smooth = not (fwhm is None or np.all(np.asarray(fwhm) == 0))
        sigmas = smoothing_sigmas(affine, fwhm) if smooth else np.zeros(3)
        box = smoothing_box(ijk, grid_shape, sigmas)
        box_shape = tuple(b.stop - b.start for b in box)
        local = ijk - np.array([b.start for b in box], dtype=np.int64)
        flat = np.ravel_multi_index(tuple(local.T), box_shape, order="F")
        if not smooth:
            return cls(box, sigmas, None, None, flat)
        last = int(np.flatnonzero(sigmas > 0)[-1])
        weights = _gaussian_weights(sigmas[last])
        taps = _tap_index(local, box_shape, last, len(weights) // 2)
        return cls(box, np.where(np.arange(3) == last, 0.0, sigmas), taps, weights, flat)

    def __call__(self, volumes):
        """(X, Y, Z, t) finite volumes -> (n, t) smoothed values at the voxels."""
        xp = array_module(volumes)
        arr = _float_volumes(xp, volumes)
        rows = xp.empty((arr.shape[3], len(self.flat)), dtype=arr.dtype)
        if self.taps is None:
            flat = xp.asarray(self.flat)
            for t in range(arr.shape[3]):
                rows[t] = arr[(*self.box, t)].ravel(order="F")[flat]
            return rows.T
        taps = xp.asarray(self.taps)
        _, ndimage = _scipy_for(xp)
        shape = tuple(b.stop - b.start for b in self.box)
        buffers = [xp.empty(shape, dtype=arr.dtype, order="F") for _ in range(2)]
        for t in range(arr.shape[3]):
            vol = _smooth_one(arr[(*self.box, t)], self.first_sigmas, ndimage, buffers)
            rows[t] = _last_pass_at(vol, taps, self.weights, xp)
        return rows.T


def smooth_gather(volumes, affine: np.ndarray, fwhm, ijk):
    """``smooth_volumes(volumes, affine, fwhm)`` at the voxels ``ijk`` only.

    Equal to smoothing the whole grid and gathering (tests), at a fraction
    of the cost: each volume is cropped to the :func:`smoothing_box` of
    ``ijk`` and smoothed in cache, the last of the three passes only at
    ``ijk``.  :class:`SmoothGather` keeps the plan for several batches.

    Parameters
    ----------
    volumes : ndarray of shape (X, Y, Z, t)
        Finite values (see :func:`smooth_volumes` for nilearn's handling of
        NaN), best in Fortran order (each volume contiguous), as NIfTI data are.
    affine, fwhm
        As :func:`smooth_volumes` (``fwhm`` None or 0: a plain gather).
    ijk : ndarray of shape (n, 3)
        Voxel indices.

    Returns
    -------
    ndarray of shape (n, t)
        In the volumes' float dtype.
    """
    return SmoothGather.plan(volumes.shape[:3], affine, fwhm, ijk)(volumes)


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
