"""Exact CFH from a low-rank product: shared temporal basis, rigorous bound, exact candidates.

After band-pass filtering, a subject's standardised series span far fewer
dimensions than T.  With ``V`` the eigenvectors of the subject's T x T Gram
matrix ``G = Z^T Z`` (all voxels of both hemispheres, eigenvalues in
decreasing order) every series splits into ``z = alpha V_k^T + z_perp``, with
``alpha = z V_k`` its first ``k`` coefficients and ``e = ||z_perp||`` its
residual norm.  For a left voxel ``a`` and a right voxel ``b``::

    r(a, b) = <alpha_a, alpha_b> + <a_perp, b_perp>,   |<a_perp, b_perp>| <= e_a e_b

(Cauchy-Schwarz).  :func:`lowrank_block_maxcorr` computes the rank-``k``
float32 product ``c = alpha_A alpha_B^T`` in strips that stay in cache while
they are reduced (``e``, ``f``: residual norms of rows and columns; ``s``: the
slack below):

* one compiled pass (numba) over each row of the strip while it is in L1:
  the row maximum ``m_i`` and, per group of :data:`GROUP_ROWS` rows, the
  column maxima and the group's largest ``e``; a row's maximum correlation is
  at least ``m_i - e_i max(f) - s``, a column's at least ``gmax - e_g f_j - s``
  (running over the strips); and the row candidates, ``c_ij >= m_i - 2 e_i
  max(f) - 2 s``, testing 64 columns at once (the maxima and the tests are
  packed SIMD code: :func:`_maxnum`, fixed-width compare-and-counts);
* after the last strip, a column's candidates are searched only in the groups
  whose upper bound ``gmax + e_g f_j`` reaches the column's lower bound.

The true maximum of a row or column (and every pair tied with it) is a
candidate, because its correlation is at least the lower bound.

``s`` is an explicit float32 slack: the rounding of the coefficients to
float32 and of the rank-``k`` sums (``(k + 2) u`` relative, ``u = 2**-24``),
plus the rounding of the bound arithmetic itself.  Only the candidates are
then recomputed exactly (float64 dot products of the full standardised
series), so the row and column maxima and their arguments are those of the
full product: the same :class:`~cfhdask.cfh.kernels.BlockMax` as
:func:`~cfhdask.cfh.kernels.block_maxcorr`, ties to the smaller index.

:func:`plan_subject` chooses the rank from a ladder of residual tolerances
(:data:`RESIDUAL_LADDER`, loosest first: the lowest rank first).  A pilot strip
checks each rung in turn; the first rung whose bound prunes well is taken, a
rung that prunes badly sends the plan to the next (higher) rank.  When no rung
prunes well (unfiltered data: the series fill all T dimensions, so the rank is
large or the residuals are) it chooses the full-rank kernel instead; a block
with more than :data:`CANDIDATES_PER_ROW_LIMIT` row candidates per row is
computed full-rank too (below that, the candidate buffer grows).  Either way
the results are exact.

The basis, rank and projection functions take NumPy or CuPy arrays; the block
kernel (numba) runs on the CPU only: CuPy blocks take the full-rank kernel.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from cfhdask.backend import aligned, array_module, to_numpy
from cfhdask.cfh.kernels import BlockMax, block_maxcorr, combine_many

__all__ = [
    "CANDIDATES_PER_ROW_LIMIT",
    "CHUNK_ROWS",
    "GROUP_ROWS",
    "MAX_CANDIDATES_PER_ROW",
    "MAX_RANK_FRACTION",
    "PILOT_ROWS",
    "RANK_SAMPLE",
    "RANK_STEP",
    "RESIDUAL_LADDER",
    "RESIDUAL_QUANTILE",
    "RESIDUAL_TOL",
    "STRIP_ROWS",
    "LowRankBlock",
    "LowRankFactors",
    "SubjectPlan",
    "bound_slack",
    "choose_rank",
    "count_valid",
    "factors_at_rank",
    "gram",
    "lowrank_block_maxcorr",
    "lowrank_maxcorr",
    "pilot_candidates",
    "plan_ladder",
    "plan_pilot",
    "plan_rank",
    "plan_subject",
    "project",
    "project_ladder",
    "residual_exceed_counts",
    "sample_rows",
    "stage_times",
    "temporal_basis",
]

#: Residual norm a voxel may keep outside the basis (the rank is the smallest
#: that leaves at most ``1 - RESIDUAL_QUANTILE`` of the voxels above it): the
#: tightest rung of :data:`RESIDUAL_LADDER`, the tolerance of a single rank.
RESIDUAL_TOL = 0.03

#: Residual tolerances of the rank ladder, loosest first (an internal tuning, not a
#: user option: the rank sets the speed, never the result).  The first rung whose
#: pilot keeps at most :data:`MAX_CANDIDATES_PER_ROW` candidates per row is taken.
#: Measured on the 3 mm demo subject (T = 220, ``bench_cfh_lowrank.py``), 0.12 gives
#: rank 80 (about 2 candidates per pilot row), 0.06 rank 88 and 0.03 rank 96 (about 1):
#: the lower rank saves more GEMM time than its extra candidates cost, and a subject
#: whose pilot prunes badly at rank 80 climbs to 88 or 96 instead of full rank.
RESIDUAL_LADDER = (0.12, 0.06, RESIDUAL_TOL)

#: Fraction of voxels whose residual must be at most :data:`RESIDUAL_TOL`.  The
#: bound is per voxel, so the few voxels above it are still exact; they only get
#: more candidates.
RESIDUAL_QUANTILE = 0.999

#: The rank is rounded up to a multiple of this (SIMD-friendly GEMM; a larger
#: rank only tightens the bound).
RANK_STEP = 8

#: Above this fraction of T the low-rank product saves too little: full rank.
MAX_RANK_FRACTION = 0.6

#: Row candidates per row (mean, in the pilot strip) above which the bound is
#: said to prune badly: full rank.
MAX_CANDIDATES_PER_ROW = 4.0

#: Voxels per hemisphere on which the rank is chosen.
RANK_SAMPLE = 8192

#: Rows of the left hemisphere in the pilot strip of :func:`plan_subject`.
PILOT_ROWS = 256

#: Rows of one strip of the low-rank product (written by the GEMM, then read
#: once, row by row, by the fused bound pass :func:`_strip_pass`; 256 rows of a
#: 4096-column block, a 4 MiB strip, were the fastest measured here with the
#: packed maxima).
STRIP_ROWS = 256

#: Row candidates per row of a block above which it is computed full rank
#: (:func:`lowrank_block_maxcorr`); below, the candidate buffer grows.
CANDIDATES_PER_ROW_LIMIT = 64

#: Rows of a strip sharing one record of the columns' upper bounds; a column's
#: candidates are searched only in the groups whose record reaches its bound.
GROUP_ROWS = 16

#: Voxels converted to float64 at once by the basis and projection functions.
CHUNK_ROWS = 4096

#: Unit roundoff of float32.
_U32 = 2.0**-24

#: The dict :func:`stage_times` fills while it is active (None: no timers).
_STAGES: dict[str, float] | None = None


@contextlib.contextmanager
def stage_times() -> Iterator[dict[str, float]]:
    """Accumulate this process's CPU seconds per stage of the kernel while active.

    The stages: ``plan`` (Gram matrix, eigen-decomposition, rank counts, the
    pilot and its projections), ``projection``, ``gemm`` (the rank-``k``
    strips), ``strip`` (the fused bound pass), ``exact`` (the candidates),
    ``block`` (per-block set-up, buffer growth, scatter), ``full`` (blocks
    computed full rank).  A profiling aid of ``bench_cfh_lowrank.py --profile``
    (one process-wide dict: not for concurrent calls); without it the kernel
    reads no clock.

    Yields
    ------
    dict
        Stage name to CPU seconds, filled as the kernel runs.
    """
    global _STAGES
    previous, _STAGES = _STAGES, {}
    try:
        yield _STAGES
    finally:
        _STAGES = previous


def _clock() -> float:
    """CPU time now when :func:`stage_times` is active (else 0, no clock read)."""
    return 0.0 if _STAGES is None else time.process_time()


def _lap(stage: str, t0: float) -> float:
    """Add the CPU time since ``t0`` to ``stage`` when timers are active; the time now."""
    if _STAGES is None:
        return 0.0
    t = time.process_time()
    _STAGES[stage] = _STAGES.get(stage, 0.0) + (t - t0)
    return t


class LowRankFactors(NamedTuple):
    """Rank-``k`` coefficients of standardised series and their residual norms.

    ``coef`` float32 (n, k) holds ``z V_k``; ``resid`` float32 (n,) an upper
    bound of ``||z - coef V_k^T||`` (0 for excluded voxels, whose coefficients
    are 0 too).
    """

    coef: Any
    resid: Any


class LowRankBlock(NamedTuple):
    """Result of :func:`lowrank_block_maxcorr`.

    ``block`` is the exact :class:`~cfhdask.cfh.kernels.BlockMax`;
    ``n_candidates`` the pairs recomputed exactly; ``full_rank`` True when the
    candidates overflowed and the block was computed by the full-rank kernel.
    """

    block: BlockMax
    n_candidates: int
    full_rank: bool


class SubjectPlan(NamedTuple):
    """Per-subject choice of :func:`plan_subject`.

    ``strategy`` is ``"lowrank"`` or ``"full"``; ``rank`` the chosen ``k``
    (the rank the tolerance asked for, also when full rank was chosen);
    ``basis`` the float64 (T, T) eigenvectors, the first ``rank`` the basis (None
    for full rank: the residual norms need all of them);
    ``pilot_candidates`` the mean row candidates per pilot row (NaN when no
    pilot ran); ``reason`` one line for the log; ``ranks`` the rungs of the rank
    ladder still open (ascending; ``rank`` is the first until the pilot chose);
    ``pilots`` the ``(rank, candidates per pilot row)`` of each rung the pilot tried.
    """

    strategy: str
    rank: int
    basis: Any
    pilot_candidates: float
    reason: str
    ranks: tuple = ()
    pilots: tuple = ()


# ----------------------------------------------------------------------------- basis


def _chunks(n: int, size: int = CHUNK_ROWS):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def gram(*series: Any, dtype: Any = np.float64) -> Any:
    """The T x T Gram matrix ``sum_v z_v z_v^T`` of one or more (n, T) arrays, as float64.

    Accumulated in float64 over chunks of :data:`CHUNK_ROWS` voxels, each chunk's
    product computed in ``dtype``: float64 (default), or float32 (half the cost; the
    basis only sets the speed of the low-rank kernel, never its result: the
    eigenvectors of any symmetric matrix are orthonormal in float64 and the
    residual norms of :func:`project` are bounds for whatever basis they get).
    """
    xp = array_module(*series)
    n_t = series[0].shape[1]
    g = xp.zeros((n_t, n_t), dtype=xp.float64)
    for z in series:
        for s, e in _chunks(z.shape[0]):
            c = aligned(z[s:e], dtype)
            g += c.T @ c
    return g


def temporal_basis(g: Any) -> tuple[Any, Any]:
    """Eigen-decomposition of a Gram matrix, largest eigenvalue first.

    Returns
    -------
    (values, vectors) : float64 arrays (T,), (T, T)
        ``vectors[:, l]`` is the l-th basis vector.
    """
    xp = array_module(g)
    w, v = xp.linalg.eigh(xp.asarray(g, dtype=xp.float64))
    order = xp.argsort(-w, kind="stable")
    return w[order], xp.ascontiguousarray(v[:, order])


def _tail_norms2(z: Any, vectors: Any) -> Any:
    """Squared residual norm after 0..T basis vectors, (n, T + 1) float64.

    Column ``k`` is ``sum_{l >= k} (z V)_l**2``, the product ``z V`` in float32
    (half the cost of float64; its rounding, about ``T u`` of each coefficient,
    moves a count only for voxels within a fraction of a percent of the
    tolerance: these counts choose the rank, which sets the speed of the kernel,
    never its result), the squares and sums in float64.
    """
    xp = array_module(z, vectors)
    p = (aligned(z, xp.float32) @ aligned(vectors, xp.float32)).astype(xp.float64)
    p *= p
    tail = xp.cumsum(p[:, ::-1], axis=1)[:, ::-1]
    return xp.concatenate([tail, xp.zeros((tail.shape[0], 1), dtype=xp.float64)], axis=1)


def residual_exceed_counts(z: Any, vectors: Any,
                           tol: float | Sequence[float] = RESIDUAL_TOL) -> Any:
    """For k = 0..T, how many rows of ``z`` keep a residual norm above ``tol`` with k vectors.

    Parameters
    ----------
    z : (n, T) standardised series
    vectors : (T, T) float64 basis from :func:`temporal_basis`
    tol : float or sequence of floats
        A sequence (the rank ladder) counts every tolerance from one projection.

    Returns
    -------
    int64 array (T + 1,), or (len(tol), T + 1) for a sequence
        Counts; they add up over chunks of voxels (a reduction across blocks).
    """
    xp = array_module(z, vectors)
    tols = np.atleast_1d(np.asarray(tol, dtype=np.float64))
    counts = xp.zeros((tols.size, vectors.shape[1] + 1), dtype=xp.int64)
    for s, e in _chunks(z.shape[0]):
        tail = _tail_norms2(z[s:e], vectors)
        for i, t in enumerate(tols.tolist()):
            counts[i] += (tail > t * t).sum(axis=0)
    return counts if np.ndim(tol) else counts[0]


def choose_rank(counts: Any, n_valid: int, *, quantile: float = RESIDUAL_QUANTILE,
                step: int = RANK_STEP) -> int:
    """Smallest rank leaving at most ``(1 - quantile) n_valid`` voxels above the tolerance.

    ``counts`` from :func:`residual_exceed_counts` (summed over all voxels);
    the rank is rounded up to a multiple of ``step`` and capped at T.
    """
    c = to_numpy(counts)
    n_t = c.size - 1
    allowed = math.floor((1.0 - quantile) * max(int(n_valid), 0))
    ok = np.flatnonzero(c <= allowed)
    k = int(ok[0]) if ok.size else n_t
    return min(n_t, max(step, -(-k // step) * step))


def project(z: Any, vectors: Any, rank: int) -> LowRankFactors:
    """Coefficients on the first ``rank`` basis vectors and rigorous residual norms.

    The squared residual norm is ``||z||**2 - ||z V_k||**2`` in float64; its
    rounding and the float64 non-orthogonality of the basis (each well below
    ``1e-12``) are covered by adding ``1e-11``; the norm is rounded up to float32.
    """
    f = project_ladder(z, vectors, (rank,))
    return LowRankFactors(f.coef, f.resid[:, 0])


def project_ladder(z: Any, vectors: Any, ranks: Sequence[int]) -> LowRankFactors:
    """:func:`project` at every rank of a ladder from one product.

    Returns
    -------
    LowRankFactors
        ``coef`` (n, max(ranks)): the coefficients of every rung are its first
        columns; ``resid`` float32 (n, len(ranks)): the rigorous residual norm at
        each rank (as :func:`project`).  :func:`factors_at_rank` takes one rung.
    """
    xp = array_module(z, vectors)
    ranks = [int(k) for k in ranks]
    top = max(ranks)
    if vectors.shape[0] != z.shape[1] or vectors.shape[1] < top:
        raise ValueError(f"project: basis {vectors.shape} has no {top} vectors of "
                         f"length T={z.shape[1]}")
    vk = aligned(xp.ascontiguousarray(vectors[:, :top]))
    n = z.shape[0]
    coef = xp.empty((n, top), dtype=xp.float32)
    resid = xp.empty((n, len(ranks)), dtype=xp.float32)
    for s, e in _chunks(n):
        z64 = aligned(z[s:e], xp.float64)
        p = z64 @ vk
        coef[s:e] = p
        z2 = (z64 * z64).sum(axis=1)
        zero = ~xp.any(z64 != 0, axis=1)
        p *= p
        for q, k in enumerate(ranks):
            r64 = xp.sqrt(xp.maximum(z2 - p[:, :k].sum(axis=1), 0.0) + 1e-11)
            r32 = r64.astype(xp.float32)
            r32 = xp.where(r32.astype(xp.float64) < r64,
                           xp.nextafter(r32, xp.float32(xp.inf)), r32)
            r32[zero] = 0
            resid[s:e, q] = r32
    return LowRankFactors(coef, resid)


def factors_at_rank(factors: LowRankFactors, ranks: Sequence[int], rank: int) -> LowRankFactors:
    """The rung ``rank`` of :func:`project_ladder`'s ``factors`` (views, no copy)."""
    q = [int(k) for k in ranks].index(int(rank))
    return LowRankFactors(factors.coef[:, :rank], factors.resid[:, q])


