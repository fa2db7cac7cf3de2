"""Pure array kernels of CFH, VMHC and the autonomy index (NumPy or CuPy, no Dask, no I/O).

With every series standardised by :func:`standardize` (z-score divided by
``sqrt(T)``) the correlation matrix of two sets of voxels is a plain float32
product ``r = a @ b.T``.  The block engine is split in two independent parts:

* a **product** yields strips of rows of a correlation block:
  :class:`GemmProduct` (``a @ b.T`` of standardised series, computed strip by
  strip into one reused buffer) or :class:`DenseProduct` (a block already
  computed, e.g. summed over subjects by :func:`dense_product`);
* a **reduction** (:mod:`cfhdask.cfh.reductions`) keeps per-row and
  per-column summaries of the strips: max/argmax for CFH, thresholded counts
  for the autonomy index.

:func:`reduce_block` runs one product through one reduction, masking the
excluded pairs (invalid voxels, self-pairs) on the way, so the full block
never exists unless the product is dense by nature.  :func:`block_maxcorr`
and :func:`block_counts` are the two uses on standardised series.

Every kernel takes its array module from :func:`cfhdask.backend.array_module`,
so the same code runs on NumPy arrays (CPU) and CuPy arrays (GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np

from cfhdask.backend import aligned, array_module, to_numpy
from cfhdask.cfh.reductions import (
    GROUP_ROWS,
    BlockCount,
    BlockMax,
    MaxArgmax,
    ThresholdCount,
    combine_many,
    combine_max,
)

__all__ = [
    "CONSTANT_RTOL", "GROUP_ROWS", "R_CLIP", "STRIP_ROWS", "BlockCount", "BlockMax",
    "DenseProduct", "GemmProduct", "apply_moments", "autonomy_index", "block_counts",
    "block_maxcorr", "combine_many", "combine_max", "concat_standardized", "dense_product",
    "fisher_z", "moments",
    "pair_correlations", "paired_corr", "paired_correlations", "reduce_block", "standardize",
]

#: A series whose standard deviation is at most this fraction of its mean
#: magnitude (or exactly 0, or not finite) is constant.
CONSTANT_RTOL = 1e-6

#: Largest |r| kept before the Fisher transform, so ``atanh`` stays finite.
R_CLIP = 1.0 - 1e-7

#: Rows of a block produced and reduced at once inside :func:`reduce_block`
#: (one strip of the product stays in cache while it is reduced).
STRIP_ROWS = 1024


# ----------------------------------------------------------------------------- series
@numba.njit(cache=True, nogil=True)
def _row_moments_cpu(x, rtol, mean, scale, valid):  # pragma: no cover - compiled
    """:func:`moments` of every row of a 2-D array, two float64 passes per row."""
    n, t = x.shape
    root_t = np.sqrt(max(t, 1))
    for v in range(n):
        acc = 0.0
        for k in range(t):
            acc += np.float64(x[v, k])
        m = acc / t
        ss = 0.0
        for k in range(t):
            d = np.float64(x[v, k]) - m
            ss += d * d
        std = np.sqrt(ss / t)
        ok = np.isfinite(std) and std > 0 and std > rtol * abs(m)
        valid[v] = ok
        mean[v] = m if ok else 0.0
        scale[v] = 1.0 / std / root_t if ok else 0.0


@numba.njit(cache=True, nogil=True)
def _standardize_cpu(x, mean, scale, valid, out):  # pragma: no cover - compiled
    """``out = float32((x - mean) * scale)`` in float64 per row, zeros for invalid rows."""
    n, t = x.shape
    for v in range(n):
        if valid[v]:
            m = mean[v]
            s = scale[v]
            for k in range(t):
                out[v, k] = np.float32((np.float64(x[v, k]) - m) * s)
        else:
            for k in range(t):
                out[v, k] = np.float32(0.0)


def _cpu_rows(x: Any, axis: int) -> bool:
    return (isinstance(x, np.ndarray) and x.ndim == 2 and axis in (-1, 1) and x.shape[1] > 0
            and x.dtype in (np.float32, np.float64))


def moments(x: Any, axis: int = -1, rtol: float = CONSTANT_RTOL) -> tuple[Any, Any, Any]:
    """Mean and standardising scale of every series, in float64.

    ``(x - mean) * scale`` has zero mean and unit Euclidean norm along ``axis``
    (z-score divided by ``sqrt(T)``), so dot products of standardised series
    are Pearson correlations.

    Parameters
    ----------
    x : array (..., T)
        Time series (any float dtype), time along ``axis``.
    axis : int
        The time axis.
    rtol : float
        A series with ``std <= rtol * |mean|``, ``std == 0`` or a non-finite
        value is *constant*: its scale is 0 and it is flagged invalid.

    Returns
    -------
    mean, scale : float64 arrays, ``x``'s shape without ``axis``
    valid : bool array, ``x``'s shape without ``axis``
    """
    if _cpu_rows(x, axis):  # one compiled pass per row (the same definition)
        n = x.shape[0]
        mean, scale = np.empty(n), np.empty(n)
        valid = np.empty(n, dtype=bool)
        _row_moments_cpu(x, float(rtol), mean, scale, valid)
        return mean, scale, valid
    xp = array_module(x)
    x64 = xp.asarray(x, dtype=xp.float64)
    n_t = x64.shape[axis]
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite series: invalid below
        mean = x64.mean(axis=axis, keepdims=True)
        dev = x64 - mean
        std = xp.sqrt((dev * dev).mean(axis=axis, keepdims=True))
    valid = xp.isfinite(std) & (std > 0) & (std > rtol * xp.abs(mean))
    scale = xp.where(valid, 1.0 / xp.where(valid, std, 1.0) / np.sqrt(max(n_t, 1)), 0.0)
    return (xp.squeeze(xp.where(valid, mean, 0.0), axis=axis), xp.squeeze(scale, axis=axis),
            xp.squeeze(valid, axis=axis))


def standardize(x: Any, axis: int = -1, rtol: float = CONSTANT_RTOL) -> tuple[Any, Any]:
    """Z-score every series along ``axis`` and divide by ``sqrt(T)``.

    After this, the Pearson correlation of two series is their dot product.
    Mean and standard deviation are accumulated in float64.

    Parameters
    ----------
    x, axis, rtol
        As :func:`moments`; constant series are all zeros and flagged invalid.

    Returns
    -------
    z : float32 array, the shape of ``x``
        Standardised series (unit Euclidean norm along ``axis``).
    valid : bool array, ``x``'s shape without ``axis``
        False for constant series.
    """
    mean, scale, valid = moments(x, axis=axis, rtol=rtol)
    if _cpu_rows(x, axis):
        z = np.empty(x.shape, dtype=np.float32)
        _standardize_cpu(x, mean, scale, valid, z)
        return z, valid
    xp = array_module(x)
    x64 = xp.asarray(x, dtype=xp.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        z = (x64 - xp.expand_dims(mean, axis)) * xp.expand_dims(scale, axis)
    z = xp.where(xp.expand_dims(valid, axis), z, 0.0)
    return z.astype(xp.float32), valid


def apply_moments(x: Any, mean: Any, scale: Any, out: Any = None) -> Any:
    """Standardise (n, T) series with precomputed :func:`moments`, in float32.

    One pass over ``x`` (``(x - mean) * scale``); rows with scale 0 (constant
    series) come out as zeros, whatever they held.  Used where the same
    series are standardised many times (the group counterpart reads each
    subject block once per partner block).

    Parameters
    ----------
    x : float array (n, T)
    mean, scale : arrays (n,)
        From :func:`moments` (float64; cast to float32 here).
    out : float32 array (n, T), optional
        Where to write (e.g. a slice of a concatenation buffer).

    Returns
    -------
    float32 array (n, T)
    """
    xp = array_module(x)
    m = xp.asarray(mean, dtype=xp.float32)[:, None]
    s = xp.asarray(scale, dtype=xp.float32)[:, None]
    if out is None:
        out = xp.empty(x.shape, dtype=xp.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        xp.subtract(x, m, out=out, casting="unsafe")
        out *= s
    bad = xp.flatnonzero(s[:, 0] == 0)
    if bad.size:
        out[bad] = 0.0  # constant series: NaN or inf in x must not leak
    return out


def fisher_z(r: Any, clip: float = R_CLIP) -> Any:
    """Fisher transform ``atanh(r)`` as float32, ``|r|`` clipped to ``clip`` (finite).

    NaN stays NaN.
    """
    xp = array_module(r)
    r64 = xp.clip(xp.asarray(r, dtype=xp.float64), -clip, clip)
    return xp.arctanh(r64).astype(xp.float32)


def paired_corr(za: Any, zb: Any) -> Any:
    """Correlation of each row of ``za`` with the same row of ``zb`` (float64 sums).

    Parameters
    ----------
    za, zb : float32 arrays (n, T)
        Standardised series (:func:`standardize`), row ``k`` of one paired with
        row ``k`` of the other (a voxel and its counterpart or mirror).

    Returns
    -------
    float32 array (n,)
    """
    xp = array_module(za, zb)
    return (xp.asarray(za, dtype=xp.float64) * zb).sum(axis=-1).astype(xp.float32)


@numba.njit(cache=True, nogil=True)
def _pair_sums(x, u, w, mean, scale, out):  # pragma: no cover - compiled
    """``out[k] = sum_t (x[a, t] - mean[a]) (x[b, t] - mean[b]) scale[a] scale[b]`` for the
    pair ``a = u[k]``, ``b = w[k]``: the correlation, in float64, in one pass."""
    t = x.shape[1]
    for q in range(u.size):
        a = u[q]
        b = w[q]
        ma = mean[a]
        mb = mean[b]
        acc = 0.0
        for k in range(t):
            acc += (np.float64(x[a, k]) - ma) * (np.float64(x[b, k]) - mb)
        out[q] = acc * scale[a] * scale[b]


def _row_moments(x: Any, rows: int, rtol: float, standardize_in_place: bool = False):
    """:func:`moments` of (n, T) series ``rows`` at a time; optionally standardise ``x``."""
    xp = array_module(x)
    n = x.shape[0]
    valid = xp.zeros(n, dtype=bool)
    means = xp.zeros(n, dtype=xp.float64)
    scales = xp.zeros(n, dtype=xp.float64)
    for k0 in range(0, n, rows):
        k1 = min(k0 + rows, n)
        means[k0:k1], scales[k0:k1], valid[k0:k1] = moments(x[k0:k1], rtol=rtol)
        if standardize_in_place:
            apply_moments(x[k0:k1], means[k0:k1], scales[k0:k1], out=x[k0:k1])
    return means, scales, valid


def pair_correlations(x: Any, u: Any, w: Any, rows: int = 4096,
                      rtol: float = CONSTANT_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Float64 correlations of the pairs of series ``(u[k], w[k])`` of one set (CPU).

    Parameters
    ----------
    x : float array (n, T)
        Raw series (left unchanged).
    u, w : int arrays (m,)
        Rows of each pair.
    rows : int
        Rows per block of the :func:`moments`.
    rtol : float
        See :func:`moments`.

    Returns
    -------
    r : float64 array (m,)
        0 where either series is constant (such a pair adds nothing to a sum
        over subjects).
    valid : bool array (n,)
        False for constant series.
    """
    z = np.ascontiguousarray(to_numpy(x))
    means, scales, valid = _row_moments(z, rows, rtol)
    u = np.asarray(u, dtype=np.int64)
    w = np.asarray(w, dtype=np.int64)
    r = np.zeros(u.size, dtype=np.float64)
    sel = np.flatnonzero(valid[u] & valid[w]) if u.size else u
    if sel.size:
        out = np.empty(sel.size, dtype=np.float64)
        _pair_sums(z, u[sel], w[sel], means, scales, out)
        r[sel] = out
    return r, valid


