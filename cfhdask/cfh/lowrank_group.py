"""Exact group counterpart from a low-rank sum: per-subject bases, a rigorous bound, exact candidates.

The group counterpart of a left voxel ``v`` is the argmax over right voxels
``w`` of ``S(v, w) = sum_s r_s(v, w)``.  As for one subject
(:mod:`cfhdask.cfh.lowrank`), every subject's standardised series split on
that subject's own temporal basis ``V_s`` (rank ``k_s``) into
``z = alpha V_s^T + z_perp``, so::

    S(v, w) = sum_s <alpha_s(v), alpha_s(w)> + sum_s <z_perp_s(v), z_perp_s(w)>
    |sum_s <z_perp_s(v), z_perp_s(w)>| <= sum_s e_s(v) e_s(w) <= E(v) F(w)

with ``E(v) = sqrt(sum_s e_s(v)**2)`` (Cauchy-Schwarz twice).  The first
sum is the group GEMM of :mod:`cfhdask.cfh.groupsum` over the concatenated
*coefficients* instead of the concatenated series: ``sum_s k_s`` columns
instead of ``sum_s T_s``.  A subject whose series do not compress (unfiltered
data) keeps its full standardised series as its coefficients (``e = 0``), so
subjects of both kinds mix freely in one sum.

From each summed block :func:`bounded_candidates` keeps, per row and per
column, a lower bound of the maximum (``max_w S~ - E F - s``) and the
partners whose upper bound (``S~ + E F + s``) reaches it: the true maximum
is always among them.  ``s`` (:func:`group_slack`) bounds every float32
rounding: the coefficients, the GEMMs, the sums over batches, the float32
rounding of the standardised series, and the bound arithmetic.  The
candidates are then summed exactly over every subject (float64 correlations
of the raw series, :func:`~cfhdask.cfh.kernels.pair_correlations`) and
:func:`select_counterpart` picks the maximum, ties to the smaller index: the
group counterpart of the full-rank sum, with the summed correlation in
float64.

A voxel keeps at most ``keep`` candidates; when more reach its bound (the
bound prunes badly for it) it is marked *overflowed* and computed exactly
against the whole other hemisphere.

Pure array code (NumPy; the candidate passes compiled with numba), no Dask, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numba
import numpy as np

from cfhdask.cfh.kernels import standardize
from cfhdask.cfh.lowrank import (
    MAX_RANK_FRACTION,
    RANK_SAMPLE,
    RESIDUAL_QUANTILE,
    RESIDUAL_TOL,
    count_valid,
    gram,
    plan_rank,
    project,
    residual_exceed_counts,
    sample_rows,
    temporal_basis,
)

__all__ = [
    "KEEP",
    "CandidateSet",
    "SubjectBasis",
    "bounded_candidates",
    "combine_candidates",
    "concat_candidates",
    "group_slack",
    "overflowed",
    "project_batch",
    "residual_bound",
    "select_counterpart",
    "subject_basis",
]

#: Candidates kept per voxel; a voxel with more is computed against the whole
#: other hemisphere (its bound prunes badly).
KEEP = 8

_U32 = 2.0**-24


class SubjectBasis(NamedTuple):
    """One subject's temporal basis for the group sum.

    ``vectors`` float64 (T, rank), or None for full rank (the standardised
    series are their own coefficients); ``rank`` the columns the subject adds
    to the GEMM (T for full rank); ``reason`` one line for the log.
    """

    vectors: Any
    rank: int
    reason: str


class CandidateSet(NamedTuple):
    """Candidate partners of a set of voxels (the rows, or the columns, of summed blocks).

    ``lb`` float32 (n,): a lower bound of each voxel's maximum summed
    correlation (``-inf`` with no valid partner); ``idx`` int64 (n, KEEP): the
    kept candidates (global partner indices, ``-1`` padding), ``ub`` float32
    (n, KEEP) their upper bounds; ``drop`` float32 (n,): the largest upper
    bound of a candidate that did not fit (``-inf`` if none).  A voxel has
    *overflowed* when ``drop >= lb``: a candidate may be missing.
    """

    lb: Any
    idx: Any
    ub: Any
    drop: Any


# ----------------------------------------------------------------------------- per subject
def subject_basis(z: Any, valid: Any = None, *, tol: float = RESIDUAL_TOL,
                  quantile: float = RESIDUAL_QUANTILE,
                  max_rank_fraction: float | None = MAX_RANK_FRACTION,
                  rank_sample: int = RANK_SAMPLE) -> SubjectBasis:
    """The basis of one subject: eigenvectors of its Gram matrix, at the rank its data need.

    Parameters
    ----------
    z : float32 array (n, T)
        The subject's standardised series (both hemispheres).
    valid : bool array (n,), optional
    tol, quantile, max_rank_fraction
        As :func:`cfhdask.cfh.lowrank.plan_rank`: the smallest rank leaving at
        most ``1 - quantile`` of the (sampled) voxels with a residual above
        ``tol``; full rank above ``max_rank_fraction * T`` (None: never).
    rank_sample : int
        Voxels on which the rank is chosen (evenly spaced).

    Returns
    -------
    SubjectBasis
    """
    n_t = int(z.shape[1])
    _, vectors = temporal_basis(gram(z, dtype=np.float32))
    rows = sample_rows(z.shape[0], 2 * rank_sample)
    counts = residual_exceed_counts(z[rows], vectors, tol)
    n_valid = count_valid(None if valid is None else np.asarray(valid)[rows], rows.size)
    plan = plan_rank(counts, n_valid, vectors, tol=tol, quantile=quantile,
                     max_rank_fraction=max_rank_fraction)
    if plan.strategy != "lowrank" or plan.rank >= n_t:
        return SubjectBasis(None, n_t, plan.reason)
    return SubjectBasis(np.ascontiguousarray(vectors[:, :plan.rank]), plan.rank, plan.reason)


def project_batch(parts: Sequence[Any], bases: Sequence[SubjectBasis]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One voxel block of a batch of subjects, as concatenated coefficients.

    Parameters
    ----------
    parts : sequence of float arrays (n, T_s)
        The raw series of the block, one array per subject.
    bases : sequence of SubjectBasis
        Each subject's basis (:func:`subject_basis`).

    Returns
    -------
    coef : float32 (n, sum k_s)
        Each subject's coefficients (its standardised series for full rank).
    valid : bool (n,)
        Valid (not constant) in at least one subject.
    e2 : float64 (n,)
        ``sum_s e_s**2``, each ``e_s`` an upper bound of the residual norm.
    """
    n = parts[0].shape[0]
    coef = np.empty((n, sum(int(b.rank) for b in bases)), dtype=np.float32)
    e2 = np.zeros(n, dtype=np.float64)
    valid = np.zeros(n, dtype=bool)
    k0 = 0
    for x, basis in zip(parts, bases, strict=True):
        z, ok = standardize(x)
        valid |= ok
        k1 = k0 + int(basis.rank)
        if basis.vectors is None:
            coef[:, k0:k1] = z
        else:
            f = project(z, basis.vectors, basis.rank)
            coef[:, k0:k1] = f.coef
            e2 += f.resid.astype(np.float64) ** 2
        k0 = k1
    return coef, valid, e2