def bound_slack(rank: int, coef_a: Any, coef_b: Any) -> float:
    """Float32 slack of the bound: a rigorous upper bound of every rounding error.

    ``|c_ij - <alpha_i, alpha_j>| <= (k + 2) u / (1 - (k + 2) u) * ||alpha_i|| ||alpha_j||``
    (coefficients rounded to float32, then a float32 sum of ``k`` products in any order)
    plus the rounding of the bound arithmetic in float32 (``8 u`` of values at most 2).
    The norms are float32 sums of squares rounded up (divided by ``1 - gamma_k``,
    ``gamma_k = k u / (1 - k u)``: a bound of any summation order).
    Returned for both sides of the comparison (``2 s``).
    """
    xp = array_module(coef_a, coef_b)

    def max_norm(c):
        # float32 sums of k squares (any order): the true sum is at most the computed
        # one / (1 - gamma_k), gamma_k = k u / (1 - k u)
        if c.shape[0] == 0 or c.shape[1] == 0:
            return 0.0
        c = xp.asarray(c, dtype=xp.float32)
        n2 = float(xp.einsum("ij,ij->i", c, c).max())
        gamma = c.shape[1] * _U32 / (1.0 - c.shape[1] * _U32)
        return math.sqrt(n2 / (1.0 - gamma))

    m = (rank + 2) * _U32
    s = m / (1.0 - m) * max_norm(coef_a) * max_norm(coef_b) * (1.0 + 1e-6)
    return float(2.0 * s + 16.0 * _U32 * 2.0)