def paired_correlations(x: Any, partner: Any, rows: int = 4096,
                        rtol: float = CONSTANT_RTOL) -> tuple[Any, Any]:
    """Correlation of every series with one partner series of the same set.

    The :func:`moments` of the series are taken ``rows`` at a time (float64),
    then each voxel's series is correlated with its partner's (its group
    counterpart or its mirror).  On the CPU that is one compiled pass over the
    raw series, in float64, that writes nothing but the result; CuPy arrays are
    standardised in place and paired ``rows`` pairs at a time.

    Parameters
    ----------
    x : float array (n, T)
        Raw series (a CuPy array is overwritten with the standardised ones).
    partner : int array (n,)
        Row of each series' partner, -1 for none.
    rows : int
        Rows per block.
    rtol : float
        See :func:`moments`.

    Returns
    -------
    r : float32 array (n,)
        NaN where there is no partner or either series is constant.
    valid : bool array (n,)
        False for constant series.
    """
    xp = array_module(x)
    n = x.shape[0]
    cpu = xp is np
    z = np.ascontiguousarray(x) if cpu else xp.ascontiguousarray(x, dtype=xp.float32)
    means, scales, valid = _row_moments(z, rows, rtol, standardize_in_place=not cpu)
    partner = xp.asarray(partner, dtype=xp.int64)
    ok = (partner >= 0) & valid
    ok[ok] &= valid[partner[ok]]
    if cpu:
        r64 = np.full(n, np.nan)
        sel = np.flatnonzero(ok)
        out = np.empty(sel.size, dtype=np.float64)
        _pair_sums(z, sel, partner[sel], means, scales, out)
        r64[sel] = out
        return r64.astype(np.float32), valid
    r = xp.full(n, xp.nan, dtype=xp.float32)
    for k0 in range(0, n, rows):
        k1 = min(k0 + rows, n)
        sel = xp.flatnonzero(ok[k0:k1]) + k0
        if sel.size:
            r[sel] = paired_corr(z[sel], z[partner[sel]])
    return r, valid