def residual_bound(e2: Any) -> np.ndarray:
    """``sqrt(sum_s e_s**2)`` rounded up to float32 (the ``E`` of the bound)."""
    r64 = np.sqrt(np.asarray(e2, dtype=np.float64)) * (1.0 + 1e-9)
    r32 = r64.astype(np.float32)
    return np.where(r32.astype(np.float64) < r64, np.nextafter(r32, np.float32(np.inf)), r32)


def group_slack(batch_ranks: Sequence[int], n_subjects: int) -> float:
    """Float32 slack ``s`` of the group bound: every rounding between ``S~`` and ``S``.

    * each batch's GEMM over ``K`` coefficient columns, the coefficients rounded
      to float32: ``(K + 2) u / (1 - (K + 2) u)`` times ``sum_s ||alpha_s(v)||
      ||alpha_s(w)|| <= n_subjects``;
    * the sums of the batches' blocks: one rounding of a value at most
      ``n_subjects`` per batch;
    * the float32 standardised series against the float64 correlations of the
      exact pass: ``2 u`` per subject, both ways;
    * the float32 bound arithmetic: ``8 u`` of values at most ``n_subjects``.

    Parameters
    ----------
    batch_ranks : sequence of int
        ``sum_s k_s`` of each batch (the GEMMs' inner dimension).
    n_subjects : int
    """
    k = max(int(v) for v in batch_ranks) + 2
    gamma = k * _U32 / (1.0 - k * _U32)
    per = gamma + (len(batch_ranks) + 4.0001 + 8) * _U32
    return float(per * max(int(n_subjects), 1) * (1.0 + 1e-6))