# ----------------------------------------------------------------------------- compiled loops

#: Fast-math flags safe here: no NaN reaches the loops (standardised series); max
#: is exact in any order; contraction (FMA) only makes the bound arithmetic more
#: accurate and is covered by the slack.  Infinities are kept (no ``ninf``).
_FASTMATH = {"nnan", "nsz", "reassoc", "contract", "arcp"}

#: Columns tested at once in the candidate tests (a packed compare-and-count of a
#: fixed number of lanes, then a scalar rescan of the few lanes that hold a
#: candidate; a boolean ``hit |= ...`` over a variable range compiled to scalar
#: code, 8x slower).
_LANE = 64


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _append_row(row, t, i, cand_i, cand_j, n_cand):  # pragma: no cover - compiled
    """Append the pairs ``(i, j)`` with ``row[j] >= t`` from ``n_cand``.

    Stores at most ``cand_i.size`` pairs; returns the new count (which may
    exceed the capacity: the pairs past it are counted, not stored).
    """
    nb = row.size
    n_full = nb // _LANE
    for k in range(n_full):
        j0 = k * _LANE
        hit = 0
        for j in range(_LANE):
            hit += row[j0 + j] >= t
        if hit:
            n_cand = _append_lanes(row, t, i, j0, j0 + _LANE, cand_i, cand_j, n_cand)
    return _append_lanes(row, t, i, n_full * _LANE, nb, cand_i, cand_j, n_cand)


