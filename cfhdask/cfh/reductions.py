"""Reductions of correlation blocks: what the block engine keeps of each block.

The block engine (:func:`cfhdask.cfh.kernels.reduce_block` for one block,
:mod:`cfhdask.cfh.graph` for the Dask graph) computes a correlation block one
strip of rows at a time and hands every strip to a *reduction*, which keeps
per-row and per-column summaries and never the block itself.  A reduction is
independent of how the strips are produced (a float32 GEMM of standardised
series, a block already summed over subjects, or any other product), so new
products and new reductions combine freely.

Protocol of a reduction (duck-typed, see :class:`Reduction`):

``begin(xp, na, nb)``
    A fresh state for an ``na x nb`` block.
``strip(state, c, start)``
    Consume rows ``start .. start + len(c)`` of the block; excluded pairs
    (invalid voxels, self-pairs) hold ``-inf``.  ``c`` may be overwritten.
``finish(state, product, a_offset, b_offset)``
    The block's partial result, a ``(rows, cols)`` pair: one summary per row
    and one per column, indices made global with the offsets.  ``product``
    (masked like the strips) may be asked for a few entries again.
``combine(parts)``
    Merge partial summaries of one axis; associative and independent of the
    order of ``parts``, so tree reductions give the same result on any
    scheduler.
``finalize(part)``
    Host (NumPy) arrays of one axis's merged summary.

Reductions here: :class:`MaxArgmax` (CFH: the maximum and its argument both
ways, ties to the smaller index), :class:`ThresholdCount` (autonomy index:
how many partners exceed a threshold) and :class:`BlockSum` (the sum of
per-subject blocks that defines the group counterpart).

Pure array code: NumPy or CuPy (:func:`cfhdask.backend.array_module`), no
Dask, no I/O.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import numpy as np

from cfhdask.backend import array_module, to_numpy

__all__ = [
    "GROUP_ROWS", "BlockCount", "BlockMax", "BlockSum", "MaxArgmax", "Reduction",
    "ThresholdCount", "combine_many", "combine_max", "sum_parts",
]

#: Rows of a strip that share one column-maximum record; the column argmax is
#: recovered by recomputing only those rows (cost ``GROUP_ROWS / n_a`` of the
#: block's product).
GROUP_ROWS = 32


class Reduction(Protocol):
    """What the block engine needs of a reduction (see the module docstring)."""

    def begin(self, xp: Any, na: int, nb: int) -> Any: ...

    def strip(self, state: Any, c: Any, start: int) -> None: ...

    def finish(self, state: Any, product: Any, a_offset: int, b_offset: int) -> tuple: ...

    def combine(self, parts: list) -> Any: ...

    def finalize(self, part: Any) -> tuple: ...


# ----------------------------------------------------------------------------- max/argmax
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


class _MaxState:
    __slots__ = ("col_group", "col_max", "row_arg", "row_max")

    def __init__(self, xp, na: int, nb: int):
        self.row_max = xp.full(na, -xp.inf, dtype=xp.float32)
        self.row_arg = xp.full(na, -1, dtype=xp.int64)
        self.col_max = xp.full(nb, -xp.inf, dtype=xp.float32)
        self.col_group = xp.zeros(nb, dtype=xp.int64)


class MaxArgmax:
    """The maximum of each row and column of a block, and where it is (CFH).

    Rows: argmax along the contiguous axis of each strip.  Columns: per group
    of ``group_rows`` rows the column maximum, and which group holds it; the
    column argmax is then recovered by asking the product again for only the
    rows of that group.  Ties go to the smaller index everywhere.

    Parameters
    ----------
    group_rows : int
        Rows per column-maximum record (results do not depend on it).
    """

    name = "max"

    def __init__(self, group_rows: int = GROUP_ROWS):
        self.group_rows = max(1, int(group_rows))

    def begin(self, xp: Any, na: int, nb: int) -> _MaxState:
        return _MaxState(xp, na, nb)

    def strip(self, state: _MaxState, c: Any, start: int) -> None:
        xp = array_module(c)
        n_rows, nb = c.shape
        g = self.group_rows
        arg = c.argmax(axis=1)
        state.row_arg[start:start + n_rows] = arg
        state.row_max[start:start + n_rows] = xp.take_along_axis(c, arg[:, None], axis=1)[:, 0]
        n_full = n_rows // g
        parts = []
        if n_full:
            parts.append(c[: n_full * g].reshape(n_full, g, nb).max(axis=1))
        if n_rows > n_full * g:
            parts.append(c[n_full * g:].max(axis=0)[None, :])
        gmax = parts[0] if len(parts) == 1 else xp.concatenate(parts)
        best = gmax.argmax(axis=0)
        smax = xp.take_along_axis(gmax, best[None, :], axis=0)[0]
        better = smax > state.col_max  # strict: an earlier group keeps ties
        state.col_group[better] = best[better] + start // g
        xp.maximum(state.col_max, smax, out=state.col_max)

    def finish(self, state: _MaxState, product: Any, a_offset: int,
               b_offset: int) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
        xp = array_module(state.col_max)
        na = state.row_max.shape[0]
        g = self.group_rows
        col_arg = xp.full(state.col_max.shape[0], -1, dtype=xp.int64)
        cols = xp.flatnonzero(state.col_max > -xp.inf)
        if cols.size:
            groups = state.col_group[cols]
            order = xp.argsort(groups, kind="stable")
            cols, groups = cols[order], groups[order]
            bounds = xp.flatnonzero(xp.diff(groups)) + 1
            starts = [0, *(int(v) for v in bounds.tolist())]
            stops = [*starts[1:], int(cols.size)]
            for s0, s1 in zip(starts, stops, strict=True):
                r0 = int(groups[s0]) * g
                r1 = min(r0 + g, na)
                sel = cols[s0:s1]
                col_arg[sel] = product.cross(r0, r1, sel).argmax(axis=1) + r0
        row_arg = state.row_arg
        row_arg[state.row_max == -xp.inf] = -1
        row_arg[row_arg >= 0] += b_offset
        col_arg[col_arg >= 0] += a_offset
        return (state.row_max, row_arg), (state.col_max, col_arg)

    def combine(self, parts: list) -> tuple[Any, Any]:
        return combine_many(list(parts))

    def finalize(self, part: tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Host arrays; entries with no valid partner get NaN and -1."""
        m, i = to_numpy(part[0]), to_numpy(part[1])
        none = ~np.isfinite(m) | (i < 0)
        m = np.where(none, np.float32(np.nan), m).astype(np.float32)
        i = np.where(none, -1, i).astype(np.int64)
        return m, i


