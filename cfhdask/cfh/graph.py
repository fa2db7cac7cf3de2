"""The block engine on Dask: correlation blocks, pluggable reductions, tree reductions.

One engine serves every metric built from blocks of a correlation matrix.
A graph has three parts:

1. **block tasks**, one per (block i of side A, block j of side B), each
   producing its block and reducing it at once with a reduction of
   :mod:`cfhdask.cfh.reductions` (:func:`cfhdask.cfh.kernels.reduce_block`);
   the block itself is never kept.  Two block producers exist:

   * *fused* (:func:`block_graph`): the block is the GEMM of two standardised
     series blocks of one subject, made strip by strip inside the reduction;
   * *summed over subjects* (:func:`cfhdask.cfh.groupsum.group_sum_graph`):
     one dense GEMM per batch of subjects over their concatenated
     standardised time axes, the batches summed in short chains and the chains tree-summed
     (:class:`~cfhdask.cfh.reductions.BlockSum`), then the summed block
     reduced.  Each batch's series are read and standardised once, by one
     task per voxel block, and released when the batch's GEMMs are done.

2. **tree reductions**: the row results of block row i are combined across j,
   the column results of block column j across i, with fan-in
   ``split_every``; reductions break ties to the smaller index and counts add,
   so the result does not depend on the scheduler or the order of completion.

3. the **outputs**: lazy dask arrays chunked like the blocks.

With ``symmetric=True`` (a set of voxels against itself, as the autonomy
index needs for each hemisphere) only blocks ``i <= j`` are computed: block
(i, j) gives the rows of i and the columns of j, the diagonal blocks only
rows, self-pairs excluded.

Uses: :func:`cfh_graph` (CFH, max/argmax of left x right), :func:`autonomy_graph`
(thresholded counts of left x left, right x right and left x right) and
:func:`cfhdask.cfh.groupsum.group_sum_graph` (the group counterpart).
:func:`paired_graph` is the O(voxels x T) pass of a voxel with one partner (its group counterpart or its
mirror).  Building a graph computes nothing; graphs do no I/O themselves (the
group graph calls a reader it is given).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from cfhdask._compat import Task, TaskRef
from cfhdask.backend import to_backend, to_numpy
from cfhdask.cfh.kernels import (
    GemmProduct,
    paired_correlations,
    reduce_block,
    standardize,
)
from cfhdask.cfh.reductions import MaxArgmax, ThresholdCount, sum_parts
from cfhdask.errors import CfhdaskInputError
from cfhdask.settings import settings

__all__ = ["OUTPUTS", "autonomy_graph", "block_graph", "cfh_graph",
           "paired_graph", "standardize_graph"]

#: names of the outputs of :func:`cfh_graph`
OUTPUTS = ("left_rmax", "left_arg", "right_rmax", "right_arg")
#: names of the outputs of :func:`autonomy_graph`
AUTONOMY_OUTPUTS = ("left_ipsi", "left_contra", "right_ipsi", "right_contra")


# ----------------------------------------------------------------------------- helpers
def _offsets(chunks: Sequence[int]) -> list[int]:
    return [int(v) for v in np.concatenate([[0], np.cumsum(chunks)[:-1]])]


def _with_blas_limit(blas_threads: int | None, func: Callable, *args: Any) -> Any:
    if not blas_threads:
        return func(*args)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(blas_threads), user_api="blas"):
        return func(*args)


def _as_series(x: Any, block: int, what: str) -> da.Array:
    x = da.asarray(x)
    if x.ndim != 2:
        raise CfhdaskInputError(f"{what}: expected a (voxel, time) array, got shape {x.shape}")
    return x.rechunk({0: block, 1: -1})


def _as_mask(v: Any, like: da.Array, what: str) -> da.Array:
    if v is None:
        return da.ones(like.shape[0], dtype=bool, chunks=(like.chunks[0],))
    v = da.asarray(v)
    if v.shape != (like.shape[0],):
        raise CfhdaskInputError(f"{what}: expected shape ({like.shape[0]},), got {v.shape}")
    return v.astype(bool).rechunk((like.chunks[0],))


def _check_engine(block: int | None, split_every: int | None) -> tuple[int, int]:
    block = int(block or settings().cfh.block)
    split_every = int(split_every or settings().cfh.split_every)
    if block < 1:
        raise CfhdaskInputError(f"cfh block must be >= 1, got {block}")
    if split_every < 2:
        raise CfhdaskInputError(f"cfh split-every must be >= 2, got {split_every}")
    return block, split_every


def _hemispheres(left, right, left_valid, right_valid, block, split_every):
    """Both hemispheres' series (chunked by ``block``) and masks, checked."""
    block, split_every = _check_engine(block, split_every)
    left = _as_series(left, block, "left")
    right = _as_series(right, block, "right")
    if left.shape[1] != right.shape[1]:
        raise CfhdaskInputError(
            f"left and right series differ in length: {left.shape[1]} vs {right.shape[1]}")
    return (left, right, _as_mask(left_valid, left, "left_valid"),
            _as_mask(right_valid, right, "right_valid"), split_every)