@numba.njit(cache=True, nogil=True)
def _append_lanes(row, t, i, j0, j1, cand_i, cand_j, n_cand):  # pragma: no cover - compiled
    """The scalar rescan of :func:`_append_row`: columns ``j0..j1`` of ``row``."""
    cap = cand_i.size
    for j in range(j0, j1):
        if row[j] >= t:
            if n_cand < cap:
                cand_i[n_cand] = i
                cand_j[n_cand] = j
            n_cand += 1
    return n_cand


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _row_candidates(c, thr, row0, cand_i, cand_j, n_cand):  # pragma: no cover - compiled
    """Append the pairs ``(row0 + i, j)`` with ``c[i, j] >= thr[i]`` from ``n_cand``.

    Stores at most ``cand_i.size`` pairs; returns the new count (which may
    exceed the capacity: the caller then falls back).
    """
    for i in range(c.shape[0]):
        n_cand = _append_row(c[i], thr[i], row0 + i, cand_i, cand_j, n_cand)
    return n_cand


@intrinsic
def _maxnum(typingctx, x, y):  # pragma: no cover - compiled
    """``max(x, y)`` of two float32 as LLVM's ``llvm.maxnum.f32`` (fast-math flags).

    A comparison (``if v > m``) or numba's ``max`` compile to scalar code (a
    select that the loop vectoriser does not take as a reduction); ``maxnum``
    is a max that LLVM vectorises (packed ``vmaxps``), in elementwise loops and
    in reductions.  For NaN-free inputs it is the maximum (exact; only the sign
    of a zero may differ, which no comparison sees).
    """
    if x != types.float32 or y != types.float32:
        return None

    def codegen(context, builder, signature, args):
        f32 = llvm_ir.FloatType()
        fn = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(f32, [f32, f32]), "llvm.maxnum.f32")
        return builder.call(fn, args, fastmath=("fast",))

    return types.float32(types.float32, types.float32), codegen


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _row_max(row):  # pragma: no cover - compiled
    """Largest value of a float32 row (a packed ``vmaxps`` reduction)."""
    mx = np.float32(-np.inf)
    for j in range(row.size):
        mx = _maxnum(mx, row[j])
    return mx


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _max_into(acc, row):  # pragma: no cover - compiled
    """``acc = max(acc, row)`` elementwise, float32 (packed ``vmaxps``)."""
    for j in range(row.size):
        acc[j] = _maxnum(acc[j], row[j])


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _strip_pass(c, e, f, two_fmax, slack2, group, row0, gmax, ge, col_lo, cand_i, cand_j,
                n_cand):  # pragma: no cover - compiled
    """All the bound passes of one strip, fused: one read of each row from memory.

    For each row ``i`` (in L1 while it is used): its maximum ``m_i``, the
    column maxima of its group (``gmax[g]``, raw), then its candidates
    ``c_ij >= m_i - 2 e_i max(f) - 2 s`` appended from ``n_cand`` (as
    :func:`_row_candidates`).  After each group, ``ge[g]`` (its largest ``e``)
    and the columns' lower bounds ``col_lo_j = max(col_lo_j, gmax[g, j] - ge[g] f_j)``.
    The maxima are packed (:func:`_maxnum`): the row maximum and the column
    maxima are two loops over the row, which stays in L1.
    Returns the new candidate count (which may exceed the capacity: the
    pairs past it are counted, not stored).
    """
    m, nb = c.shape
    n_groups = (m + group - 1) // group
    for g in range(n_groups):
        gm = gmax[g]
        gm[:] = -np.inf
        emax = np.float32(0.0)
        for i in range(g * group, min((g + 1) * group, m)):
            row = c[i]
            _max_into(gm, row)
            t = _row_max(row) - two_fmax * e[i] - slack2
            emax = max(emax, e[i])
            n_cand = _append_row(row, t, row0 + i, cand_i, cand_j, n_cand)
        ge[g] = emax
        for j in range(nb):
            col_lo[j] = _maxnum(col_lo[j], gm[j] - emax * f[j])
    return n_cand


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _dot64(x, y):  # pragma: no cover - compiled
    """Float64 dot product of two float32 rows (one fixed summation order)."""
    acc = 0.0
    for t in range(x.size):
        acc += np.float64(x[t]) * np.float64(y[t])
    return acc


@numba.njit(cache=True, nogil=True)
def _update(r, i, j, row_max, row_arg, col_max, col_arg):  # pragma: no cover - compiled
    if r > row_max[i] or (r == row_max[i] and j < row_arg[i]):
        row_max[i] = r
        row_arg[i] = j
    if r > col_max[j] or (r == col_max[j] and i < col_arg[j]):
        col_max[j] = r
        col_arg[j] = i


@numba.njit(cache=True, nogil=True)
def _exact(a, b, ca, cb, e, f, cand_i, cand_j, group_rows, group_max, group_e, col_lo,
           slack2, row_max, row_arg, col_max, col_arg):  # pragma: no cover - compiled
    """Exact float64 correlations of the row candidates and of the column candidates.

    Row candidates are given.  A column's candidates are searched in the
    groups of rows whose upper bound ``group_max[g, j] + group_e[g] f_j``
    reaches the column's lower bound ``col_lo[j] - slack2``; in those, the
    rank-k value of each pair is recomputed and its own bound applied.
    Updates the (max, arg) of rows and columns in place, ties to the smaller
    index (a pair found twice gives the same value twice).  Returns the pairs
    recomputed.
    """
    na = a.shape[0]
    nb = b.shape[0]
    done = 0
    for q in range(cand_i.size):
        i = cand_i[q]
        j = cand_j[q]
        _update(_dot64(a[i], b[j]), i, j, row_max, row_arg, col_max, col_arg)
        done += 1
    n_groups = group_max.shape[0]
    thr = col_lo - slack2
    tile = np.zeros((ca.shape[1], group_rows), dtype=np.float32)
    acc = np.empty(group_rows, dtype=np.float32)
    hits = np.empty(nb, dtype=np.int64)
    for g in range(n_groups):  # rows of group_max read contiguously; the order of
        ge = group_e[g]        # updates does not matter (ties to the smaller index)
        gm = group_max[g]
        i0, i1 = g * group_rows, min((g + 1) * group_rows, na)
        n_hits = _group_columns(gm, ge, f, thr, hits)
        if n_hits:  # the group's coefficients, transposed: its rows at once per column
            _load_tile(ca, i0, i1, tile)
        for q in range(n_hits):
            j = hits[q]
            _tile_dot(tile, cb[j], acc)
            for i in range(i0, i1):
                if acc[i - i0] + e[i] * f[j] >= thr[j]:
                    _update(_dot64(a[i], b[j]), i, j, row_max, row_arg, col_max, col_arg)
                    done += 1
    return done


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _group_columns(gm, ge, f, thr, hits):  # pragma: no cover - compiled
    """Store in ``hits`` the columns whose group bound ``gm + ge f`` reaches ``thr``; their count.

    64 columns are counted at once (packed), only lanes with a hit rescanned.
    """
    nb = gm.size
    n_full = nb // _LANE
    n = 0
    for k in range(n_full + 1):
        j0 = k * _LANE
        if k < n_full:
            h = 0
            for j in range(_LANE):
                h += gm[j0 + j] + ge * f[j0 + j] >= thr[j0 + j]
            if h == 0:
                continue
        for j in range(j0, min(j0 + _LANE, nb)):
            if gm[j] + ge * f[j] >= thr[j]:
                hits[n] = j
                n += 1
    return n