def sum_parts(parts: list) -> Any:
    """Elementwise sum of arrays (a copy; the parts are not modified)."""
    out = parts[0].copy()
    for p in parts[1:]:
        out += p
    return out


# ----------------------------------------------------------------------------- counts
class BlockCount(NamedTuple):
    """Per row and per column of a block: how many partners exceed the threshold."""

    row_count: Any
    col_count: Any


#: Words of 8 boolean bytes summed at once without a byte lane overflowing.
_LANE_WORDS = 128
_M8 = 0x00FF00FF00FF00FF
_M16 = 0x0000FFFF0000FFFF
_M32 = 0x00000000FFFFFFFF


def _lane_total(xp, s: Any) -> Any:
    """Sum of the 8 byte lanes of uint64 words (each lane at most 255)."""
    s = (s & xp.uint64(_M8)) + ((s >> xp.uint64(8)) & xp.uint64(_M8))
    s = (s & xp.uint64(_M16)) + ((s >> xp.uint64(16)) & xp.uint64(_M16))
    return (s & xp.uint64(_M32)) + (s >> xp.uint64(32))


class _CountState:
    __slots__ = ("_width", "col", "flags", "row")

    def __init__(self, xp, na: int, nb: int, width: int):
        self.row = xp.zeros(na, dtype=xp.int64)
        self.col = xp.zeros(nb, dtype=xp.int64)
        self.flags = None  # the strip's boolean buffer, padded to ``width`` columns
        self._width = width

    def buffer(self, xp, n_rows: int):
        if self.flags is None or self.flags.shape[0] < n_rows:
            self.flags = xp.zeros((n_rows, self._width), dtype=bool)
        return self.flags[:n_rows]


class ThresholdCount:
    """How many partners of each row and column exceed ``threshold`` (autonomy index).

    ``r > threshold`` is evaluated in float32 on each strip into a reused
    boolean buffer; its bytes are summed 8 at a time as uint64 words (row
    counts along the row, column counts down the strip), which is several
    times faster than summing booleans.  Excluded pairs (``-inf``) never
    count.

    Parameters
    ----------
    threshold : float
        Correlations strictly above it are counted.
    """

    name = "count"

    def __init__(self, threshold: float):
        self.threshold = float(threshold)

    def begin(self, xp: Any, na: int, nb: int) -> _CountState:
        width = -(-max(nb, 1) // (8 * _LANE_WORDS)) * 8 * _LANE_WORDS
        return _CountState(xp, na, nb, width)

    def strip(self, state: _CountState, c: Any, start: int) -> None:
        xp = array_module(c)
        n_rows, nb = c.shape
        flags = state.buffer(xp, n_rows)
        xp.greater(c, xp.float32(self.threshold), out=flags[:, :nb])
        words = flags.view(xp.uint64)  # (n_rows, width / 8), padding stays False
        lanes = words.reshape(n_rows, -1, _LANE_WORDS).sum(axis=2, dtype=xp.uint64)
        state.row[start:start + n_rows] += _lane_total(xp, lanes).sum(axis=1, dtype=xp.int64)
        for r0 in range(0, n_rows, 255):  # a byte lane holds at most 255 rows
            col = words[r0:r0 + 255].sum(axis=0, dtype=xp.uint64)
            state.col += col.view(xp.uint8)[:nb]

    def finish(self, state: _CountState, product: Any, a_offset: int,
               b_offset: int) -> tuple[Any, Any]:
        return state.row, state.col

    def combine(self, parts: list) -> Any:
        return sum_parts(parts)

    def finalize(self, part: Any) -> tuple[np.ndarray]:
        return (to_numpy(part).astype(np.int64),)


# ----------------------------------------------------------------------------- sums
class BlockSum:
    """The elementwise sum of dense blocks (the sum over subjects of the group mode).

    Used on the batch axis of the group counterpart: every batch of subjects
    gives one dense block of summed correlations, and batches are summed in a
    tree.  Addition of float32 blocks is exact up to rounding, so the order of
    the tree changes the sum by a few float32 ulps at most.
    """

    name = "sum"

    def combine(self, parts: list) -> Any:
        return sum_parts(parts)