class _Graph:
    """Layers and dependencies of a graph under construction."""

    def __init__(self, *arrays: da.Array):
        hlg = HighLevelGraph.merge(*(a.__dask_graph__() for a in arrays)) if arrays else \
            HighLevelGraph({}, {})
        self.layers = dict(hlg.layers)
        self.deps = {k: set(v) for k, v in hlg.dependencies.items()}
        self.block_keys: list = []

    def add(self, name: str, layer: dict, deps: set) -> None:
        self.layers[name] = layer
        self.deps[name] = set(deps)

    def array(self, name: str, roots: list, pos: int | None, chunks, dtype, src: str) -> da.Array:
        """A 1-D dask array whose block k is ``roots[k]`` (or its item ``pos``)."""
        if pos is None:
            layer = {(name, k): Task((name, k), _identity, TaskRef(r)) for k, r in
                     enumerate(roots)}
        else:
            layer = {(name, k): Task((name, k), operator.getitem, TaskRef(r), pos)
                     for k, r in enumerate(roots)}
        self.add(name, layer, {src})
        return da.Array(self.hlg(), name, chunks=(tuple(chunks),), dtype=dtype)

    def hlg(self) -> HighLevelGraph:
        """A snapshot of the graph so far."""
        return HighLevelGraph(dict(self.layers), {k: set(v) for k, v in self.deps.items()})


def _identity(x):
    return x


def _layers_of(a: da.Array) -> set:
    return set(a.__dask_layers__())


