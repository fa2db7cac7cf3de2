"""The correlation summed over subjects, block by block: the group counterpart's graph.

``S = sum_s r_s(A, B)`` for two sides A, B (the left and right hemispheres)
is never materialised.  The subjects are cut into batches of ``batch``; one
*series* task per (batch, voxel block) reads those subjects' series of the
block once, standardises and concatenates them along time
(:func:`~cfhdask.cfh.kernels.concat_standardized`; subjects may differ in
length, and a voxel constant in a subject adds nothing there).  Block (i, j)
of a batch's sum is one GEMM of two such concatenations.  Batches are summed
``chain`` at a time one after another (a *link* adds its GEMM to the previous
partial sum, so a chain holds one partial block), the chain ends (*lanes*)
are tree-summed pairwise, and each summed block is reduced by
:class:`~cfhdask.cfh.reductions.MaxArgmax`, both ways, then tree-combined
across blocks.

The arithmetic is fixed by :class:`GroupPlan` (``batch``, ``chain``): the
same sums in the same order whatever runs them.  Two ways run it:

* :func:`group_sum_graph`: the whole plan as one lazy graph (any scheduler);
* a streaming driver (:func:`cfhdask.cfh.group.run_group_sum`) that submits
  the plan's pieces batch by batch, with as many lanes and as large row strips
  at once as the workers' memory holds, so memory stays flat in the number of
  subjects.

Both give bit-identical results.  No I/O here: the series come from a reader
the caller passes (:class:`cfhdask.io.store.SeriesReader`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from cfhdask._compat import Task, TaskRef
from cfhdask.backend import to_backend, to_numpy
from cfhdask.cfh import lowrank_group
from cfhdask.cfh.graph import (
    _check_engine,
    _cols,
    _final_layer,
    _Graph,
    _rows,
    _tree,
    _with_blas_limit,
)
from cfhdask.cfh.kernels import (
    DenseProduct,
    concat_standardized,
    dense_product,
    moments,
    reduce_block,
)
from cfhdask.cfh.lowrank_group import (
    bounded_candidates,
    combine_candidates,
    project_batch,
    residual_bound,
)
from cfhdask.cfh.reductions import BlockSum, MaxArgmax
from cfhdask.errors import CfhdaskInputError
from cfhdask.settings import settings

if TYPE_CHECKING:
    from cfhdask.cfh.group_lowrank import SubjectBases

__all__ = ["GroupPlan", "group_sum_graph"]


# ----------------------------------------------------------------------------- tasks
def _batch_series_task(read: Callable, subjects: tuple, start: int, stop: int,
                       backend: str = "numpy", *units, picks: Sequence = ()):
    """One voxel block of a batch of subjects, standardised and concatenated along time.

    Returns the float32 ``(stop - start, sum T_s)`` concatenation and whether
    each voxel is valid (not constant) in at least one of the subjects.  With
    the subjects' ``bases`` (:class:`~cfhdask.cfh.lowrank_group.SubjectBasis`)
    the concatenation holds their low-rank coefficients instead, and a third
    item the summed squared residual norms
    (:func:`~cfhdask.cfh.lowrank_group.project_batch`); the bases are read
    from ``units`` (tuples of bases) at ``picks``, (unit, position) per subject.
    """
    if units:
        bases = [units[u][p] for u, p in picks]
        return project_batch([read(s, start, stop) for s in subjects], bases)
    parts = [to_backend(read(s, start, stop), backend) for s in subjects]
    mom = [moments(x) for x in parts]
    z = concat_standardized(parts, [m[0] for m in mom], [m[1] for m in mom])
    valid = mom[0][2].copy()
    for m in mom[1:]:
        valid |= m[2]
    return z, to_numpy(valid)


def _valid_of(series):
    return series[1]


def _resid_of(series):
    return series[2]


def _residual_bound(*parts):
    return residual_bound(sum(parts[1:], parts[0]))


def _candidates_summed(s, e, f, a_valid, b_valid, slack, a_offset, b_offset, keep):
    """Candidates of a block of the low-rank sum (the root of the lane tree)."""
    return bounded_candidates(s, e, f, slack, a_valid, b_valid, a_offset, b_offset, keep=keep)


def _any_valid(*parts):
    out = parts[0].copy()
    for p in parts[1:]:
        out |= p
    return out


def _link_task(prev, a, b, blas_threads=None):
    """``prev + a @ b.T`` of two batch concatenations: one link of a chain of batches."""
    block = _with_blas_limit(blas_threads, dense_product, a[0], b[0])
    if prev is not None:
        block += prev  # a fresh array: prev (another task's result) is left unchanged
    return block


def _reduce_summed(s, reduction, a_valid, b_valid, a_offset, b_offset):
    """Reduce a block summed over every subject (the root of the lane tree)."""
    return reduce_block(DenseProduct(s), reduction, a_valid, b_valid, a_offset, b_offset)


# ----------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class GroupPlan:
    """The arithmetic of a group sum: which subjects are multiplied and summed in which order.

    Parameters
    ----------
    read : callable ``read(subject, start, stop) -> ndarray (stop - start, T_s)``
        Raw series of voxels ``start:stop`` of subject number ``subject``
        (picklable; runs on the workers).
    n_subjects : int
        Subjects ``0 .. n_subjects - 1`` are summed.
    a_ranges, b_ranges : tuples of (start, stop)
        Contiguous voxel blocks of the two sides, in the reader's indices;
        output indices are relative to the first block of each side.
    batch : int
        Subjects per GEMM.
    chain : int
        Batches summed one after another in a lane before lanes are tree-summed.
    split_every : int
        Fan-in of the tree reductions across blocks.
    blas_threads : int or None
    backend : {"numpy", "cupy"}
    token : optional
        Identifies the data behind ``read`` in task names.
    """

    read: Callable
    n_subjects: int
    a_ranges: tuple
    b_ranges: tuple
    batch: int
    chain: int
    split_every: int
    blas_threads: int | None = None
    backend: str = "numpy"
    token: Any = None

    @classmethod
    def make(cls, read, n_subjects: int, a_ranges, b_ranges, *, batch: int,
             chain: int | None = None, split_every: int | None = None,
             blas_threads: int | None = None, backend: str = "numpy",
             token: Any = None) -> GroupPlan:
        """A plan with the engine settings' defaults, checked."""
        _, split_every = _check_engine(None, split_every)
        if n_subjects < 1:
            raise CfhdaskInputError("the group counterpart needs at least one subject")
        chain = int(chain or settings().cfh.subject_chain)
        return cls(read, int(n_subjects), tuple(tuple(map(int, r)) for r in a_ranges),
                   tuple(tuple(map(int, r)) for r in b_ranges), max(1, int(batch)),
                   max(1, chain), split_every, blas_threads, backend, token)

    @cached_property  # a token of the whole plan, asked for every task key
    def tok(self) -> str:
        return tokenize(self.token, self.n_subjects, self.a_ranges, self.b_ranges, self.batch,
                        self.chain, self.split_every, self.blas_threads, self.backend)

    @property
    def batches(self) -> list[tuple[int, ...]]:
        """Subject numbers of each batch."""
        n, b = self.n_subjects, self.batch
        return [tuple(range(b0, min(b0 + b, n))) for b0 in range(0, n, b)]

    @property
    def lanes(self) -> list[list[int]]:
        """Batch numbers of each lane (chain), in summation order."""
        nb = len(self.batches)
        return [list(range(c0, min(c0 + self.chain, nb))) for c0 in range(0, nb, self.chain)]

    def _ranges(self, side: str) -> tuple:
        return self.a_ranges if side == "a" else self.b_ranges

    def series_key(self, side: str, k: int, q: int) -> tuple:
        return (f"grp-series-{self.tok}", side, k, q)

    def valid_key(self, side: str, k: int, q: int) -> tuple:
        return (f"grp-bvalid-{self.tok}", side, k, q)

    def resid_key(self, side: str, k: int, q: int) -> tuple:
        return (f"grp-bresid-{self.tok}", side, k, q)

    def link_key(self, i: int, j: int, q: int) -> tuple:
        return (f"grp-link-{self.tok}", i, j, q)

    def series_tasks(self, q: int, a_blocks: Iterable[int],
                     b_blocks: Iterable[int] | None = None,
                     bases: SubjectBases | None = None) -> dict:
        """The series tasks of batch ``q`` for side-A blocks ``a_blocks`` and side-B blocks
        ``b_blocks`` (default every B block), with the small per-batch validity of each.

        ``bases`` (:class:`~cfhdask.cfh.group_lowrank.SubjectBases`: the
        subjects' :class:`~cfhdask.cfh.lowrank_group.SubjectBasis` on the
        workers) makes them the low-rank coefficients, with their residual norms
        (``resid_key``).
        """
        subs = self.batches[q]
        b_blocks = range(len(self.b_ranges)) if b_blocks is None else b_blocks
        extra, picks = ((), ()) if bases is None else bases.of(subs)
        out = {}
        for side, blocks in (("a", a_blocks), ("b", b_blocks)):
            for k in blocks:
                s0, s1 = self._ranges(side)[k]
                key, vkey = self.series_key(side, k, q), self.valid_key(side, k, q)
                out[key] = Task(key, _batch_series_task, self.read, subs, s0, s1, self.backend,
                                *extra, picks=picks)
                out[vkey] = Task(vkey, _valid_of, TaskRef(key))
                if extra:
                    rkey = self.resid_key(side, k, q)
                    out[rkey] = Task(rkey, _resid_of, TaskRef(key))
        return out

    def pairs(self, a_blocks: Iterable[int]) -> list[tuple[int, int]]:
        """Every (A block, B block) pair of side-A blocks ``a_blocks``, row by row."""
        return [(i, j) for i in a_blocks for j in range(len(self.b_ranges))]

    def link_tasks(self, q: int, pairs: Iterable[tuple[int, int]],
                   prev: dict[tuple[int, int], Any] | None = None,
                   series: dict | None = None) -> dict:
        """The GEMM links of batch ``q`` for the block ``pairs`` (i, j): ``prev[(i, j)]``
        (a TaskRef/Future, or absent at a lane's start) plus the batch's block (i, j).
        ``series`` maps series keys to Futures when they were submitted before (else
        TaskRefs by key, to tasks of the same graph)."""
        prev = prev or {}
        series = series or {}

        def ref(key):
            return series[key] if key in series else TaskRef(key)

        out = {}
        for i, j in pairs:
            key = self.link_key(i, j, q)
            out[key] = Task(key, _link_task, prev.get((i, j)), ref(self.series_key("a", i, q)),
                            ref(self.series_key("b", j, q)), blas_threads=self.blas_threads)
        return out

    def reduce_graph(self, a_blocks: Sequence[int], ends: dict[tuple[int, int], list],
                     valid: dict[tuple[str, int], list],
                     tasks: dict | None = None) -> dict[str, da.Array]:
        """Lazy reduction of the lanes' partial sums for side-A blocks ``a_blocks``.

        ``ends[(i, j)]`` lists the last link of every lane (TaskRefs or Futures, in
        lane order); ``valid[(side, k)]`` the per-batch validity of each block;
        ``tasks`` the series and link tasks these refer to, when they are part of
        the same graph (else they are Futures).
        Returns the outputs of :func:`group_sum_graph` for those rows (``right_*``
        over them only; ``right_arg`` indices relative to the first A block).
        """
        tok = tokenize(self.tok, tuple(a_blocks), [str(getattr(r, "key", r)) for v in
                                                   ends.values() for r in v])
        vname, sname = f"grp-valid-{tok}", f"grp-sum-{tok}"
        rname, cname = f"grp-rows-{tok}", f"grp-cols-{tok}"
        a0, b0 = self.a_ranges[0][0], self.b_ranges[0][0]
        g = _Graph()
        first = set()
        if tasks:
            g.add(f"grp-plan-{tok}", tasks, set())
            first = {f"grp-plan-{tok}"}
        val = {(vname, side, k): Task((vname, side, k), _any_valid, *refs)
               for (side, k), refs in valid.items()}
        g.add(vname, val, first)
        red = MaxArgmax()
        sums: dict = {}
        row_leaves: dict[int, list] = {i: [] for i in a_blocks}
        col_leaves: dict[int, list] = {j: [] for j in range(len(self.b_ranges))}
        for i in a_blocks:
            for j in range(len(self.b_ranges)):
                # lanes summed pairwise: at most three blocks of the sum per task in memory
                root = _tree(sums, sname, (i, j), list(ends[(i, j)]), BlockSum().combine, 2,
                             final=_reduce_summed,
                             final_args=(red, TaskRef((vname, "a", i)),
                                         TaskRef((vname, "b", j)),
                                         self.a_ranges[i][0] - a0, self.b_ranges[j][0] - b0))
                row_leaves[i].append(TaskRef(root))
                col_leaves[j].append(TaskRef(root))
        g.add(sname, sums, {vname} | first)
        rows: dict = {}
        cols: dict = {}
        row_roots = [_tree(rows, rname, i, row_leaves[i], red.combine, self.split_every,
                           pick=_rows) for i in a_blocks]
        col_roots = [_tree(cols, cname, j, col_leaves[j], red.combine, self.split_every,
                           pick=_cols) for j in col_leaves]
        g.add(rname, rows, {sname})
        g.add(cname, cols, {sname})
        out: dict[str, da.Array] = {}
        for label, side, roots, src, blocks in (
                ("left", "a", row_roots, rname, list(a_blocks)),
                ("right", "b", col_roots, cname, list(col_leaves))):
            chunks = [int(self._ranges(side)[k][1] - self._ranges(side)[k][0])
                      for k in blocks]
            fname = f"grp-{label}-final-{tok}"
            _final_layer(g, fname, roots, red, src)
            keys = [(fname, k) for k in range(len(roots))]
            out[f"{label}_sum"] = g.array(f"grp-{label}-sum-{tok}", keys, 0, chunks,
                                          np.float32, fname)
            out[f"{label}_arg"] = g.array(f"grp-{label}-arg-{tok}", keys, 1, chunks,
                                          np.int64, fname)
            out[f"{label}_valid"] = g.array(f"grp-{label}-valid-{tok}",
                                            [(vname, side, k) for k in blocks], None, chunks,
                                            bool, vname)
        return out

    def candidate_graph(self, a_blocks: Sequence[int], ends: dict[tuple[int, int], list],
                        valid: dict[tuple[str, int], list], resid: dict[tuple[str, int], list],
                        slack: float, keep: int | None = None) -> tuple[dict, list, list, dict]:
        """The reduction of a low-rank sum's lanes to candidates, for side-A blocks ``a_blocks``.

        As :meth:`reduce_graph`, with ``resid[(side, k)]`` the per-batch squared
        residual norms of each block (``resid_key``) and ``slack``
        (:func:`~cfhdask.cfh.lowrank_group.group_slack`); ``ends`` and the
        references are Futures; ``keep`` candidates per voxel (default
        :data:`~cfhdask.cfh.lowrank_group.KEEP`).  Each summed block gives its
        :func:`~cfhdask.cfh.lowrank_group.bounded_candidates`, merged across
        blocks by :func:`~cfhdask.cfh.lowrank_group.combine_candidates`.

        Returns
        -------
        (tasks, row_keys, col_keys, valid_keys)
            A task dict; the keys of the candidate sets of each A block and of
            each B block, and of each block's validity (``{(side, k): key}``).
        """
        keep = lowrank_group.KEEP if keep is None else int(keep)
        tok = tokenize(self.tok, tuple(a_blocks), slack, keep,
                       [str(getattr(r, "key", r)) for v in ends.values() for r in v])
        vname, ename, sname = f"grp-valid-{tok}", f"grp-e-{tok}", f"grp-csum-{tok}"
        tasks: dict = {}
        for (side, k), refs in valid.items():
            tasks[(vname, side, k)] = Task((vname, side, k), _any_valid, *refs)
        for (side, k), refs in resid.items():
            tasks[(ename, side, k)] = Task((ename, side, k), _residual_bound, *refs)
        a0, b0 = self.a_ranges[0][0], self.b_ranges[0][0]
        n_b = len(self.b_ranges)
        row_leaves: dict[int, list] = {i: [] for i in a_blocks}
        col_leaves: dict[int, list] = {j: [] for j in range(n_b)}
        for i in a_blocks:
            for j in range(n_b):
                root = _tree(tasks, sname, (i, j), list(ends[(i, j)]), BlockSum().combine, 2,
                             final=_candidates_summed,
                             final_args=(TaskRef((ename, "a", i)), TaskRef((ename, "b", j)),
                                         TaskRef((vname, "a", i)), TaskRef((vname, "b", j)),
                                         float(slack), self.a_ranges[i][0] - a0,
                                         self.b_ranges[j][0] - b0, int(keep)))
                row_leaves[i].append(TaskRef(root))
                col_leaves[j].append(TaskRef(root))
        rows = [_tree(tasks, f"grp-crows-{tok}", i, row_leaves[i], combine_candidates,
                      self.split_every, pick=_rows) for i in a_blocks]
        cols = [_tree(tasks, f"grp-ccols-{tok}", j, col_leaves[j], combine_candidates,
                      self.split_every, pick=_cols) for j in range(n_b)]
        vkeys = {sk: (vname, *sk) for sk in valid}
        return tasks, rows, cols, vkeys