def autonomy_index(n_ipsi: Any, n_contra: Any, h_ipsi: Any, h_contra: Any) -> Any:
    """Autonomy index (Wang, Buckner & Liu 2014): ``N_ipsi / H_ipsi - N_contra / H_contra``.

    Parameters
    ----------
    n_ipsi, n_contra : int arrays (n,)
        Voxels of the own / other hemisphere correlated above the threshold
        (self-pairs excluded).
    h_ipsi, h_contra : int arrays (n,) or ints
        Voxels that could have been counted: the own hemisphere's valid voxels
        other than the voxel itself, the other hemisphere's valid voxels.

    Returns
    -------
    float32 array (n,)
        NaN where a denominator is 0.
    """
    xp = array_module(n_ipsi, n_contra)
    hi = xp.asarray(h_ipsi, dtype=xp.float64)
    hc = xp.asarray(h_contra, dtype=xp.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ai = xp.asarray(n_ipsi, dtype=xp.float64) / hi - xp.asarray(n_contra, xp.float64) / hc
    return xp.where((hi > 0) & (hc > 0), ai, xp.nan).astype(xp.float32)


# ----------------------------------------------------------------------------- products
class GemmProduct:
    """The correlation block ``a @ b.T`` of standardised series, produced strip by strip.

    Parameters
    ----------
    a : float32 array (na, T)
    b : float32 array (nb, T)
    """

    def __init__(self, a: Any, b: Any):
        xp = array_module(a, b)
        self.xp = xp
        self.a = aligned(xp.ascontiguousarray(a, dtype=xp.float32))
        self.b = aligned(xp.ascontiguousarray(b, dtype=xp.float32))
        self._bt = self.b.T
        self.shape = (self.a.shape[0], self.b.shape[0])

    def strip(self, start: int, stop: int, out: Any) -> Any:
        """Rows ``start:stop`` of the block, written into ``out``."""
        return self.xp.matmul(self.a[start:stop], self._bt, out=out)

    def cross(self, r0: int, r1: int, cols: Any) -> Any:
        """``block[r0:r1, cols].T`` (a few entries again), shape (len(cols), r1 - r0)."""
        return self.b[cols] @ self.a[r0:r1].T


class DenseProduct:
    """A correlation block that already exists (e.g. summed over subjects)."""

    def __init__(self, c: Any):
        self.xp = array_module(c)
        self.c = c
        self.shape = tuple(c.shape)

    def strip(self, start: int, stop: int, out: Any) -> Any:
        out[...] = self.c[start:stop]
        return out

    def cross(self, r0: int, r1: int, cols: Any) -> Any:
        return self.xp.ascontiguousarray(self.c[r0:r1][:, cols].T)


def dense_product(a: Any, b: Any) -> Any:
    """The dense float32 block ``a @ b.T`` (one GEMM).

    With ``a`` and ``b`` the concatenations along time of several subjects'
    standardised series, this is the block of the sum over those subjects of
    their correlation matrices: ``sum_s a_s @ b_s.T`` in a single GEMM.
    """
    xp = array_module(a, b)
    return xp.matmul(aligned(a, xp.float32), aligned(b, xp.float32).T)


class _Masked:
    """A product whose excluded pairs read ``-inf`` (invalid rows/columns, self-pairs)."""

    def __init__(self, product, a_valid, b_valid, diagonal: bool):
        xp = product.xp
        self.product, self.xp, self.diagonal = product, xp, diagonal
        self.bad_a = self._bad(xp, a_valid)
        self.bad_b = self._bad(xp, b_valid)

    @staticmethod
    def _bad(xp, valid):
        if valid is None:
            return None
        bad = xp.flatnonzero(~xp.asarray(valid, dtype=bool))
        return bad if bad.size else None

    def _rows_in(self, r0: int, r1: int):
        if self.bad_a is None:
            return None
        local = self.bad_a[(self.bad_a >= r0) & (self.bad_a < r1)] - r0
        return local if local.size else None

    def strip(self, start: int, stop: int, out: Any) -> Any:
        xp = self.xp
        c = self.product.strip(start, stop, out)
        if self.bad_b is not None:
            c[:, self.bad_b] = -xp.inf
        local = self._rows_in(start, stop)
        if local is not None:
            c[local, :] = -xp.inf
        if self.diagonal:
            n = min(stop, c.shape[1]) - start
            if n > 0:
                k = xp.arange(n)
                c[k, start + k] = -xp.inf
        return c

    def cross(self, r0: int, r1: int, cols: Any) -> Any:
        xp = self.xp
        sub = self.product.cross(r0, r1, cols)  # (len(cols), r1 - r0)
        local = self._rows_in(r0, r1)
        if local is not None:
            sub[:, local] = -xp.inf
        if self.bad_b is not None:
            sub[xp.isin(cols, self.bad_b), :] = -xp.inf
        if self.diagonal:
            rows = xp.arange(r0, r1)
            sub[cols[:, None] == rows[None, :]] = -xp.inf
        return sub


def reduce_block(product: Any, reduction: Any, a_valid: Any = None, b_valid: Any = None,
                 a_offset: int = 0, b_offset: int = 0, *, diagonal: bool = False,
                 strip_rows: int = STRIP_ROWS) -> tuple:
    """Run one correlation block through a reduction, one strip of rows at a time.

    Parameters
    ----------
    product : GemmProduct or DenseProduct
        What produces the block's strips (see the module docstring).
    reduction : a reduction of :mod:`cfhdask.cfh.reductions`
    a_valid, b_valid : bool arrays (na,), (nb,), optional
        False for voxels that must be ignored (their pairs read ``-inf``).
    a_offset, b_offset : int
        Global index of the first row / column (added to argument outputs).
    diagonal : bool
        The block pairs a set of voxels with itself (``a`` is ``b``): self-pairs
        ``(k, k)`` are excluded.
    strip_rows : int
        Rows per strip (results do not depend on it).

    Returns
    -------
    (rows, cols)
        The reduction's partial results per row and per column.
    """
    xp = product.xp
    na, nb = product.shape
    state = reduction.begin(xp, na, nb)
    masked = _Masked(product, a_valid, b_valid, diagonal)
    multiple = int(getattr(reduction, "group_rows", 1))
    strip_rows = max(multiple, int(strip_rows) // multiple * multiple)
    if na and nb:
        buf = xp.empty((min(strip_rows, na), nb), dtype=xp.float32)
        for start in range(0, na, strip_rows):
            stop = min(start + strip_rows, na)
            reduction.strip(state, masked.strip(start, stop, buf[: stop - start]), start)
        del buf
    return reduction.finish(state, masked, a_offset, b_offset)


def block_maxcorr(
    a: Any,
    b: Any,
    a_valid: Any = None,
    b_valid: Any = None,
    a_offset: int = 0,
    b_offset: int = 0,
    *,
    strip_rows: int = STRIP_ROWS,
    group_rows: int = GROUP_ROWS,
) -> BlockMax:
    """Fused correlation block ``c = a @ b.T`` reduced to row and column max/argmax.

    :func:`reduce_block` of a :class:`GemmProduct` by
    :class:`~cfhdask.cfh.reductions.MaxArgmax`: the product is computed in
    strips into one reused buffer and each strip is reduced while it is in
    cache.  Invalid rows/columns never win.  Ties go to the smaller index.

    Parameters
    ----------
    a : float32 array (na, T)
        Standardised series (see :func:`standardize`).
    b : float32 array (nb, T)
        Standardised series of the other set.
    a_valid, b_valid : bool array (na,), (nb,), optional
        False for series that must be ignored (default: all valid).
    a_offset, b_offset : int
        Global index of the first row of ``a`` / ``b``; added to the arguments.
    strip_rows, group_rows : int
        Tuning of the strip loop (results do not depend on them).

    Returns
    -------
    BlockMax
        ``row_max``/``col_max`` float32, ``row_arg``/``col_arg`` int64
        (global indices; -1 where nothing is valid).
    """
    group_rows = max(1, min(int(group_rows), int(strip_rows)))
    (rm, ra), (cm, ca) = reduce_block(GemmProduct(a, b), MaxArgmax(group_rows), a_valid,
                                      b_valid, a_offset, b_offset, strip_rows=strip_rows)
    return BlockMax(rm, ra, cm, ca)


def block_counts(a: Any, b: Any, threshold: float, a_valid: Any = None, b_valid: Any = None,
                 *, diagonal: bool = False, strip_rows: int = STRIP_ROWS) -> BlockCount:
    """Per row and column of ``a @ b.T``: partners with ``r > threshold`` (invalid never count).

    Parameters
    ----------
    a, b : float32 arrays (na, T), (nb, T)
        Standardised series; with ``diagonal`` the same set (``a`` is ``b``).
    threshold : float
    a_valid, b_valid : bool arrays, optional
    diagonal : bool
        Exclude the self-pairs ``(k, k)``.
    strip_rows : int

    Returns
    -------
    BlockCount
        ``row_count`` (na,), ``col_count`` (nb,), int64.
    """
    rows, cols = reduce_block(GemmProduct(a, b), ThresholdCount(threshold), a_valid, b_valid,
                              diagonal=diagonal, strip_rows=strip_rows)
    return BlockCount(rows, cols)


def concat_standardized(parts: Sequence[Any], means: Sequence[Any],
                        scales: Sequence[Any]) -> Any:
    """Several subjects' series of one voxel block, standardised and concatenated along time.

    Parameters
    ----------
    parts : sequence of float arrays (n, T_s)
        One block of voxels of each subject (lengths may differ).
    means, scales : sequences of arrays (n,)
        Each subject's :func:`moments` of those voxels.

    Returns
    -------
    float32 array (n, sum T_s)
        ``dense_product`` of two such concatenations is the block of the sum
        over the subjects of their correlation matrices; a voxel constant in a
        subject has zeros in that subject's span and adds nothing there.
    """
    xp = array_module(*parts)
    n = parts[0].shape[0]
    out = xp.empty((n, sum(int(p.shape[1]) for p in parts)), dtype=xp.float32)
    t0 = 0
    for x, m, s in zip(parts, means, scales, strict=True):
        t1 = t0 + int(x.shape[1])
        apply_moments(x, m, s, out=out[:, t0:t1])
        t0 = t1
    return out
