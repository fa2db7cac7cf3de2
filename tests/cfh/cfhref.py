"""Brute-force float64 NumPy reference of CFH, and comparison helpers (tests only)."""

from __future__ import annotations

import numpy as np


def reference_cfh(left: np.ndarray, right: np.ndarray):
    """Max Pearson r and argmax both ways, by np.corrcoef in float64.

    Constant series (std == 0) are excluded: NaN / -1 for them, never an argmax.
    Returns (left_rmax, left_arg, right_rmax, right_arg, corr) with -inf masked corr.
    """
    left = np.asarray(left, np.float64)
    right = np.asarray(right, np.float64)
    nl = left.shape[0]
    lv = left.std(axis=1) > 0
    rv = right.std(axis=1) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(np.vstack([left, right]))[:nl, nl:]
    c[~lv, :] = -np.inf
    c[:, ~rv] = -np.inf
    out = []
    for m, valid in ((c, lv), (c.T, rv)):
        arg = m.argmax(axis=1)
        mx = m.max(axis=1)
        none = ~valid | ~np.isfinite(mx)
        out += [np.where(none, np.nan, mx), np.where(none, -1, arg)]
    return (*out, c)


def assert_matches(rmax, arg, ref_max, ref_arg, corr_rows, atol=1e-5, tie=1e-6):
    """|Δr| <= atol; same argmax unless the two best correlations are within ``tie``."""
    rmax = np.asarray(rmax, np.float64)
    arg = np.asarray(arg)
    assert rmax.shape == ref_max.shape and arg.shape == ref_arg.shape
    np.testing.assert_array_equal(np.isnan(rmax), np.isnan(ref_max))
    np.testing.assert_array_equal(arg < 0, ref_arg < 0)
    ok = ~np.isnan(ref_max)
    np.testing.assert_allclose(rmax[ok], ref_max[ok], rtol=0, atol=atol)
    differ = np.flatnonzero(ok & (arg != ref_arg))
    for i in differ:
        row = corr_rows[i]
        assert np.isfinite(row[arg[i]]), f"row {i}: counterpart {arg[i]} is excluded"
        assert abs(row[arg[i]] - row[ref_arg[i]]) <= tie, f"row {i}: counterpart differs"