def group_sum_graph(
    read: Callable[[int, int, int], np.ndarray],
    n_subjects: int,
    a_ranges: Sequence[tuple[int, int]],
    b_ranges: Sequence[tuple[int, int]],
    *,
    batch: int,
    chain: int | None = None,
    split_every: int | None = None,
    blas_threads: int | None = None,
    backend: str = "numpy",
    token: Any = None,
) -> dict[str, da.Array]:
    """Lazy group counterpart: argmax both ways of the correlation summed over subjects.

    The whole :class:`GroupPlan` as one graph (see the module docstring).  Every
    series is read once.  How much of it is in memory at once is up to the
    scheduler; the streaming driver :func:`cfhdask.cfh.group.run_group_sum`
    bounds it and gives the same result.

    Parameters
    ----------
    read, n_subjects, a_ranges, b_ranges, batch, blas_threads, backend, token
        As for :class:`GroupPlan`.
    chain : int, optional
        Default config ``cfh.subject-chain``.
    split_every : int, optional
        Default config ``cfh.split-every``.

    Returns
    -------
    dict of lazy dask arrays
        ``left_sum``/``left_arg`` (side A: the maximal summed r and its index in
        side B, NaN/-1 where none), ``right_sum``/``right_arg`` (side B),
        ``left_valid``/``right_valid`` (valid in at least one subject).
    """
    plan = GroupPlan.make(read, n_subjects, a_ranges, b_ranges, batch=batch, chain=chain,
                          split_every=split_every, blas_threads=blas_threads,
                          backend=backend, token=token)
    rows = list(range(len(plan.a_ranges)))
    tasks: dict = {}
    ends: dict = {}
    for lane in plan.lanes:
        prev: dict = {}
        for q in lane:
            tasks.update(plan.series_tasks(q, rows))
            links = plan.link_tasks(q, plan.pairs(rows), prev)
            tasks.update(links)
            prev = {(k[1], k[2]): TaskRef(k) for k in links}
        for ij, ref in prev.items():
            ends.setdefault(ij, []).append(ref)
    valid = {(side, k): [TaskRef(plan.valid_key(side, k, q)) for q in range(len(plan.batches))]
             for side, n in (("a", len(plan.a_ranges)), ("b", len(plan.b_ranges)))
             for k in range(n)}
    return plan.reduce_graph(rows, ends, valid, tasks)