# ----------------------------------------------------------------------------- candidates
@numba.njit(cache=True, nogil=True)
def _lower_bounds(c, e, f, va, vb, s, row_lb, col_lb):  # pragma: no cover - compiled
    """``max lo - s`` per row and per column, ``lo = c - e f`` (float32, no contraction)."""
    na, nb = c.shape
    col_lb[:] = -np.inf
    for i in range(na):
        m = np.float32(-np.inf)
        if va[i]:
            ei = e[i]
            for j in range(nb):
                if vb[j]:
                    lo = c[i, j] - ei * f[j]
                    if lo > m:
                        m = lo
                    if lo > col_lb[j]:
                        col_lb[j] = lo
        row_lb[i] = m - s
    for j in range(nb):
        col_lb[j] = col_lb[j] - s


@numba.njit(cache=True, nogil=True, inline="always")
def _insert(r, u, p, idx, ub, count, drop):  # pragma: no cover - compiled
    """Insert partner ``p`` of upper bound ``u`` into voxel ``r``'s top ``keep`` (value desc).

    Partners arrive in increasing order, so a tie goes after the kept ones of
    equal value (ties to the smaller index); ``drop`` keeps the largest value
    that did not fit.
    """
    keep = idx.shape[1]
    n = min(count[r], keep)
    count[r] += 1
    slot = n
    while slot > 0 and u > ub[r, slot - 1]:
        slot -= 1
    if n == keep:
        if slot == keep:
            if u > drop[r]:
                drop[r] = u
            return
        if ub[r, keep - 1] > drop[r]:
            drop[r] = ub[r, keep - 1]
        n = keep - 1
    for q in range(n, slot, -1):
        ub[r, q] = ub[r, q - 1]
        idx[r, q] = idx[r, q - 1]
    ub[r, slot] = u
    idx[r, slot] = p


@numba.njit(cache=True, nogil=True)
def _by_index(idx, ub, count):  # pragma: no cover - compiled
    """Voxels whose candidates all fit list them by partner index."""
    keep = idx.shape[1]
    for r in range(idx.shape[0]):
        n = count[r]
        if n <= keep:
            for a in range(1, n):
                q = a
                while q > 0 and idx[r, q - 1] > idx[r, q]:
                    idx[r, q - 1], idx[r, q] = idx[r, q], idx[r, q - 1]
                    ub[r, q - 1], ub[r, q] = ub[r, q], ub[r, q - 1]
                    q -= 1


@numba.njit(cache=True, nogil=True)
def _candidate_pass(c, e, f, va, vb, s, row_lb, col_lb, a_offset, b_offset,
                    ri, ru, rn, rd, ci, cu, cn, cd):  # pragma: no cover - compiled
    """Every pair whose upper bound ``c + e f + s`` reaches its row's or column's lower bound."""
    na, nb = c.shape
    for i in range(na):
        if not va[i]:
            continue
        ei = e[i]
        lbi = row_lb[i]
        for j in range(nb):
            if not vb[j]:
                continue
            u = (c[i, j] + ei * f[j]) + s
            if not np.isfinite(u):
                continue
            if u >= lbi:
                _insert(i, u, j + b_offset, ri, ru, rn, rd)
            if u >= col_lb[j]:
                _insert(j, u, i + a_offset, ci, cu, cn, cd)
    _by_index(ri, ru, rn)
    _by_index(ci, cu, cn)


def _validity(valid: Any, n: int) -> np.ndarray:
    return np.ones(n, dtype=bool) if valid is None else np.ascontiguousarray(valid, dtype=bool)


def _empty_set(n: int, keep: int) -> list[np.ndarray]:
    return [np.full((n, keep), -1, dtype=np.int64), np.full((n, keep), -np.inf, np.float32),
            np.zeros(n, dtype=np.int64), np.full(n, -np.inf, dtype=np.float32)]


