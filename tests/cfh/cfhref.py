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
