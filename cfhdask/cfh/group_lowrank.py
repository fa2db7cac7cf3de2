"""The group counterpart from a low-rank sum, exact: bases, bounded sum, exact candidates.

Three passes on the cluster (:mod:`cfhdask.cfh.lowrank_group` has the
arithmetic and why it is exact):

1. each reference subject's series is read once and its temporal basis and
   rank chosen (:func:`~cfhdask.cfh.lowrank_group.subject_basis`), one task
   per unit of consecutive subjects (:class:`SubjectBases`: a subject each,
   or several small ones, so that a cohort of thousands is not thousands of
   millisecond tasks);
2. the group sum of :func:`~cfhdask.cfh.group.run_group_sum` over the
   concatenated coefficients (``sum_s k_s`` columns instead of
   ``sum_s T_s``), reduced to each voxel's candidate counterparts;
3. one task per subject (or per tree leaf group of small subjects, whose
   first tree level it sums) correlates the candidate pairs exactly (float64),
   the results are tree-summed in subject order, and each voxel takes the
   candidate of largest exact sum, ties to the smaller index.

The result is the group counterpart of the full-rank sum; its summed
correlation is exact in float64 (rounded to float32).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
from dask.base import tokenize

from cfhdask._compat import Task, TaskRef
from cfhdask.cfh.graph import _combine_task, _tree
from cfhdask.cfh.groupsum import GroupPlan
from cfhdask.cfh.kernels import pair_correlations, standardize
from cfhdask.cfh.lowrank_group import (
    CandidateSet,
    SubjectBasis,
    group_slack,
    overflowed,
    select_counterpart,
    subject_basis,
)
from cfhdask.cfh.reductions import sum_parts
from cfhdask.errors import CfhdaskInputError
from cfhdask.inflight import release

log = logging.getLogger(__name__)

__all__ = ["MAX_OVERFLOW_FRACTION", "MIN_SAVING", "PROBE_SUBJECTS", "LowRankDeclined",
           "SubjectBases", "exact_candidates", "lowrank_group_sum", "subject_bases"]

#: ``auto`` runs the full-rank sum when the coefficients keep more than this
#: fraction of the concatenated time axis (too little to gain).
MIN_SAVING = 0.8

#: ``auto`` looks at the ranks of this many first subjects as soon as they are known, and
#: runs the full-rank sum at once when they alone keep more than :data:`MIN_SAVING` of
#: their time axes (unfiltered series): the other subjects' bases are then never computed.
PROBE_SUBJECTS = 8

#: A low-rank sum whose overflowed voxels (checked against the whole other
#: hemisphere, one float64 row per subject each) exceed this fraction of the
#: voxels is abandoned for full rank (at 3 mm, 0.2 % is about 100 voxels: some
#: 3 million exact pairs per subject).
MAX_OVERFLOW_FRACTION = 0.002


class LowRankDeclined(Exception):
    """The low-rank sum would not pay (or pruned badly): run the full-rank sum."""


class SubjectBases(NamedTuple):
    """Every subject's :class:`~cfhdask.cfh.lowrank_group.SubjectBasis`, kept on the workers.

    Attributes
    ----------
    units : list of Future
        One per unit of consecutive subjects: the tuple of its subjects' bases.
    where : list of (int, int)
        For each subject, its unit and its position in the unit.
    """

    units: list
    where: list[tuple[int, int]]

    @property
    def keys(self) -> list:
        return [getattr(f, "key", f) for f in self.units]

    @property
    def per_task(self) -> int:
        """Subjects of the largest unit."""
        return 1 + max((p for _, p in self.where), default=0)

    def of(self, subjects: Sequence[int]) -> tuple[tuple, tuple[tuple[int, int], ...]]:
        """The units holding the bases of ``subjects``, and each subject's (unit among
        them, position): the arguments of a task that needs those bases."""
        used = sorted({self.where[s][0] for s in subjects})
        at = {u: k for k, u in enumerate(used)}
        return (tuple(self.units[u] for u in used),
                tuple((at[self.where[s][0]], self.where[s][1]) for s in subjects))


def _bases_task(read: Callable, subjects: Sequence[int], n_all: int
                ) -> tuple[SubjectBasis, ...]:
    out = []
    for s in subjects:
        z, valid = standardize(read(s, 0, n_all))
        out.append(subject_basis(z, valid))
    return tuple(out)


def _ranks_of(bases: Sequence[SubjectBasis]) -> list[tuple[int, bool, int]]:
    return [(int(b.rank), b.vectors is None,
             int(b.rank if b.vectors is None else b.vectors.shape[0])) for b in bases]


def _declines(ranks: Sequence[tuple[int, bool, int]], what: str) -> None:
    k_total, t_total = sum(r for r, _, _ in ranks), sum(t for _, _, t in ranks)
    if k_total > MIN_SAVING * t_total:
        raise LowRankDeclined(f"the coefficients {what} keep {k_total} of {t_total} "
                              "time points")


def subject_bases(client, read: Callable, n_subjects: int, n_all: int, token: Any,
                  per_task: int = 1, *, probe: int = 0
                  ) -> tuple[SubjectBases, list[tuple[int, bool, int]]]:
    """Pass 1: every subject's basis, kept on the workers, and (rank, full rank, T) of each.

    ``per_task`` consecutive subjects share a task (the last unit may hold
    fewer).  Each subject's basis is computed alone whatever the unit, so the
    bases, and everything after them, do not depend on it.  With ``probe``,
    the ranks of the first ``probe`` subjects are read as soon as they are
    known, and :class:`LowRankDeclined` is raised (the other tasks released)
    when they alone would not pay (:data:`MIN_SAVING`): a decision on those
    subjects' data only, whatever the cluster.
    """
    per_task = max(1, int(per_task))
    tok = tokenize(token, n_subjects, n_all, per_task)
    units = [tuple(range(s, min(s + per_task, n_subjects)))
             for s in range(0, n_subjects, per_task)]
    # one graph for all, not one message a unit
    futs = client.map(_bases_task, [read] * len(units), units, [n_all] * len(units),
                      key=[f"grp-basis-{tok}-{u[0]}" for u in units])
    rank_futs = client.map(_ranks_of, futs, key=[f"grp-rank-{tok}-{u[0]}" for u in units])
    if 0 < probe < n_subjects:
        head = [f for f, u in zip(rank_futs, units, strict=True) if u[0] < probe]
        try:
            _declines([r for rs in client.gather(head) for r in rs][:probe],
                      f"of the first {probe} subjects")
        except LowRankDeclined:
            release(futs + rank_futs)  # the others are not computed
            raise
    ranks = client.gather(rank_futs)
    where = [(k, p) for k, u in enumerate(units) for p in range(len(u))]
    return SubjectBases(futs, where), [tuple(r) for rs in ranks for r in rs]


def _pairs(left: CandidateSet, right: CandidateSet, n_left: int, n_right: int
           ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Every pair (reader indices) whose exact sum is needed, and where each voxel's are."""
    us, ws, where = [], [], {}
    off = 0
    for label, cs, base, other, n_other in (("left", left, 0, n_left, n_right),
                                            ("right", right, n_left, 0, n_left)):
        over = overflowed(cs)
        idx = np.where(over[:, None], -1, cs.idx)
        rows, slots = np.nonzero(idx >= 0)
        us.append(rows + base)
        ws.append(idx[rows, slots] + other)
        where[label] = (off, rows, slots)
        off += rows.size
        orows = np.flatnonzero(over)
        us.append(np.repeat(orows + base, n_other))
        ws.append(np.tile(np.arange(n_other) + other, orows.size))
        where[label + "_over"] = (off, orows, n_other)
        off += orows.size * n_other
    return np.concatenate(us), np.concatenate(ws), where