def bounded_candidates(c: Any, e: Any, f: Any, slack: float, a_valid: Any = None,
                       b_valid: Any = None, a_offset: int = 0, b_offset: int = 0, *,
                       keep: int = KEEP) -> tuple[CandidateSet, CandidateSet]:
    """Candidates of the rows and of the columns of one summed low-rank block.

    Two compiled passes over the block (no block-sized temporaries): the lower
    bounds ``max (S~ - E F) - s`` of every row and column, then every pair
    whose upper bound ``S~ + E F + s`` reaches its row's or its column's lower
    bound, kept by largest upper bound (ties to the smaller index).  Each
    bound is rounded in float32 without contraction, as :func:`group_slack`
    counts it.

    Parameters
    ----------
    c : float32 array (na, nb)
        ``S~``: the block of the low-rank sum (left x right).
    e, f : float32 arrays (na,), (nb,)
        Residual bounds of the rows and the columns (:func:`residual_bound`).
    slack : float
        :func:`group_slack`.
    a_valid, b_valid : bool arrays, optional
        Invalid voxels are never candidates and get no candidates.
    a_offset, b_offset : int
        Global index of the first row / column (candidates are global).
    keep : int
        Candidates kept per voxel; when all of a voxel's candidates fit they
        are listed by partner index, otherwise by decreasing upper bound.

    Returns
    -------
    (rows, cols) : CandidateSet
    """
    c = np.ascontiguousarray(c, dtype=np.float32)
    na, nb = c.shape
    e = np.ascontiguousarray(e, dtype=np.float32)
    f = np.ascontiguousarray(f, dtype=np.float32)
    va, vb = _validity(a_valid, na), _validity(b_valid, nb)
    s = np.float32(slack)
    row_lb = np.empty(na, dtype=np.float32)
    col_lb = np.empty(nb, dtype=np.float32)
    _lower_bounds(c, e, f, va, vb, s, row_lb, col_lb)
    rows, cols = _empty_set(na, keep), _empty_set(nb, keep)
    _candidate_pass(c, e, f, va, vb, s, row_lb, col_lb, int(a_offset), int(b_offset),
                    *rows, *cols)
    return (CandidateSet(row_lb, rows[0], rows[1], rows[3]),
            CandidateSet(col_lb, cols[0], cols[1], cols[3]))


def combine_candidates(parts: Sequence[CandidateSet]) -> CandidateSet:
    """Merge the candidate sets of the same voxels from several blocks (any order).

    The lower bound is the largest; candidates whose upper bound falls below
    it are dropped; of the rest, the ``keep`` of largest upper bound are kept
    (ties to the smaller index), the next one's bound is remembered.
    """
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    keep = parts[0].idx.shape[1]
    lb = parts[0].lb
    for p in parts[1:]:
        lb = np.maximum(lb, p.lb)
    idx = np.concatenate([p.idx for p in parts], axis=1)
    ub = np.concatenate([p.ub for p in parts], axis=1)
    drop = parts[0].drop
    for p in parts[1:]:
        drop = np.maximum(drop, p.drop)
    m = (idx >= 0) & (ub >= lb[:, None])
    ub_m = np.where(m, ub, -np.inf)
    order = np.lexsort((np.where(m, idx, np.iinfo(np.int64).max), -ub_m), axis=1)
    top = order[:, :keep]
    rows = np.arange(idx.shape[0])[:, None]
    new_idx = np.where(m[rows, top], idx[rows, top], -1)
    new_ub = np.where(m[rows, top], ub_m[rows, top], -np.inf).astype(np.float32)
    if idx.shape[1] > keep:
        nxt = ub_m[rows[:, 0], order[:, keep]]
        drop = np.maximum(drop, nxt)
    drop = np.where(drop >= lb, drop, -np.inf).astype(np.float32)
    return CandidateSet(lb, new_idx, new_ub, drop)


def concat_candidates(sets: Sequence[CandidateSet]) -> CandidateSet:
    """The candidate sets of consecutive voxel blocks, as one."""
    sets = list(sets)
    return sets[0] if len(sets) == 1 else CandidateSet(
        *(np.concatenate(field) for field in zip(*sets, strict=True)))


def overflowed(cs: CandidateSet) -> np.ndarray:
    """Voxels whose candidates did not all fit: their partners must all be checked."""
    return np.isfinite(cs.lb) & (cs.drop >= cs.lb)


def select_counterpart(idx: Any, exact: Any) -> tuple[np.ndarray, np.ndarray]:
    """The candidate of largest exact summed correlation per voxel, ties to the smaller index.

    Parameters
    ----------
    idx : int array (n, m)
        Candidate partners (``-1``: none).
    exact : float64 array (n, m)
        Their exact summed correlations.

    Returns
    -------
    (summed, arg) : float32 (n,) (NaN with no candidate), int64 (n,) (-1)
    """
    idx = np.asarray(idx)
    v = np.where(idx >= 0, np.asarray(exact, dtype=np.float64), -np.inf)
    order = np.lexsort((np.where(idx >= 0, idx, np.iinfo(np.int64).max), -v), axis=1)
    best = order[:, 0] if idx.shape[1] else np.zeros(idx.shape[0], dtype=np.int64)
    rows = np.arange(idx.shape[0])
    arg = idx[rows, best] if idx.shape[1] else np.full(idx.shape[0], -1, dtype=np.int64)
    val = v[rows, best] if idx.shape[1] else np.full(idx.shape[0], -np.inf)
    ok = arg >= 0
    return np.where(ok, val, np.nan).astype(np.float32), np.where(ok, arg, -1)