def _tree(layer: dict, name: str, index: Any, leaves: list, combine: Callable,
          split_every: int, *, pick: Callable | None = None,
          final: Callable | None = None, final_args: tuple = ()) -> tuple:
    """Add a tree reduction of ``leaves`` (TaskRefs) to ``layer``; return the root key.

    ``pick`` extracts the part to combine from each leaf (first level only);
    ``final(root, *final_args)`` runs once on the root.
    """
    level = 0
    refs = leaves
    first = pick
    while len(refs) > split_every:
        nxt = []
        for g in range(0, len(refs), split_every):
            key = (f"{name}-l{level}", index, g // split_every)
            layer[key] = Task(key, _combine_task, combine, first, *refs[g:g + split_every])
            nxt.append(TaskRef(key))
        refs, first, level = nxt, None, level + 1
    key = (f"{name}-root", index)
    layer[key] = Task(key, _combine_task, combine, first, *refs)
    if final is None:
        return key
    fkey = (f"{name}-final", index)
    layer[fkey] = Task(fkey, final, TaskRef(key), *final_args)
    return fkey


def _combine_task(combine: Callable, pick: Callable | None, *parts):
    if pick is not None:
        parts = [pick(p) for p in parts]
    return combine(list(parts)) if len(parts) > 1 else parts[0]


def _rows(part):
    return part[0]


def _cols(part):
    return part[1]


def _finalize(part, reduction):
    return reduction.finalize(part)


# ----------------------------------------------------------------------------- fused blocks
def _fused_task(reduction, a, b, a_valid, b_valid, a_offset, b_offset, diagonal,
                blas_threads):
    return _with_blas_limit(blas_threads, lambda: reduce_block(
        GemmProduct(a, b), reduction, a_valid, b_valid, a_offset, b_offset,
        diagonal=diagonal))


def block_graph(
    a: da.Array,
    b: da.Array,
    a_valid: da.Array,
    b_valid: da.Array,
    reduction: Any,
    *,
    split_every: int,
    symmetric: bool = False,
    blas_threads: int | None = None,
    name: str = "blocks",
    block_task: Callable | None = None,
    block_extra: Callable[[int, int], tuple] | None = None,
    extra_layers: set | None = None,
) -> tuple[_Graph, list, list, str, str]:
    """The fused block graph of ``a @ b.T`` through one reduction (internal builder).

    Parameters
    ----------
    a, b : dask arrays (na, T), (nb, T) float32, time in one chunk
        Standardised series; their voxel chunks are the blocks.  With
        ``symmetric`` they must be the same array.
    a_valid, b_valid : dask bool arrays chunked like ``a`` / ``b``
    reduction : a reduction of :mod:`cfhdask.cfh.reductions`
    split_every : int
        Fan-in of the tree reductions.
    symmetric : bool
        ``a`` against itself: blocks i <= j only, self-pairs excluded.
    blas_threads : int, optional
    name : str
        Prefix of the task names.
    block_task : callable, optional
        Another producer of a block's ``(rows, cols, ...)`` partial result (default
        the fused GEMM): called as ``block_task(reduction, a_i, b_j, a_valid_i,
        b_valid_j, a_offset, b_offset, diagonal, blas_threads, *block_extra(i, j))``;
        items after ``cols`` are left to the caller (``graph.block_keys``).
    block_extra : callable (i, j) -> tuple, optional
        Extra arguments (e.g. TaskRefs) of block (i, j)'s ``block_task``.
    extra_layers : set, optional
        The layers those extra arguments come from.

    Returns
    -------
    (graph, row_roots, col_roots, row_layer, col_layer)
        Finalised tree roots per block of ``a`` and of ``b`` (with
        ``symmetric`` the row and column roots both cover ``a``'s blocks and are
        combined by the caller; see :func:`autonomy_graph`).  ``graph.block_keys``
        lists the block tasks.
    """
    task = block_task or _fused_task
    tok = tokenize(a, b, a_valid, b_valid, type(reduction).__name__, vars(reduction),
                   split_every, symmetric, blas_threads, task.__name__,
                   sorted(extra_layers or ()))
    bname, rname, cname = f"{name}-block-{tok}", f"{name}-rows-{tok}", f"{name}-cols-{tok}"
    g = _Graph(a, b, a_valid, b_valid)
    nbi, nbj = len(a.chunks[0]), len(b.chunks[0])
    offa, offb = _offsets(a.chunks[0]), _offsets(b.chunks[0])
    blocks: dict = {}
    row_leaves: dict[int, list] = {i: [] for i in range(nbi)}
    col_leaves: dict[int, list] = {j: [] for j in range(nbj)}
    for i in range(nbi):
        for j in range(i if symmetric else 0, nbj):
            key = (bname, i, j)
            diagonal = symmetric and i == j
            extra = block_extra(i, j) if block_extra is not None else ()
            blocks[key] = Task(key, task, reduction, TaskRef((a.name, i, 0)),
                               TaskRef((b.name, j, 0)), TaskRef((a_valid.name, i)),
                               TaskRef((b_valid.name, j)), offa[i], offb[j], diagonal,
                               blas_threads, *extra)
            row_leaves[i].append(TaskRef(key))
            if not diagonal:
                col_leaves[j].append(TaskRef(key))
    g.add(bname, blocks, _layers_of(a) | _layers_of(b) | _layers_of(a_valid)
          | _layers_of(b_valid) | set(extra_layers or ()))
    g.block_keys = list(blocks)
    rows: dict = {}
    cols: dict = {}
    row_roots = [_tree(rows, rname, i, row_leaves[i], reduction.combine, split_every,
                       pick=_rows) for i in range(nbi)]
    col_roots = [_tree(cols, cname, j, col_leaves[j], reduction.combine, split_every,
                       pick=_cols) if col_leaves[j] else None for j in range(nbj)]
    g.add(rname, rows, {bname})
    g.add(cname, cols, {bname})
    return g, row_roots, col_roots, rname, cname


def _final_layer(g: _Graph, name: str, roots: list, reduction: Any, src: str) -> str:
    layer = {(name, k): Task((name, k), _finalize, TaskRef(r), reduction)
             for k, r in enumerate(roots)}
    g.add(name, layer, {src})
    return name


def cfh_graph(
    left: Any,
    right: Any,
    left_valid: Any = None,
    right_valid: Any = None,
    *,
    block: int | None = None,
    split_every: int | None = None,
    blas_threads: int | None = None,
) -> dict[str, da.Array]:
    """Lazy CFH of two hemispheres: max correlation and its argument, both ways.

    One task per (left block i, right block j) runs the fused GEMM + max/argmax
    (:class:`~cfhdask.cfh.reductions.MaxArgmax`), so every GEMM is computed
    once and serves both hemispheres.

    Parameters
    ----------
    left : dask or NumPy array (nL, T) float32
        Standardised series of the left hemisphere (see
        :func:`~cfhdask.cfh.kernels.standardize`), NumPy or CuPy blocks.
    right : dask or NumPy array (nR, T) float32
        Standardised series of the right hemisphere (same T).
    left_valid, right_valid : bool arrays (nL,), (nR,), optional
        False for excluded (constant) voxels: they get no CFH and are never a
        counterpart.  Default: all valid.
    block : int, optional
        Voxels per side of one correlation block (config ``cfh.block``,
        default 4096); need not divide the voxel counts.
    split_every : int, optional
        Fan-in of the tree reductions (config ``cfh.split-every``, default 8).
    blas_threads : int, optional
        Limit BLAS threads inside each block task (threadpoolctl); ``None``
        leaves the worker's setting (the embedded cluster pins it already).

    Returns
    -------
    dict of lazy dask arrays
        ``left_rmax`` (nL,) float32 max r over the right hemisphere (NaN where
        none), ``left_arg`` (nL,) int64 index into ``right`` (-1 where none),
        ``right_rmax`` (nR,), ``right_arg`` (nR,) index into ``left``.
    """
    left, right, lv, rv, split_every = _hemispheres(left, right, left_valid, right_valid,
                                                     block, split_every)
    red = MaxArgmax()
    g, rows, cols, rname, cname = block_graph(left, right, lv, rv, red,
                                              split_every=split_every,
                                              blas_threads=blas_threads, name="cfh")
    return cfh_outputs(g, red, rows, cols, rname, cname, left.chunks[0], right.chunks[0])


def cfh_outputs(g: _Graph, red: MaxArgmax, rows: list, cols: list, rname: str, cname: str,
                left_chunks: Sequence[int], right_chunks: Sequence[int]
                ) -> dict[str, da.Array]:
    """The four lazy CFH outputs of a max/argmax block graph (see :func:`cfh_graph`)."""
    tok = rname.rsplit("-", 1)[-1]
    fl = _final_layer(g, f"cfh-left-final-{tok}", rows, red, rname)
    fr = _final_layer(g, f"cfh-right-final-{tok}", cols, red, cname)
    out = {}
    for label, src, roots, chunks in (("left", fl, rows, left_chunks),
                                      ("right", fr, cols, right_chunks)):
        keys = [(src, k) for k in range(len(roots))]
        out[f"{label}_rmax"] = g.array(f"cfh-{label}-rmax-{tok}", keys, 0, chunks,
                                       np.float32, src)
        out[f"{label}_arg"] = g.array(f"cfh-{label}-arg-{tok}", keys, 1, chunks, np.int64, src)
    return out


def _sum_counts(*parts):
    return sum_parts(list(parts))


def autonomy_graph(
    left: Any,
    right: Any,
    left_valid: Any = None,
    right_valid: Any = None,
    *,
    threshold: float,
    block: int | None = None,
    split_every: int | None = None,
    blas_threads: int | None = None,
) -> dict[str, da.Array]:
    """Lazy counts of the autonomy index: partners above ``threshold`` in each hemisphere.

    Three block families through :class:`~cfhdask.cfh.reductions.ThresholdCount`
    on the same engine: left x left and right x right (symmetric: blocks i <= j
    only, self-pairs excluded) and left x right (rows give the left voxels'
    contralateral counts, columns the right voxels').

    Parameters
    ----------
    left, right : dask or NumPy arrays (nL, T), (nR, T) float32
        Standardised series of the two hemispheres.
    left_valid, right_valid : bool arrays, optional
        False for constant voxels: never counted, and their own counts are
        meaningless (the caller masks them).
    threshold : float
        Correlations strictly above it count.
    block, split_every, blas_threads
        As :func:`cfh_graph`.

    Returns
    -------
    dict of lazy int64 dask arrays
        ``left_ipsi``, ``left_contra`` (nL,), ``right_ipsi``, ``right_contra`` (nR,).
    """
    left, right, lv, rv, split_every = _hemispheres(left, right, left_valid, right_valid,
                                                     block, split_every)
    red = ThresholdCount(threshold)
    out: dict[str, da.Array] = {}
    g_lr, rows, cols, rname, cname = block_graph(left, right, lv, rv, red,
                                                 split_every=split_every,
                                                 blas_threads=blas_threads, name="ai-lr")
    graphs = [g_lr]
    contra = {"left": (rows, rname, left.chunks[0]), "right": (cols, cname, right.chunks[0])}
    ipsi = {}
    for label, z, v in (("left", left, lv), ("right", right, rv)):
        g, r, c, rn, cn = block_graph(z, z, v, v, red, split_every=split_every, symmetric=True,
                                      blas_threads=blas_threads, name=f"ai-{label}")
        ipsi[label] = (r, c, rn, cn, z.chunks[0])
        graphs.append(g)
    g = graphs[0]
    for other in graphs[1:]:
        g.layers.update(other.layers)
        for k, v in other.deps.items():
            g.deps.setdefault(k, set()).update(v)
    tok = tokenize(rname, threshold)
    for label in ("left", "right"):
        r, c, rn, cn, chunks = ipsi[label]
        name = f"ai-{label}-ipsi-{tok}"
        layer = {}
        for k in range(len(r)):
            refs = [TaskRef(r[k])] + ([TaskRef(c[k])] if c[k] is not None else [])
            layer[(name, k)] = Task((name, k), _sum_counts, *refs)
        g.add(name, layer, {rn, cn})
        fname = f"ai-{label}-ipsi-final-{tok}"
        _final_layer(g, fname, [(name, k) for k in range(len(r))], red, name)
        out[f"{label}_ipsi"] = g.array(f"ai-{label}-ipsi-out-{tok}",
                                       [(fname, k) for k in range(len(r))], 0, chunks,
                                       np.int64, fname)
        roots, src, chunks = contra[label]
        fname = f"ai-{label}-contra-final-{tok}"
        _final_layer(g, fname, roots, red, src)
        out[f"{label}_contra"] = g.array(f"ai-{label}-contra-out-{tok}",
                                         [(fname, k) for k in range(len(roots))], 0, chunks,
                                         np.int64, fname)
    return out


# ----------------------------------------------------------------------------- pairs
def _paired_task(read: Callable, subject: int, start: int, stop: int, partner: np.ndarray,
                 backend: str, rows: int):
    x = to_backend(read(subject, start, stop), backend)
    r, valid = paired_correlations(x, partner, rows=rows)
    return to_numpy(r), to_numpy(valid)


def paired_graph(read: Callable[[int, int, int], np.ndarray], subject: int, start: int,
                 stop: int, partner: np.ndarray, *, backend: str = "numpy",
                 rows: int = 4096, token: Any = None) -> dict[str, da.Array]:
    """Lazy correlation of every voxel of a subject with one partner voxel.

    One task reads the subject's voxels ``start:stop`` once and runs
    :func:`~cfhdask.cfh.kernels.paired_correlations`: an O(voxels x T) pass
    (the values of group-counterpart CFH, VMHC).

    Parameters
    ----------
    read : callable ``read(subject, start, stop) -> ndarray``
        As for :func:`cfhdask.cfh.groupsum.group_sum_graph`.
    subject : int
        Which subject of the reader.
    start, stop : int
        The voxels read (e.g. both hemispheres, the midline left out).
    partner : int ndarray (stop - start,)
        Each voxel's partner, relative to ``start``; -1 for none.
    backend : {"numpy", "cupy"}
    rows : int
        Voxels standardised and paired at once inside the task.
    token : optional
        Identifies the data behind ``read`` in task names.

    Returns
    -------
    dict of lazy dask arrays
        ``r`` (stop - start,) float32 (NaN where there is no partner or either
        series is constant) and ``valid`` (False for constant series).
    """
    partner = np.asarray(partner, dtype=np.int64)
    n = int(stop) - int(start)
    if partner.shape != (n,):
        raise CfhdaskInputError(f"partner: expected shape ({n},), got {partner.shape}")
    tok = tokenize(token, subject, start, stop, partner, backend, rows)
    name = f"paired-{tok}"
    g = _Graph()
    g.add(name, {(name, 0): Task((name, 0), _paired_task, read, int(subject), int(start),
                                 int(stop), partner, backend, int(rows))}, set())
    return {"r": g.array(f"paired-r-{tok}", [(name, 0)], 0, (n,), np.float32, name),
            "valid": g.array(f"paired-valid-{tok}", [(name, 0)], 1, (n,), bool, name)}


# ----------------------------------------------------------------------------- standardise
def standardize_graph(x: Any, *, block: int | None = None,
                      backend: str = "numpy") -> tuple[da.Array, da.Array]:
    """Lazily standardise (voxel, time) series in blocks of ``block`` voxels.

    Each block is read and standardised once (:func:`~cfhdask.cfh.kernels.standardize`)
    and yields both outputs.

    Parameters
    ----------
    x : dask or NumPy array (voxel, time)
    block : int, optional
        Voxels per chunk of the outputs (default config ``cfh.block``).
    backend : {"numpy", "cupy"}
        Where the standardised blocks live.

    Returns
    -------
    z : dask array (voxel, time) float32, time in one chunk
    valid : dask array (voxel,) bool, False for constant series
    """
    block = int(block or settings().cfh.block)
    x = _as_series(x, block, "series")
    tok = tokenize(x, backend)
    sname, zname, vname = f"cfh-std-{tok}", f"cfh-z-{tok}", f"cfh-valid-{tok}"
    g = _Graph(x)
    s_layer, z_layer, v_layer = {}, {}, {}
    for i in range(len(x.chunks[0])):
        skey = (sname, i)
        s_layer[skey] = Task(skey, _standardize_task, TaskRef((x.name, i, 0)), backend)
        z_layer[(zname, i, 0)] = Task((zname, i, 0), operator.getitem, TaskRef(skey), 0)
        v_layer[(vname, i)] = Task((vname, i), operator.getitem, TaskRef(skey), 1)
    g.add(sname, s_layer, _layers_of(x))
    g.add(zname, z_layer, {sname})
    g.add(vname, v_layer, {sname})
    hlg = g.hlg()
    z = da.Array(hlg, zname, chunks=x.chunks, dtype=np.float32)
    valid = da.Array(hlg, vname, chunks=(x.chunks[0],), dtype=bool)
    return z, valid


def _standardize_task(x, backend: str):
    return standardize(to_backend(x, backend) if backend != "numpy" else x)