def corr64(x: np.ndarray, y: np.ndarray):
    """Pearson r (float64) of every row of ``x`` with every row of ``y``; constant rows: NaN.

    Returns (r, x_valid, y_valid).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xv, yv = x.std(axis=1) > 0, y.std(axis=1) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.corrcoef(np.vstack([x, y]))[: x.shape[0], x.shape[0]:]
    r[~xv, :] = np.nan
    r[:, ~yv] = np.nan
    return r, xv, yv


def reference_group(subjects: list[tuple[np.ndarray, np.ndarray]]):
    """The group counterpart by brute force: argmax of sum_s r_s, constant pairs adding 0.

    ``subjects`` holds each subject's (left, right) series (lengths may differ).
    Returns (left_arg, right_arg, summed, left_r, right_r): counterparts (-1 where the
    voxel is valid in no subject), the summed matrix (-inf where excluded) and each
    subject's r with the counterpart (NaN where either voxel is constant in it).
    """
    total = None
    lany = rany = None
    per = []
    for left, right in subjects:
        r, lv, rv = corr64(left, right)
        per.append(r)
        total = np.nan_to_num(r) if total is None else total + np.nan_to_num(r)
        lany = lv if lany is None else lany | lv
        rany = rv if rany is None else rany | rv
    s = total.copy()
    s[~lany, :] = -np.inf
    s[:, ~rany] = -np.inf
    larg = np.where(lany, s.argmax(axis=1), -1)
    rarg = np.where(rany, s.argmax(axis=0), -1)
    nl, nr = s.shape
    left_r = [np.where(larg >= 0, r[np.arange(nl), np.maximum(larg, 0)], np.nan) for r in per]
    right_r = [np.where(rarg >= 0, r[np.maximum(rarg, 0), np.arange(nr)], np.nan) for r in per]
    return larg, rarg, s, left_r, right_r


def check_group(res, subjects, **tol):
    """A group sum's counterparts and summed r against :func:`reference_group` (``tol``:
    of ``assert_allclose``); NaN / -1 where a voxel is valid in no subject."""
    larg, rarg, s, _, _ = reference_group(subjects)
    assert_same_counterparts(res["left_arg"], larg, s)
    assert_same_counterparts(res["right_arg"], rarg, s.T)
    ok = larg >= 0
    np.testing.assert_allclose(res["left_sum"][ok], s[ok, larg[ok]], **tol)
    assert np.isnan(res["left_sum"][~ok]).all() and (res["left_arg"][~ok] == -1).all()
    return larg, rarg


def assert_same_counterparts(arg, ref_arg, summed_rows, tie=1e-6):
    """Same counterpart unless the two best summed correlations are within ``tie``."""
    arg = np.asarray(arg)
    np.testing.assert_array_equal(arg < 0, ref_arg < 0)
    for i in np.flatnonzero((arg != ref_arg) & (ref_arg >= 0)):
        row = summed_rows[i]
        assert np.isfinite(row[arg[i]]), f"row {i}: counterpart {arg[i]} is excluded"
        assert abs(row[arg[i]] - row[ref_arg[i]]) <= tie, f"row {i}: counterpart differs"


def reference_counts(left: np.ndarray, right: np.ndarray, threshold: float):
    """Autonomy-index counts by brute force (self-pairs and constant voxels excluded).

    Returns dict with left_ipsi, left_contra, right_ipsi, right_contra (int), the
    validity masks and the correlations (to find pairs near the threshold).
    """
    both = np.vstack([left, right]).astype(np.float64)
    nl = left.shape[0]
    r, v, _ = corr64(both, both)
    np.fill_diagonal(r, np.nan)
    above = np.nan_to_num(r, nan=-np.inf) > threshold
    out = {"left_ipsi": above[:nl, :nl].sum(1), "left_contra": above[:nl, nl:].sum(1),
           "right_ipsi": above[nl:, nl:].sum(1), "right_contra": above[nl:, :nl].sum(1),
           "left_valid": v[:nl], "right_valid": v[nl:], "r": r}
    return out


def reference_ai(left, right, threshold):
    """AI = N_ipsi / (valid own - 1) - N_contra / valid other; NaN at constant voxels."""
    c = reference_counts(left, right, threshold)
    nlv, nrv = c["left_valid"].sum(), c["right_valid"].sum()
    ai_l = c["left_ipsi"] / (nlv - 1) - c["left_contra"] / nrv
    ai_r = c["right_ipsi"] / (nrv - 1) - c["right_contra"] / nlv
    return (np.where(c["left_valid"], ai_l, np.nan), np.where(c["right_valid"], ai_r, np.nan),
            c)


def near_threshold(r_rows: np.ndarray, threshold: float, tol: float = 1e-6) -> np.ndarray:
    """Per row: pairs within ``tol`` of the threshold (their count may differ)."""
    return (np.abs(np.nan_to_num(r_rows, nan=np.inf) - threshold) <= tol).sum(axis=1)


class ArrayReader:
    """A picklable ``read(k, start, stop)`` over in-memory subjects (stand-in for a store)."""

    def __init__(self, series: list[np.ndarray]):
        self.series = [np.asarray(s, np.float32) for s in series]
        self.reads = 0

    def __call__(self, k: int, start: int, stop: int) -> np.ndarray:
        self.reads += 1
        return self.series[k][start:stop]


def raw_graph(arrays) -> dict:
    """The tasks of ``arrays`` as built, before any optimisation (dask's low-level fusion
    renames fused keys, in an order that varies from run to run)."""
    from dask.highlevelgraph import HighLevelGraph

    return dict(HighLevelGraph.merge(*(a.__dask_graph__() for a in arrays)))


def ranges(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) blocks of ``size`` (the last one shorter)."""
    return [(s, min(s + size, stop)) for s in range(start, stop, size)]


def cohort(rng, nl: int, nr: int, lengths, constant=()):
    """Subjects sharing a homotopic structure; ``constant`` = [(subject, voxel)] made flat.

    Returns (series list of (nl + nr, T_s) arrays, [(left, right)] per subject).
    """
    pair = rng.integers(0, 6, nl + nr)  # 6 shared bilateral signals
    load = rng.uniform(0.3, 0.9, nl + nr)
    out = []
    for t in lengths:
        sig = rng.standard_normal((6, t))
        x = load[:, None] * sig[pair] + rng.standard_normal((nl + nr, t)) + 100.0
        out.append(x.astype(np.float32))
    for s, v in constant:
        out[s][v] = 7.0
    return out, [(x[:nl], x[nl:]) for x in out]


class CountingScheduler:
    """A synchronous scheduler that counts how often it is asked to compute."""

    def __init__(self):
        self.calls = 0

    def __call__(self, dsk, keys, **kwargs):
        import dask

        self.calls += 1
        return dask.get(dsk, keys, **kwargs)


def bandpassed_pairs(rng, n_left: int, n_right: int, n_time: int = 200, tr: float = 2.0,
                     n_pairs: int = 60):
    """Homotopic pairs sharing band-limited signals plus white noise, band-passed 0.01-0.1 Hz.

    Returns raw (left, right) float64 series (offset 100): after the band-pass they span
    far fewer dimensions than ``n_time``, as denoised fMRI does.
    """
    from cfhdask.prep.denoise import clean_series
    from cfhdask.sim.signals import band_limited

    shared = band_limited(rng, n_time, n_pairs, tr).T

    def side(n):
        pair = rng.integers(0, n_pairs, n)
        x = shared[pair] * rng.uniform(0.3, 0.9, (n, 1)) + rng.standard_normal((n, n_time))
        return clean_series(x, tr=tr, high_pass=0.01, low_pass=0.1) + 100.0

    return side(n_left), side(n_right)