@numba.njit(cache=True, nogil=True)
def _load_tile(ca, i0, i1, tile):  # pragma: no cover - compiled
    """``tile[:, r] = ca[i0 + r]`` for the rows of one group (zeros past ``i1``)."""
    for r in range(tile.shape[1]):
        for t in range(tile.shape[0]):
            tile[t, r] = ca[i0 + r, t] if i0 + r < i1 else np.float32(0.0)


@numba.njit(cache=True, nogil=True, fastmath=_FASTMATH)
def _tile_dot(tile, y, acc):  # pragma: no cover - compiled
    """``acc[r] = sum_t tile[t, r] y[t]`` in float32: the rank-k values of a group's rows
    with one column, all rows at once (packed over the rows)."""
    acc[:] = 0
    for t in range(tile.shape[0]):
        yt = y[t]
        row = tile[t]
        for r in range(acc.size):
            acc[r] += row[r] * yt


def _group_max(c: np.ndarray, group: int) -> np.ndarray:
    """Column maxima of ``c`` per consecutive group of ``group`` rows (the last may be short)."""
    m, nb = c.shape
    full = m // group
    parts = []
    if full:
        parts.append(c[: full * group].reshape(full, group, nb).max(axis=1))
    if m > full * group:
        parts.append(c[full * group:].max(axis=0, keepdims=True))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _strip_bounds(c: np.ndarray, e: np.ndarray, fmax: float, slack2: np.float32,
                  group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised reductions of one strip: row thresholds and the column records.

    With ``m_i = max_j c_ij``, a row's maximum is at least ``m_i - e_i fmax - s``,
    so its candidates satisfy ``c_ij >= m_i - 2 e_i fmax - 2 s`` (the threshold).
    Per group of rows, ``gmax`` (column maxima of ``c``) and ``ge`` (largest
    residual): any pair of the group has ``c + e f <= gmax + ge f``, and the
    column's maximum is at least ``gmax - ge f - s``.
    """
    thr = c.max(axis=1) - np.float32(2.0 * fmax) * e - slack2
    gmax = _group_max(c, group)
    ge = _group_max(e[:, None], group)[:, 0]
    return thr.astype(np.float32), gmax, ge


# ----------------------------------------------------------------------------- block kernel


def _valid_index(valid: Any, n: int) -> np.ndarray | None:
    if valid is None:
        return None
    v = np.asarray(to_numpy(valid), dtype=bool)
    return None if v.all() else np.flatnonzero(v)


def lowrank_block_maxcorr(
    a: Any,
    b: Any,
    fa: LowRankFactors,
    fb: LowRankFactors,
    a_valid: Any = None,
    b_valid: Any = None,
    a_offset: int = 0,
    b_offset: int = 0,
    *,
    slack: float | None = None,
    strip_rows: int = STRIP_ROWS,
    group_rows: int = GROUP_ROWS,
    max_candidates: int | None = None,
    initial_capacity: int | None = None,
) -> LowRankBlock:
    """Exact row and column max/argmax of ``a @ b.T`` from its rank-``k`` part and a bound.

    Parameters
    ----------
    a, b : float32 arrays (na, T), (nb, T)
        Standardised series (:func:`~cfhdask.cfh.kernels.standardize`); used
        for the exact recomputation of the candidates.
    fa, fb : LowRankFactors
        Their coefficients and residual norms on one shared basis
        (:func:`project`).
    a_valid, b_valid : bool arrays, optional
        False for excluded series (never a maximum, NaN-free -inf / -1 results).
    a_offset, b_offset : int
        Global index of the first row of ``a`` / ``b``; added to the arguments.
    slack : float, optional
        ``2 s`` of the bound (default :func:`bound_slack` of these factors).
    strip_rows, group_rows : int
        Rows of ``a`` per strip of the product, and per group sharing one record
        of the column upper bounds (results do not depend on them).
    max_candidates : int, optional
        Most row candidates kept (default :data:`CANDIDATES_PER_ROW_LIMIT` per
        valid row).  More: the block is computed by
        :func:`~cfhdask.cfh.kernels.block_maxcorr` instead (``full_rank``).
        The buffer starts at ``4 na + 4096`` pairs (or ``initial_capacity``)
        and grows as needed below that limit (the strip that overflowed it is
        passed again).
    initial_capacity : int, optional
        The buffer's first size (a test hook for the growth path).

    Returns
    -------
    LowRankBlock
        The exact :class:`~cfhdask.cfh.kernels.BlockMax` (values float32 of the
        float64 dot products), the number of pairs recomputed, and whether the
        block fell back to full rank.
    """
    if array_module(a, b, fa.coef, fb.coef) is not np:
        return LowRankBlock(block_maxcorr(a, b, a_valid, b_valid, a_offset, b_offset), 0, True)
    t0 = _clock()
    na, nb = a.shape[0], b.shape[0]
    ia, ib = _valid_index(a_valid, na), _valid_index(b_valid, nb)
    a_s = np.ascontiguousarray(a if ia is None else a[ia], dtype=np.float32)
    b_s = np.ascontiguousarray(b if ib is None else b[ib], dtype=np.float32)
    ca = aligned(np.ascontiguousarray(fa.coef if ia is None else fa.coef[ia], dtype=np.float32))
    cb = aligned(np.ascontiguousarray(fb.coef if ib is None else fb.coef[ib], dtype=np.float32))
    ea = np.ascontiguousarray(fa.resid if ia is None else fa.resid[ia], dtype=np.float32)
    eb = np.ascontiguousarray(fb.resid if ib is None else fb.resid[ib], dtype=np.float32)
    ma, mb = a_s.shape[0], b_s.shape[0]
    slack2 = np.float32(bound_slack(ca.shape[1], ca, cb) if slack is None else slack)
    limit = int(CANDIDATES_PER_ROW_LIMIT * ma if max_candidates is None else max_candidates)
    cap = min(limit, int(4 * ma + 4096 if initial_capacity is None else initial_capacity))
    group = max(1, int(group_rows))

    row_max = np.full(ma, -np.inf)
    row_arg = np.full(ma, -1, dtype=np.int64)
    col_max = np.full(mb, -np.inf)
    col_arg = np.full(mb, -1, dtype=np.int64)
    n_done = 0
    if ma and mb:
        col_lo = np.full(mb, -np.inf, dtype=np.float32)
        n_groups = -(-ma // group)
        group_max = np.empty((n_groups, mb), dtype=np.float32)
        group_e = np.empty(n_groups, dtype=np.float32)
        cand_i = np.empty(cap, dtype=np.int64)
        cand_j = np.empty(cap, dtype=np.int64)
        strip = max(group, int(strip_rows) // group * group)
        buf = np.empty((min(strip, ma), mb), dtype=np.float32)
        cbt = cb.T
        two_fmax = np.float32(2.0 * float(eb.max()))
        n_cand = 0
        t0 = _lap("block", t0)
        for r0 in range(0, ma, strip):
            r1 = min(r0 + strip, ma)
            c = np.matmul(ca[r0:r1], cbt, out=buf[: r1 - r0])
            t0 = _lap("gemm", t0)
            g0, g1 = r0 // group, -(-r1 // group)
            while True:  # a strip that overflows the buffer is passed again into a larger one
                n_new = _strip_pass(c, ea[r0:r1], eb, two_fmax, slack2, group, r0,
                                    group_max[g0:g1], group_e[g0:g1], col_lo, cand_i, cand_j,
                                    n_cand)
                if n_new <= cap:
                    break
                if n_new > limit:
                    t0 = _lap("strip", t0)
                    block = block_maxcorr(a, b, a_valid, b_valid, a_offset, b_offset)
                    _lap("full", t0)
                    return LowRankBlock(block, n_new, True)
                cap = min(limit, max(2 * cap, n_new))
                cand_i, cand_j = _grown(cand_i, n_cand, cap), _grown(cand_j, n_cand, cap)
            n_cand = n_new
            t0 = _lap("strip", t0)
        del buf
        n_done = _exact(a_s, b_s, ca, cb, ea, eb, cand_i[:n_cand], cand_j[:n_cand], group,
                        group_max, group_e, col_lo, slack2, row_max, row_arg, col_max,
                        col_arg)
        t0 = _lap("exact", t0)
    out = LowRankBlock(_scatter(row_max, row_arg, col_max, col_arg, ia, ib, na, nb,
                                a_offset, b_offset), int(n_done), False)
    _lap("block", t0)
    return out


def _grown(buf: np.ndarray, n: int, size: int) -> np.ndarray:
    """A buffer of ``size`` entries holding the first ``n`` of ``buf``."""
    out = np.empty(size, dtype=buf.dtype)
    out[:n] = buf[:n]
    return out


def _scatter(row_max, row_arg, col_max, col_arg, ia, ib, na, nb, a_offset, b_offset) -> BlockMax:
    """Results on the valid rows/columns back to the block's indices (global arguments)."""
    def place(m, arg, idx, n, other_idx, other_offset):
        out_m = np.full(n, -np.inf, dtype=np.float32)
        out_a = np.full(n, -1, dtype=np.int64)
        mapped = arg if other_idx is None else np.where(arg >= 0, other_idx[arg], -1)
        mapped = np.where(mapped >= 0, mapped + other_offset, -1)
        if idx is None:
            out_m[:] = m
            out_a[:] = mapped
        else:
            out_m[idx] = m
            out_a[idx] = mapped
        return out_m, out_a

    rm, ra = place(row_max, row_arg, ia, na, ib, b_offset)
    cm, ca = place(col_max, col_arg, ib, nb, ia, a_offset)
    return BlockMax(rm, ra, cm, ca)


# ----------------------------------------------------------------------------- per subject


def plan_subject(
    left: Any,
    right: Any,
    left_valid: Any = None,
    right_valid: Any = None,
    *,
    tol: float | Sequence[float] = RESIDUAL_LADDER,
    quantile: float = RESIDUAL_QUANTILE,
    max_rank_fraction: float = MAX_RANK_FRACTION,
    max_candidates_per_row: float = MAX_CANDIDATES_PER_ROW,
    pilot_rows: int = PILOT_ROWS,
    rank_sample: int = RANK_SAMPLE,
    g: Any = None,
) -> SubjectPlan:
    """Choose low rank (and which rank) or full rank for one subject, from its data.

    The basis is the eigen-decomposition of the Gram matrix of both
    hemispheres (``g``, computed here when not given: float32 products summed in
    float64, see :func:`gram`).  Each tolerance of ``tol`` (a rung of the rank
    ladder, :data:`RESIDUAL_LADDER`; a float: one rung) gives a rank, the
    smallest that leaves at most ``1 - quantile`` of the valid voxels with a
    residual norm above it (:func:`choose_rank`), counted on at most
    ``rank_sample`` voxels of each hemisphere (evenly spaced; the bound is per
    voxel, so the rank only sets the speed, never the result).  Rungs above
    ``max_rank_fraction * T`` are dropped.  A pilot strip (``pilot_rows`` left
    voxels evenly spaced, against the whole right hemisphere) then tries the
    rungs from the lowest rank up (:func:`plan_ladder`): the first that keeps at
    most ``max_candidates_per_row`` candidates per row is taken.  Full rank when
    no rung is left or none prunes well enough.

    Returns
    -------
    SubjectPlan
    """
    return _plan_and_right_factors(left, right, left_valid, right_valid, tol=tol,
                                   quantile=quantile, max_rank_fraction=max_rank_fraction,
                                   max_candidates_per_row=max_candidates_per_row,
                                   pilot_rows=pilot_rows, rank_sample=rank_sample, g=g)[0]


def _plan_and_right_factors(
    left, right, left_valid=None, right_valid=None, *, tol=RESIDUAL_LADDER,
    quantile=RESIDUAL_QUANTILE, max_rank_fraction=MAX_RANK_FRACTION,
    max_candidates_per_row=MAX_CANDIDATES_PER_ROW, pilot_rows=PILOT_ROWS,
    rank_sample=RANK_SAMPLE, g=None,
) -> tuple[SubjectPlan, LowRankFactors | None]:
    """:func:`plan_subject`, and the projection of ``right`` at the chosen rank (None if full).

    The Gram matrix is accumulated from float32 products (the basis only sets the
    speed, see :func:`gram`); the pilot rows and the right hemisphere are
    projected once, at every rung (:func:`project_ladder`).
    """
    t0 = _clock()
    g = gram(left, right, dtype=np.float32) if g is None else g
    t0 = _lap("plan.gram", t0)
    _, vectors = temporal_basis(g)
    t0 = _lap("plan.eigh", t0)
    sl, sr = sample_rows(left.shape[0], rank_sample), sample_rows(right.shape[0], rank_sample)
    counts = residual_exceed_counts(left[sl], vectors, tol) + residual_exceed_counts(
        right[sr], vectors, tol)
    n_valid = count_valid(None if left_valid is None else to_numpy(left_valid)[sl], sl.size) \
        + count_valid(None if right_valid is None else to_numpy(right_valid)[sr], sr.size)
    plan = plan_rank(counts, n_valid, vectors, tol=tol, quantile=quantile,
                     max_rank_fraction=max_rank_fraction)
    t0 = _lap("plan.counts", t0)
    if plan.strategy != "lowrank":
        return plan, None
    rows = sample_rows(left.shape[0], pilot_rows)
    lv = None if left_valid is None else to_numpy(left_valid)[rows]
    fl = project_ladder(left[rows], vectors, plan.ranks)
    fr = project_ladder(right, vectors, plan.ranks)
    t0 = _lap("plan.projection", t0)

    def pilot_at(k):
        return pilot_candidates(factors_at_rank(fl, plan.ranks, k),
                                factors_at_rank(fr, plan.ranks, k), lv, right_valid)

    plan = plan_ladder(plan, pilot_at, max_candidates_per_row=max_candidates_per_row)
    _lap("plan.pilot", t0)
    if plan.strategy != "lowrank":
        return plan, None
    return plan, factors_at_rank(fr, plan.ranks, plan.rank)


def plan_rank(counts: Any, n_valid: int, vectors: Any, *,
              tol: float | Sequence[float] = RESIDUAL_TOL,
              quantile: float = RESIDUAL_QUANTILE,
              max_rank_fraction: float | None = MAX_RANK_FRACTION) -> SubjectPlan:
    """The first half of :func:`plan_subject`: the ranks, and full rank when they are too large.

    Parameters
    ----------
    counts : int array (T + 1,), or (len(tol), T + 1) for a ladder
        :func:`residual_exceed_counts` summed over the sampled voxels.
    n_valid : int
        Valid voxels among them.
    vectors : (T, T) float64
        The basis (:func:`temporal_basis`).
    tol : float or sequence of floats
        The tolerance(s) of ``counts`` (a sequence: the rank ladder, loosest first).
    quantile : float
        As :func:`plan_subject`.
    max_rank_fraction : float or None
        Rungs above this fraction of T are dropped; full rank when none is left.
        None: low rank whatever the rank (the ``lowrank`` kernel).

    Returns
    -------
    SubjectPlan
        ``lowrank`` (pilot not yet run: NaN; ``rank`` the lowest rung, ``ranks``
        every rung left, ascending and distinct) or ``full``.
    """
    n_t = int(vectors.shape[0])
    tols = [float(t) for t in np.atleast_1d(np.asarray(tol, dtype=np.float64))]
    c = np.atleast_2d(to_numpy(counts))
    if c.shape[0] != len(tols):
        raise ValueError(f"plan_rank: {c.shape[0]} rows of counts for {len(tols)} "
                         f"tolerance(s)")
    ranks = sorted({choose_rank(row, n_valid, quantile=quantile) for row in c})
    kept = [k for k in ranks if max_rank_fraction is None or k <= max_rank_fraction * n_t]
    if not kept:
        return SubjectPlan("full", ranks[-1], None, float("nan"),
                           f"rank {ranks[0]} of T={n_t} for residual {max(tols):g} exceeds "
                           f"{max_rank_fraction:g} T", tuple(ranks))
    ladder = "" if len(kept) == 1 else f" (ladder {'/'.join(map(str, kept))})"
    return SubjectPlan("lowrank", kept[0], vectors, float("nan"),
                       f"rank {kept[0]} of T={n_t}{ladder}", tuple(kept))


def plan_pilot(plan: SubjectPlan, pilot: float, *,
               max_candidates_per_row: float = MAX_CANDIDATES_PER_ROW) -> SubjectPlan:
    """One rung of the second half of :func:`plan_subject`, at ``plan.rank``.

    ``pilot`` is :func:`pilot_candidates` of the pilot rows against the other
    hemisphere at that rank; full rank when it keeps too many candidates.
    """
    return plan_ladder(plan, lambda k: pilot,
                       max_candidates_per_row=max_candidates_per_row,
                       ranks=(plan.rank,))


def plan_ladder(plan: SubjectPlan, pilot_at: Callable[[int], float], *,
                max_candidates_per_row: float = MAX_CANDIDATES_PER_ROW,
                ranks: Sequence[int] | None = None) -> SubjectPlan:
    """The second half of :func:`plan_subject`: climb the rank ladder until the bound prunes.

    Parameters
    ----------
    plan : SubjectPlan
        From :func:`plan_rank` (a ``full`` plan is returned as it is).
    pilot_at : callable
        ``pilot_at(k)``: :func:`pilot_candidates` of the pilot rows at rank ``k``.
    max_candidates_per_row : float
        A rung keeping more candidates per pilot row prunes badly: the next rung.
    ranks : sequence of int, optional
        The rungs, ascending (default ``plan.ranks``, or ``(plan.rank,)``).

    Returns
    -------
    SubjectPlan
        ``lowrank`` at the first rung that prunes well (``pilots``: every rung
        tried; the reason names each with its candidates), else ``full``.
    """
    if plan.strategy != "lowrank":
        return plan
    ranks = tuple(int(k) for k in (ranks or plan.ranks or (plan.rank,)))
    tried: list[tuple[int, float]] = []
    n_t = int(plan.basis.shape[0]) if plan.basis is not None else None
    for k in ranks:
        pilot = float(pilot_at(k))
        tried.append((k, pilot))
        if pilot <= max_candidates_per_row:
            where = f"rank {k} of T={n_t}" if n_t is not None else plan.reason
            climbed = "" if len(tried) == 1 else (
                f" (rank {_per_rung(tried[:-1])} candidates per row > "
                f"{max_candidates_per_row:g})")
            return plan._replace(rank=k, pilot_candidates=pilot, pilots=tuple(tried),
                                 reason=f"{where}{climbed}, {pilot:.2f} candidates per "
                                        f"pilot row")
    return SubjectPlan("full", ranks[-1], None, tried[-1][1],
                       f"{plan.reason}: the bound keeps rank {_per_rung(tried)} candidates "
                       f"per row (> {max_candidates_per_row:g})", ranks, tuple(tried))


def _per_rung(tried: Sequence[tuple[int, float]]) -> str:
    """``80: 10.6, 88: 5.2`` for the log."""
    return ", ".join(f"{k}: {p:.1f}" for k, p in tried)


def sample_rows(n: int, size: int) -> np.ndarray:
    """At most ``size`` indices of ``range(n)``, evenly spaced (deterministic)."""
    return np.unique(np.linspace(0, n - 1, min(size, n)).astype(np.int64))


def count_valid(valid: Any, n: int) -> int:
    """Valid entries of a mask (``n`` when there is none)."""
    return n if valid is None else int(np.asarray(to_numpy(valid), dtype=bool).sum())


def pilot_candidates(fa: LowRankFactors, fb: LowRankFactors, a_valid: Any = None,
                     b_valid: Any = None) -> float:
    """Mean number of candidates per valid row of ``fa`` that the row bound alone keeps.

    The rows against all of ``fb`` with the compiled strip pass (CuPy arrays: on
    the host).
    """
    ia = _valid_index(a_valid, fa.coef.shape[0])
    ib = _valid_index(b_valid, fb.coef.shape[0])
    ca = aligned(np.ascontiguousarray(to_numpy(fa.coef if ia is None else fa.coef[ia])))
    cb = aligned(np.ascontiguousarray(to_numpy(fb.coef if ib is None else fb.coef[ib])))
    ea = np.ascontiguousarray(to_numpy(fa.resid if ia is None else fa.resid[ia]))
    eb = np.ascontiguousarray(to_numpy(fb.resid if ib is None else fb.resid[ib]))
    m, nb = ca.shape[0], cb.shape[0]
    if m == 0 or nb == 0:
        return 0.0
    slack2 = np.float32(bound_slack(ca.shape[1], ca, cb))
    cand = np.empty(64 * m, dtype=np.int64)
    fmax = float(eb.max())
    n = 0
    for r0 in range(0, m, STRIP_ROWS):
        r1 = min(r0 + STRIP_ROWS, m)
        c = np.ascontiguousarray(ca[r0:r1] @ cb.T)
        thr = _strip_bounds(c, ea[r0:r1], fmax, slack2, r1 - r0)[0]
        n = _row_candidates(c, thr, 0, cand, cand, n)
    return n / m


def lowrank_maxcorr(
    left: Any,
    right: Any,
    left_valid: Any = None,
    right_valid: Any = None,
    *,
    mode: str = "auto",
    block: int = 4096,
    plan: SubjectPlan | None = None,
    **plan_options: Any,
) -> tuple[BlockMax, dict]:
    """CFH maxima of one subject (whole hemispheres), low rank where it pays, else full rank.

    Parameters
    ----------
    left, right : float32 arrays (nL, T), (nR, T)
        Standardised series.
    left_valid, right_valid : bool arrays, optional
    mode : {"auto", "off"}
        ``auto``: :func:`plan_subject` decides; ``off``: full rank.
    block : int
        Voxels per side of one block (as the Dask engine's blocks).
    plan : SubjectPlan, optional
        A plan made already.
    **plan_options
        Passed to :func:`plan_subject`.

    Returns
    -------
    (BlockMax, dict)
        Row results for the left voxels (arguments index ``right``), column
        results for the right voxels; and ``strategy``, ``rank``,
        ``n_candidates``, ``full_rank_blocks``, ``pilot_candidates``, ``pilots``
        (``[rank, candidates per pilot row]`` of each rung tried), ``reason``.
    """
    if mode not in ("auto", "off"):
        raise ValueError(f"lowrank mode must be 'auto' or 'off', got {mode!r}")
    if mode == "off":
        plan = SubjectPlan("full", left.shape[1], None, float("nan"), "low rank off")
    right_factors = None
    if mode == "auto" and plan is None:
        # the pilot's projection of the right hemisphere is the one the blocks need
        plan, right_factors = _plan_and_right_factors(left, right, left_valid, right_valid,
                                                      **plan_options)
    nl, nr = left.shape[0], right.shape[0]
    lv = np.ones(nl, bool) if left_valid is None else np.asarray(to_numpy(left_valid), bool)
    rv = np.ones(nr, bool) if right_valid is None else np.asarray(to_numpy(right_valid), bool)
    factors = None
    t0 = _clock()
    if plan.strategy == "lowrank":
        factors = (project(left, plan.basis, plan.rank),
                   project(right, plan.basis, plan.rank) if right_factors is None
                   else right_factors)
        t0 = _lap("projection", t0)
    rows, cols = [], [[] for _ in range(0, nr, block)]
    n_cand = n_full = 0
    for i0 in range(0, nl, block):
        i1 = min(i0 + block, nl)
        row_parts = []
        for jb, j0 in enumerate(range(0, nr, block)):
            j1 = min(j0 + block, nr)
            if factors is None:
                t0 = _clock()
                res = block_maxcorr(left[i0:i1], right[j0:j1], lv[i0:i1], rv[j0:j1], i0, j0)
                _lap("full", t0)
            else:
                fl = LowRankFactors(factors[0].coef[i0:i1], factors[0].resid[i0:i1])
                fr = LowRankFactors(factors[1].coef[j0:j1], factors[1].resid[j0:j1])
                out = lowrank_block_maxcorr(left[i0:i1], right[j0:j1], fl, fr, lv[i0:i1],
                                            rv[j0:j1], i0, j0)
                res, n_cand, n_full = out.block, n_cand + out.n_candidates, n_full + out.full_rank
            row_parts.append((res.row_max, res.row_arg))
            cols[jb].append((res.col_max, res.col_arg))
        rows.append(combine_many(row_parts))
    row_max, row_arg = (np.concatenate(v) for v in zip(*rows, strict=True))
    col_max, col_arg = (np.concatenate(v) for v in zip(*(combine_many(c) for c in cols),
                                                       strict=True))
    info = {"strategy": plan.strategy, "rank": plan.rank, "n_candidates": int(n_cand),
            "full_rank_blocks": int(n_full), "pilot_candidates": plan.pilot_candidates,
            "pilots": [[int(k), float(p)] for k, p in plan.pilots], "reason": plan.reason}
    return BlockMax(row_max, row_arg, col_max, col_arg), info