def _exact_task(read: Callable, s: int, n_all: int, u, w) -> np.ndarray:
    return pair_correlations(read(s, 0, n_all), u, w)[0]


def _exact_group_task(read: Callable, subjects: Sequence[int], n_all: int, u, w
                      ) -> np.ndarray:
    """The exact pairs of consecutive subjects summed by the first level's own task
    function (:func:`~cfhdask.cfh.graph._tree` with :func:`sum_parts`): the same values."""
    return _combine_task(sum_parts, None, *(_exact_task(read, s, n_all, u, w)
                                            for s in subjects))


def exact_candidates(client, read: Callable, n_subjects: int, n_all: int, u, w, *,
                     split_every: int, token: Any, grouped: bool = False) -> np.ndarray:
    """Pass 3: ``sum_s r_s(u[k], w[k])`` in float64, tree-summed in subject order.

    ``grouped``: one task per ``split_every`` consecutive subjects, which
    computes their exact pairs and the tree's first level over them (small
    subjects, many of them); the tree above it, and so the sum bit for bit,
    are those of one task per subject.
    """
    grouped = grouped and n_subjects > split_every
    tok = tokenize(token, n_subjects, n_all, u, w, grouped)
    uf, wf = client.scatter([u, w], broadcast=True, hash=False)
    if grouped:
        tasks = {(f"grp-exact-{tok}", g): Task(
            (f"grp-exact-{tok}", g), _exact_group_task, read,
            tuple(range(g * split_every, min((g + 1) * split_every, n_subjects))), n_all, uf,
            wf) for g in range(-(-n_subjects // split_every))}
    else:
        tasks = {(f"grp-exact-{tok}", s): Task((f"grp-exact-{tok}", s), _exact_task, read, s,
                                               n_all, uf, wf) for s in range(n_subjects)}
    root = _tree(tasks, f"grp-exsum-{tok}", 0, [TaskRef(k) for k in tasks], sum_parts,
                 split_every)
    try:
        return np.asarray(client.get(tasks, root, sync=True), dtype=np.float64)
    finally:
        client.cancel([uf, wf])


def _select(cs: CandidateSet, exact: np.ndarray, where: dict, label: str
            ) -> tuple[np.ndarray, np.ndarray]:
    off, rows, slots = where[label]
    vals = np.zeros(cs.idx.shape, dtype=np.float64)
    vals[rows, slots] = exact[off:off + rows.size]
    summed, arg = select_counterpart(np.where(overflowed(cs)[:, None], -1, cs.idx), vals)
    off, orows, n_other = where[label + "_over"]
    if orows.size:
        full = exact[off:off + orows.size * n_other].reshape(orows.size, n_other)
        best = np.argmax(full, axis=1)  # the first maximum: ties to the smaller index
        summed[orows] = full[np.arange(orows.size), best].astype(np.float32)
        arg[orows] = best
    return summed, arg


def lowrank_group_sum(plan: GroupPlan, client, bases: SubjectBases, ranks: Sequence[tuple], *,
                      kernel: str, run_group_sum: Callable) -> dict[str, Any]:
    """Passes 2 and 3 for the bases of pass 1; the outputs of ``run_group_sum``.

    Raises :class:`LowRankDeclined` when ``kernel`` is ``auto`` and the
    low-rank sum would not pay (coefficients over :data:`MIN_SAVING` of the
    time axis) or pruned badly (overflowed voxels over
    :data:`MAX_OVERFLOW_FRACTION`).
    """
    k_total = sum(r for r, _, _ in ranks)
    t_total = sum(t for _, _, t in ranks)
    batch_k = [sum(ranks[s][0] for s in b) for b in plan.batches]
    n_full = sum(1 for _, full, _ in ranks if full)
    rk = np.array([r for r, _, _ in ranks])
    log.info("Group counterpart, low-rank sum: %d of %d time points kept (%.0f %%); ranks "
             "median %d (%d-%d), %d subject(s) at full rank", k_total, t_total,
             100.0 * k_total / max(t_total, 1), int(np.median(rk)), int(rk.min()),
             int(rk.max()), n_full)
    if kernel == "auto":
        _declines(ranks, "of all subjects")
    slack = group_slack(batch_k, plan.n_subjects)
    # task names of their own: a full-rank sum of the same plan (a fallback) must never
    # meet these coefficients under the same keys
    plan = replace(plan, token=("lowrank", plan.token, bases.keys))
    res = run_group_sum(plan, client, t_batch=max(batch_k), bases=bases, slack=slack)
    left, right = res["left"], res["right"]
    n_left, n_right = left.lb.size, right.lb.size
    n_over = int(overflowed(left).sum() + overflowed(right).sum())
    n_cand = int((left.idx >= 0).sum() + (right.idx >= 0).sum())
    n_valid = int(res["left_valid"].sum() + res["right_valid"].sum())
    log.info("Group counterpart, low-rank sum: %.3f candidates per voxel, %d voxel(s) "
             "checked against the whole other hemisphere", n_cand / max(n_valid, 1), n_over)
    if n_over > MAX_OVERFLOW_FRACTION * max(n_valid, 1):
        if kernel == "auto":
            raise LowRankDeclined(f"{n_over} voxels overflowed their candidates")
        raise CfhdaskInputError(f"--kernel lowrank: the bound keeps too many candidates for "
                                f"{n_over} voxels; use --kernel auto or full")
    u, w, where = _pairs(left, right, n_left, n_right)
    exact = exact_candidates(client, plan.read, plan.n_subjects, n_left + n_right, u, w,
                             split_every=plan.split_every, token=plan.tok,
                             grouped=bases.per_task >= plan.split_every)
    out: dict[str, Any] = {}
    for label, cs in (("left", left), ("right", right)):
        summed, arg = _select(cs, exact, where, label)
        valid = res[f"{label}_valid"]
        out[f"{label}_sum"] = np.where(valid & (arg >= 0), summed, np.nan).astype(np.float32)
        out[f"{label}_arg"] = np.where(valid, arg, -1)
        out[f"{label}_valid"] = valid
    out["lowrank"] = {"time_points": k_total, "of": t_total, "full_rank_subjects": n_full,
                      "candidates_per_voxel": round(n_cand / max(n_valid, 1), 4),
                      "overflowed": n_over, "median_rank": int(np.median(rk))}
    return out
