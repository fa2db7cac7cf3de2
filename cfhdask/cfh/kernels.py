"""Pure array kernels of the CFH computation (NumPy or CuPy, no Dask, no I/O).

CFH of a voxel is its largest Pearson correlation with any voxel of the other
hemisphere.  With every series standardised by :func:`standardize` (z-score
divided by ``sqrt(T)``) the correlation matrix of two sets of voxels is a
plain float32 product ``r = a @ b.T``.  :func:`block_maxcorr` computes one
block of that product and reduces it at once to the row and column maxima and
their arguments, so the full left x right matrix never exists;
:func:`combine_max` merges partial results of several blocks.

Every kernel takes its array module from :func:`cfhdask.backend.array_module`,
so the same code runs on NumPy arrays (CPU) and CuPy arrays (GPU).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from cfhdask.backend import array_module

#: A series whose standard deviation is at most this fraction of its mean
#: magnitude (or exactly 0, or not finite) is constant.
CONSTANT_RTOL = 1e-6

#: Largest |r| kept before the Fisher transform, so ``atanh`` stays finite.
R_CLIP = 1.0 - 1e-7

#: Rows of ``a`` multiplied at once inside :func:`block_maxcorr` (the product
#: of one strip stays in cache while it is reduced).
STRIP_ROWS = 1024

#: Rows of a strip that share one column-maximum record; the column argmax is
#: recovered by recomputing only those rows (cost ``GROUP_ROWS / n_a`` of the
#: block's GEMM).
GROUP_ROWS = 32


class BlockMax(NamedTuple):
    """Row and column maxima of one correlation block, with global arguments.

    ``row_max[i] = max_j r[i, j]``, ``row_arg[i]`` the global index (offset of
    ``b`` added) of that ``j``; ``col_max``/``col_arg`` the same along the other
    axis.  Rows or columns with no valid partner hold ``-inf`` and ``-1``.
    """

    row_max: Any
    row_arg: Any
    col_max: Any
    col_arg: Any


def standardize(x: Any, axis: int = -1, rtol: float = CONSTANT_RTOL) -> tuple[Any, Any]:
    """Z-score every series along ``axis`` and divide by ``sqrt(T)``.

    After this, the Pearson correlation of two series is their dot product.
    Mean and standard deviation are accumulated in float64.

    Parameters
    ----------
    x : array (..., T)
        Time series (any float dtype), time along ``axis``.
    axis : int
        The time axis.
    rtol : float
        A series with ``std <= rtol * |mean|``, ``std == 0`` or a non-finite
        value is *constant*: its output is all zeros and it is flagged invalid.

    Returns
    -------
    z : float32 array, the shape of ``x``
        Standardised series (unit Euclidean norm along ``axis``).
    valid : bool array, ``x``'s shape without ``axis``
        False for constant series.
    """
    xp = array_module(x)
    x64 = xp.asarray(x, dtype=xp.float64)
    n_t = x64.shape[axis]
    mean = x64.mean(axis=axis, keepdims=True)
    x64 = x64 - mean
    std = xp.sqrt((x64 * x64).mean(axis=axis, keepdims=True))
    valid = xp.isfinite(std) & (std > 0) & (std > rtol * xp.abs(mean))
    scale = xp.where(valid, 1.0 / xp.where(valid, std, 1.0) / np.sqrt(n_t), 0.0)
    x64 *= scale
    z = x64.astype(xp.float32)
    return z, xp.squeeze(valid, axis=axis)


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

    The product is computed in strips of ``strip_rows`` rows of ``a`` into one
    reused buffer; each strip is reduced while it is in cache (row argmax, and
    per group of ``group_rows`` rows the column maximum).  The column argmax is
    then recovered by recomputing, for each column, only the group of rows
    that holds its maximum.  Invalid rows/columns never win (masked to -inf in
    place).  Ties go to the smaller index.

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
    xp = array_module(a, b)
    a = xp.ascontiguousarray(a, dtype=xp.float32)
    b = xp.ascontiguousarray(b, dtype=xp.float32)
    na, nb = a.shape[0], b.shape[0]
    group_rows = max(1, min(group_rows, strip_rows))
    strip_rows = max(group_rows, strip_rows // group_rows * group_rows)
    bad_a = None if a_valid is None else xp.flatnonzero(~xp.asarray(a_valid, dtype=bool))
    bad_b = None if b_valid is None else xp.flatnonzero(~xp.asarray(b_valid, dtype=bool))
    if bad_a is not None and bad_a.size == 0:
        bad_a = None
    if bad_b is not None and bad_b.size == 0:
        bad_b = None

    row_max = xp.empty(na, dtype=xp.float32)
    row_arg = xp.empty(na, dtype=xp.int64)
    col_max = xp.full(nb, -xp.inf, dtype=xp.float32)
    col_group = xp.zeros(nb, dtype=xp.int64)
    if na == 0 or nb == 0:
        row_max.fill(-xp.inf)
        row_arg.fill(-1)
        return BlockMax(row_max, row_arg, col_max, xp.full(nb, -1, dtype=xp.int64))

    buf = xp.empty((min(strip_rows, na), nb), dtype=xp.float32)
    bt = b.T
    for start in range(0, na, strip_rows):
        stop = min(start + strip_rows, na)
        c = xp.matmul(a[start:stop], bt, out=buf[: stop - start])
        if bad_b is not None:
            c[:, bad_b] = -xp.inf
        if bad_a is not None:
            local = bad_a[(bad_a >= start) & (bad_a < stop)] - start
            if local.size:
                c[local, :] = -xp.inf
        # rows: argmax along the contiguous axis, max gathered from it
        arg = c.argmax(axis=1)
        row_arg[start:stop] = arg
        row_max[start:stop] = xp.take_along_axis(c, arg[:, None], axis=1)[:, 0]
        # columns: max per group of rows, remember which group holds it
        n_rows = stop - start
        n_full = n_rows // group_rows
        gmax_parts = []
        if n_full:
            gmax_parts.append(
                c[: n_full * group_rows].reshape(n_full, group_rows, nb).max(axis=1))
        if n_rows > n_full * group_rows:
            gmax_parts.append(c[n_full * group_rows:].max(axis=0)[None, :])
        gmax = gmax_parts[0] if len(gmax_parts) == 1 else xp.concatenate(gmax_parts)
        g = gmax.argmax(axis=0)
        smax = xp.take_along_axis(gmax, g[None, :], axis=0)[0]
        better = smax > col_max  # strict: an earlier group keeps ties
        col_group[better] = g[better] + start // group_rows
        xp.maximum(col_max, smax, out=col_max)
    del buf

    # recover the column argmax inside the winning group of rows
    col_arg = xp.full(nb, -1, dtype=xp.int64)
    has = col_max > -xp.inf
    cols = xp.flatnonzero(has)
    if cols.size:
        groups = col_group[cols]
        order = xp.argsort(groups, kind="stable")
        cols, groups = cols[order], groups[order]
        bounds = xp.flatnonzero(xp.diff(groups)) + 1
        starts = [0, *(int(v) for v in bounds.tolist())]
        stops = [*starts[1:], int(cols.size)]
        for s0, s1 in zip(starts, stops, strict=True):
            gidx = int(groups[s0])
            r0 = gidx * group_rows
            r1 = min(r0 + group_rows, na)
            sel = cols[s0:s1]
            sub = b[sel] @ a[r0:r1].T  # (n_sel, rows of the group)
            if bad_a is not None:
                local = bad_a[(bad_a >= r0) & (bad_a < r1)] - r0
                if local.size:
                    sub[:, local] = -xp.inf
            col_arg[sel] = sub.argmax(axis=1) + r0

    row_arg[row_max == -xp.inf] = -1
    row_arg[row_arg >= 0] += b_offset
    col_arg[col_arg >= 0] += a_offset
    return BlockMax(row_max, row_arg, col_max, col_arg)


def combine_max(m1: Any, i1: Any, m2: Any, i2: Any) -> tuple[Any, Any]:
    """Merge two partial (max, argmax) results elementwise.

    The larger maximum wins; equal maxima keep the smaller index, so the
    result does not depend on the order in which blocks are combined.
    ``-inf``/``-1`` (nothing valid) loses against anything.

    Returns
    -------
    (max, argmax) : arrays of the inputs' shape
    """
    xp = array_module(m1, m2)
    lo1 = (i1 < i2) & (i1 >= 0) | (i2 < 0)
    take1 = (m1 > m2) | ((m1 == m2) & lo1)
    return xp.where(take1, m1, m2), xp.where(take1, i1, i2)


def combine_many(parts: list[tuple[Any, Any]]) -> tuple[Any, Any]:
    """:func:`combine_max` folded over a list of ``(max, argmax)`` pairs."""
    m, i = parts[0]
    for m2, i2 in parts[1:]:
        m, i = combine_max(m, i, m2, i2)
    return m, i


def fisher_z(r: Any, clip: float = R_CLIP) -> Any:
    """Fisher transform ``atanh(r)`` as float32, ``|r|`` clipped to ``clip`` (finite).

    NaN stays NaN.
    """
    xp = array_module(r)
    r64 = xp.clip(xp.asarray(r, dtype=xp.float64), -clip, clip)
    return xp.arctanh(r64).astype(xp.float32)
