"""The exact low-rank CFH kernel on Dask: per subject, a plan, then the usual block graph.

:func:`cfh_kernel_graph` gives the same outputs as
:func:`cfhdask.cfh.graph.cfh_graph` (and the same maxima), computed by
:func:`cfhdask.cfh.lowrank.lowrank_block_maxcorr` where the subject's data allow:

1. the T x T Gram matrix of every standardised block of both hemispheres
   (float32 products, float64 sums), tree-summed;
2. one task: its eigen-decomposition (:func:`~cfhdask.cfh.lowrank.temporal_basis`);
3. per block, the residual counts of evenly spaced sample rows
   (:func:`~cfhdask.cfh.lowrank.residual_exceed_counts`), then one small task
   choosing the rank (:func:`~cfhdask.cfh.lowrank.plan_rank`);
4. per block, the projection on the basis at every rung of the rank ladder
   (:func:`~cfhdask.cfh.lowrank.project_ladder`: coefficients at the top rung,
   residual norms at each);
5. ``kernel="auto"`` only: a pilot of evenly spaced left rows against the
   whole right hemisphere climbs the ladder
   (:func:`~cfhdask.cfh.lowrank.plan_ladder`): the lowest rank whose bound
   prunes well, else full rank (``kernel="lowrank"``: the top rung);
6. the block tasks of :func:`cfhdask.cfh.graph.block_graph`, each returning
   the same max/argmax pair as the fused GEMM (plus its candidate count), the
   row and column trees and outputs of :func:`cfhdask.cfh.graph.cfh_outputs`;
7. ``kernel``: what ran (strategy, rank, candidates, reason), a lazy one-element
   object array holding a dict.

Every task's work and order of summation are fixed by the graph, so the
result does not depend on the workers; it is exact whatever the rank.
Building the graph computes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from dask.base import tokenize

from cfhdask._compat import Task, TaskRef
from cfhdask.cfh.graph import (
    _fused_task,
    _Graph,
    _hemispheres,
    _layers_of,
    _offsets,
    _tree,
    _with_blas_limit,
    block_graph,
    cfh_graph,
    cfh_outputs,
)
from cfhdask.cfh.lowrank import (
    MAX_CANDIDATES_PER_ROW,
    MAX_RANK_FRACTION,
    PILOT_ROWS,
    RANK_SAMPLE,
    RESIDUAL_LADDER,
    RESIDUAL_QUANTILE,
    LowRankFactors,
    SubjectPlan,
    count_valid,
    factors_at_rank,
    gram,
    lowrank_block_maxcorr,
    pilot_candidates,
    plan_ladder,
    plan_rank,
    project_ladder,
    residual_exceed_counts,
    sample_rows,
    temporal_basis,
)
from cfhdask.cfh.reductions import MaxArgmax, sum_parts
from cfhdask.errors import CfhdaskInputError

__all__ = ["KERNELS", "cfh_kernel_graph"]

#: Values of the ``cfh.kernel`` setting.
KERNELS = ("auto", "lowrank", "full")


# ----------------------------------------------------------------------------- plan tasks
def _gram_task(z, blas_threads):
    return _with_blas_limit(blas_threads, lambda: gram(z, dtype=np.float32))


def _counts_task(z, valid, rows: np.ndarray, vectors_pair, tol, blas_threads):
    """Residual counts of the sample rows of one block, and how many of them are valid."""
    vectors = vectors_pair[1]
    if rows.size == 0:
        return np.zeros(np.shape(tol) + (vectors.shape[1] + 1,), dtype=np.int64), 0
    counts = _with_blas_limit(blas_threads, residual_exceed_counts, z[rows], vectors, tol)
    return counts, count_valid(np.asarray(valid)[rows], rows.size)


def _basis_task(g):
    return temporal_basis(g)


def _rank_task(vectors_pair, options: dict, *parts) -> SubjectPlan:
    counts = sum_parts([p[0] for p in parts])
    n_valid = sum(int(p[1]) for p in parts)
    return plan_rank(counts, n_valid, vectors_pair[1], tol=options["tol"],
                     quantile=options["quantile"],
                     max_rank_fraction=options["max_rank_fraction"])


def _project_task(z, plan: SubjectPlan, blas_threads):
    if plan.strategy != "lowrank":
        return None
    return _with_blas_limit(blas_threads, project_ladder, z, plan.basis, plan.ranks)


def _pilot_rows_task(factors, valid, rows: np.ndarray):
    if factors is None:
        return None
    return (LowRankFactors(factors.coef[rows], factors.resid[rows]),
            np.asarray(valid, dtype=bool)[rows])


def _concat(parts: Sequence[tuple]) -> tuple[LowRankFactors, np.ndarray]:
    return (LowRankFactors(np.concatenate([p[0].coef for p in parts]),
                           np.concatenate([p[0].resid for p in parts])),
            np.concatenate([p[1] for p in parts]))


def _pilot_task(plan: SubjectPlan, n_left: int, options: dict, *parts) -> SubjectPlan:
    """The final plan of ``kernel="auto"``: the pilot rows against the whole right side."""
    if plan.strategy != "lowrank":
        return plan._replace(basis=None)
    left = [p for p in parts[:n_left] if p is not None]
    right = list(zip(parts[n_left::2], parts[n_left + 1::2], strict=True))
    if not left:
        return _forced_task(plan)
    fl, lv = _concat(left)
    fr, rv = _concat(right)

    def pilot_at(k):
        return pilot_candidates(factors_at_rank(fl, plan.ranks, k),
                                factors_at_rank(fr, plan.ranks, k), lv, rv)

    out = plan_ladder(plan, pilot_at, max_candidates_per_row=options["max_candidates_per_row"])
    return out._replace(basis=None)


def _forced_task(plan: SubjectPlan) -> SubjectPlan:
    """``kernel="lowrank"``: the top rung (the tightest tolerance), no pilot."""
    if plan.strategy != "lowrank":
        return plan._replace(basis=None)
    top = plan.ranks[-1]
    return plan._replace(basis=None, rank=top,
                         reason=f"rank {top} of T={plan.basis.shape[0]} (the top rung, no "
                                f"pilot)")


# ----------------------------------------------------------------------------- blocks
def _lowrank_block_task(reduction, a, b, a_valid, b_valid, a_offset, b_offset, diagonal,
                        blas_threads, plan: SubjectPlan, fa, fb):
    """One block: low rank when the plan says so, else the fused GEMM; + (candidates, full)."""
    if plan.strategy != "lowrank" or fa is None or fb is None:
        rows, cols = _fused_task(reduction, a, b, a_valid, b_valid, a_offset, b_offset,
                                 diagonal, blas_threads)
        return rows, cols, np.array([0, 1], dtype=np.int64)
    fa, fb = (factors_at_rank(f, plan.ranks, plan.rank) for f in (fa, fb))
    out = _with_blas_limit(blas_threads, lowrank_block_maxcorr, a, b, fa, fb, a_valid, b_valid,
                           a_offset, b_offset)
    m = out.block
    return ((m.row_max, m.row_arg), (m.col_max, m.col_arg),
            np.array([out.n_candidates, int(out.full_rank)], dtype=np.int64))


def _block_stats(part):
    return part[2]


def _info_task(totals, plan: SubjectPlan, kernel: str, n_blocks: int,
               n_voxels: int) -> np.ndarray:
    """What ran for one subject, for the log and the store's provenance (a dict in a
    one-element object array)."""
    n_cand, n_full = (int(v) for v in np.asarray(totals).tolist())
    used = plan.strategy
    return np.array([{"kernel": kernel, "kernel_used": used, "rank": int(plan.rank),
            "n_candidates": n_cand if used == "lowrank" else 0,
            "candidates_per_voxel": round(n_cand / max(n_voxels, 1), 4)
            if used == "lowrank" else None,
            "full_rank_blocks": n_full if used == "lowrank" else n_blocks,
            "n_blocks": n_blocks,
            "pilot_candidates": None if not np.isfinite(plan.pilot_candidates)
            else round(float(plan.pilot_candidates), 4),
            "pilots": [[int(k), round(float(p), 4)] for k, p in plan.pilots],
            "reason": plan.reason}], dtype=object)


# ----------------------------------------------------------------------------- the graph
def _local_rows(global_rows: np.ndarray, chunks: Sequence[int]) -> list[np.ndarray]:
    """``global_rows`` split by the blocks ``chunks``, as indices inside each block."""
    out = []
    for s, n in zip(_offsets(chunks), chunks, strict=True):
        sel = global_rows[(global_rows >= s) & (global_rows < s + n)]
        out.append((sel - s).astype(np.int64))
    return out


def cfh_kernel_graph(
    left: Any,
    right: Any,
    left_valid: Any = None,
    right_valid: Any = None,
    *,
    kernel: str = "auto",
    block: int | None = None,
    split_every: int | None = None,
    blas_threads: int | None = None,
    plan_options: dict | None = None,
) -> dict[str, Any]:
    """Lazy CFH of two hemispheres by one kernel: the exact low-rank one (module docstring).

    Parameters
    ----------
    left, right, left_valid, right_valid, block, split_every, blas_threads
        As :func:`cfhdask.cfh.graph.cfh_graph`.
    kernel : {"auto", "lowrank", "full"}
        ``full``: :func:`cfhdask.cfh.graph.cfh_graph` itself (no ``kernel``
        output).  ``auto``: full rank when the rank exceeds
        :data:`~cfhdask.cfh.lowrank.MAX_RANK_FRACTION` of T or the pilot
        keeps more than :data:`~cfhdask.cfh.lowrank.MAX_CANDIDATES_PER_ROW`
        candidates per row; ``lowrank``: low rank at the chosen rank whatever it
        is (a block whose candidates overflow is still computed full rank).
    plan_options : dict, optional
        ``tol``, ``quantile``, ``max_rank_fraction``, ``max_candidates_per_row``,
        ``rank_sample``, ``pilot_rows`` of :func:`cfhdask.cfh.lowrank.plan_subject`
        (``tol``: a float, one rank, or the rank ladder, default
        :data:`~cfhdask.cfh.lowrank.RESIDUAL_LADDER`).

    Returns
    -------
    dict
        The lazy arrays of :func:`cfhdask.cfh.graph.cfh_graph`, and (low rank) ``kernel``:
        a one-element object array holding a dict: ``kernel`` (asked), ``kernel_used``
        (``lowrank`` or ``full``), ``rank``, ``n_candidates``,
        ``candidates_per_voxel``, ``full_rank_blocks``, ``n_blocks``,
        ``pilot_candidates``, ``pilots`` (``[rank, candidates per pilot row]`` of each
        rung tried), ``reason``.
    """
    if kernel not in KERNELS:
        raise CfhdaskInputError(f"cfh kernel must be one of {', '.join(KERNELS)}, got "
                                f"{kernel!r}")
    if kernel == "full":
        return cfh_graph(left, right, left_valid, right_valid, block=block,
                         split_every=split_every, blas_threads=blas_threads)
    opts = {"tol": RESIDUAL_LADDER, "quantile": RESIDUAL_QUANTILE,
            "max_rank_fraction": MAX_RANK_FRACTION,
            "max_candidates_per_row": MAX_CANDIDATES_PER_ROW, "rank_sample": RANK_SAMPLE,
            "pilot_rows": PILOT_ROWS, **(plan_options or {})}
    if kernel == "lowrank":
        opts["max_rank_fraction"] = None
    left, right, lv, rv, split_every = _hemispheres(left, right, left_valid, right_valid,
                                                     block, split_every)
    tok = tokenize(left, right, lv, rv, kernel, sorted(opts.items()), split_every,
                   blas_threads)
    names = {k: f"cfh-lr-{k}-{tok}" for k in ("gram", "gsum", "basis", "counts", "rank",
                                                "proj", "pilot-rows", "plan", "stats")}
    g = _Graph(left, right, lv, rv)
    sides = (("l", left, lv), ("r", right, rv))
    series_layers = _layers_of(left) | _layers_of(right)
    valid_layers = _layers_of(lv) | _layers_of(rv)

    gram_layer = {}
    leaves = []
    for s, z, _ in sides:
        for i in range(len(z.chunks[0])):
            key = (names["gram"], s, i)
            gram_layer[key] = Task(key, _gram_task, TaskRef((z.name, i, 0)), blas_threads)
            leaves.append(TaskRef(key))
    g.add(names["gram"], gram_layer, series_layers)
    gsum: dict = {}
    groot = _tree(gsum, names["gsum"], 0, leaves, sum_parts, split_every)
    g.add(names["gsum"], gsum, {names["gram"]})
    bkey = (names["basis"], 0)
    g.add(names["basis"], {bkey: Task(bkey, _basis_task, TaskRef(groot))}, {names["gsum"]})

    counts, proj, pilot_rows = {}, {}, {}
    for s, z, v in sides:
        chunks = z.chunks[0]
        rows = _local_rows(sample_rows(z.shape[0], int(opts["rank_sample"])), chunks)
        for i in range(len(chunks)):
            key = (names["counts"], s, i)
            counts[key] = Task(key, _counts_task, TaskRef((z.name, i, 0)), TaskRef((v.name, i)),
                               rows[i], TaskRef(bkey), opts["tol"], blas_threads)
    g.add(names["counts"], counts, {names["basis"]} | series_layers | valid_layers)
    pkey = (names["rank"], 0)
    g.add(names["rank"], {pkey: Task(pkey, _rank_task, TaskRef(bkey), opts,
                                     *[TaskRef(k) for k in counts])},
          {names["basis"], names["counts"]})
    for s, z, _ in sides:
        for i in range(len(z.chunks[0])):
            key = (names["proj"], s, i)
            proj[key] = Task(key, _project_task, TaskRef((z.name, i, 0)), TaskRef(pkey),
                             blas_threads)
    g.add(names["proj"], proj, {names["rank"]} | series_layers)

    fkey = (names["plan"], 0)
    if kernel == "auto":
        prow = _local_rows(sample_rows(left.shape[0], int(opts["pilot_rows"])),
                           left.chunks[0])
        for i, rows in enumerate(prow):
            if rows.size:
                key = (names["pilot-rows"], i)
                pilot_rows[key] = Task(key, _pilot_rows_task, TaskRef((names["proj"], "l", i)),
                                       TaskRef((lv.name, i)), rows)
        g.add(names["pilot-rows"], pilot_rows, {names["proj"]} | valid_layers)
        right_parts = [ref for j in range(len(right.chunks[0]))
                       for ref in (TaskRef((names["proj"], "r", j)), TaskRef((rv.name, j)))]
        task = Task(fkey, _pilot_task, TaskRef(pkey), len(pilot_rows), opts,
                    *[TaskRef(k) for k in pilot_rows], *right_parts)
        g.add(names["plan"], {fkey: task}, {names["rank"], names["pilot-rows"],
                                             names["proj"]} | valid_layers)
    else:
        g.add(names["plan"], {fkey: Task(fkey, _forced_task, TaskRef(pkey))}, {names["rank"]})

    red = MaxArgmax()
    bg, rows_, cols_, rname, cname = block_graph(
        left, right, lv, rv, red, split_every=split_every, blas_threads=blas_threads,
        name=f"cfh-lr-{kernel}", block_task=_lowrank_block_task,
        block_extra=lambda i, j: (TaskRef(fkey), TaskRef((names["proj"], "l", i)),
                                  TaskRef((names["proj"], "r", j))),
        extra_layers={names["plan"], names["proj"]})
    g.layers.update(bg.layers)
    for k, v in bg.deps.items():
        g.deps.setdefault(k, set()).update(v)
    out: dict[str, Any] = cfh_outputs(g, red, rows_, cols_, rname, cname, left.chunks[0],
                                      right.chunks[0])
    stats: dict = {}
    sroot = _tree(stats, names["stats"], 0, [TaskRef(k) for k in bg.block_keys], sum_parts,
                  split_every, pick=_block_stats,
                  final=_info_task,
                  final_args=(TaskRef(fkey), kernel, len(bg.block_keys),
                              int(left.shape[0] + right.shape[0])))
    g.add(names["stats"], stats, {k[0] for k in bg.block_keys} | {names["plan"]})
    # a one-element object array, not a Delayed: dask 2026.6 mixes up the values of a dict
    # of arrays and Delayed objects handed to one delayed call (the engine's write task)
    out["kernel"] = g.array(f"cfh-lr-kernel-{tok}", [sroot], None, (1,), object,
                            names["stats"])
    return out
