"""The Dask graph of CFH: left x right correlation blocks with fused max/argmax.

:func:`cfh_graph` builds one graph for one subject:

* one task per (left block i, right block j) runs
  :func:`cfhdask.cfh.kernels.block_maxcorr` (GEMM + row and column max/argmax),
  so every GEMM is computed once and serves both hemispheres;
* the row results of block row i are tree-reduced across j, the column results
  of block column j across i, with fan-in ``split_every``
  (:func:`cfhdask.cfh.kernels.combine_max`, ties to the smaller index, hence
  the same result whatever the scheduler or the order of completion);
* the outputs are four lazy dask arrays chunked like the input blocks.

The left x right matrix is never materialised: a task holds one strip of one
block at a time.  Building the graph computes nothing.
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
from cfhdask.cfh.kernels import block_maxcorr, combine_many, standardize
from cfhdask.errors import CfhdaskInputError
from cfhdask.settings import settings

#: names of the outputs of :func:`cfh_graph`
OUTPUTS = ("left_rmax", "left_arg", "right_rmax", "right_arg")


def _offsets(chunks: Sequence[int]) -> list[int]:
    return [int(v) for v in np.concatenate([[0], np.cumsum(chunks)[:-1]])]


def _with_blas_limit(blas_threads: int | None, func: Callable, *args: Any) -> Any:
    if not blas_threads:
        return func(*args)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(blas_threads), user_api="blas"):
        return func(*args)


def _block_task(a, b, a_valid, b_valid, a_offset, b_offset, blas_threads):
    return _with_blas_limit(blas_threads, block_maxcorr, a, b, a_valid, b_valid,
                            a_offset, b_offset)


def _reduce_task(which: str | None, *parts) -> tuple[Any, Any]:
    """Combine block results (``which`` = "row"/"col") or partial (max, arg) pairs."""
    if which == "row":
        pairs = [(p.row_max, p.row_arg) for p in parts]
    elif which == "col":
        pairs = [(p.col_max, p.col_arg) for p in parts]
    else:
        pairs = list(parts)
    return combine_many(pairs)


def _finalize_task(pair) -> tuple[np.ndarray, np.ndarray]:
    """Host arrays; rows with no valid partner get NaN and -1."""
    m, i = to_numpy(pair[0]), to_numpy(pair[1])
    none = ~np.isfinite(m) | (i < 0)
    m = np.where(none, np.float32(np.nan), m).astype(np.float32)
    i = np.where(none, -1, i).astype(np.int64)
    return m, i


def _tree(layer: dict, name: str, index: int, leaves: list, which: str,
          split_every: int) -> Any:
    """Add a tree reduction of ``leaves`` (TaskRefs) to ``layer``; return the root key."""
    level = 0
    refs = leaves
    first = which
    while len(refs) > split_every:
        nxt = []
        for g in range(0, len(refs), split_every):
            key = (f"{name}-l{level}", index, g // split_every)
            layer[key] = Task(key, _reduce_task, first, *refs[g:g + split_every])
            nxt.append(TaskRef(key))
        refs, first, level = nxt, None, level + 1
    key = (f"{name}-root", index)
    layer[key] = Task(key, _reduce_task, first, *refs)
    final = (f"{name}-final", index)
    layer[final] = Task(final, _finalize_task, TaskRef(key))
    return final


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


def _base_graph(*arrays: da.Array) -> tuple[dict, dict]:
    hlg = HighLevelGraph.merge(*(a.__dask_graph__() for a in arrays))
    return dict(hlg.layers), {k: set(v) for k, v in hlg.dependencies.items()}


def _layers_of(a: da.Array) -> set:
    return set(a.__dask_layers__())


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
    layers, deps = _base_graph(x)
    s_layer, z_layer, v_layer = {}, {}, {}
    for i in range(len(x.chunks[0])):
        skey = (sname, i)
        s_layer[skey] = Task(skey, _standardize_task, TaskRef((x.name, i, 0)), backend)
        z_layer[(zname, i, 0)] = Task((zname, i, 0), operator.getitem, TaskRef(skey), 0)
        v_layer[(vname, i)] = Task((vname, i), operator.getitem, TaskRef(skey), 1)
    layers.update({sname: s_layer, zname: z_layer, vname: v_layer})
    deps.update({sname: _layers_of(x), zname: {sname}, vname: {sname}})
    hlg = HighLevelGraph(layers, deps)
    z = da.Array(hlg, zname, chunks=x.chunks, dtype=np.float32)
    valid = da.Array(hlg, vname, chunks=(x.chunks[0],), dtype=bool)
    return z, valid


def _standardize_task(x, backend: str):
    return standardize(to_backend(x, backend) if backend != "numpy" else x)


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
    block = int(block or settings().cfh.block)
    split_every = int(split_every or settings().cfh.split_every)
    if block < 1:
        raise CfhdaskInputError(f"cfh block must be >= 1, got {block}")
    if split_every < 2:
        raise CfhdaskInputError(f"cfh split-every must be >= 2, got {split_every}")
    left = _as_series(left, block, "left")
    right = _as_series(right, block, "right")
    if left.shape[1] != right.shape[1]:
        raise CfhdaskInputError(
            f"left and right series differ in length: {left.shape[1]} vs {right.shape[1]}")
    lv = _as_mask(left_valid, left, "left_valid")
    rv = _as_mask(right_valid, right, "right_valid")

    tok = tokenize(left, right, lv, rv, split_every, blas_threads)
    bname = f"cfh-block-{tok}"
    rname, cname = f"cfh-rowmax-{tok}", f"cfh-colmax-{tok}"
    layers, deps = _base_graph(left, right, lv, rv)
    nbi, nbj = len(left.chunks[0]), len(right.chunks[0])
    offl, offr = _offsets(left.chunks[0]), _offsets(right.chunks[0])

    blocks: dict = {}
    for i in range(nbi):
        for j in range(nbj):
            key = (bname, i, j)
            blocks[key] = Task(key, _block_task, TaskRef((left.name, i, 0)),
                               TaskRef((right.name, j, 0)), TaskRef((lv.name, i)),
                               TaskRef((rv.name, j)), offl[i], offr[j], blas_threads)
    rows: dict = {}
    cols: dict = {}
    row_roots = [_tree(rows, rname, i, [TaskRef((bname, i, j)) for j in range(nbj)], "row",
                       split_every) for i in range(nbi)]
    col_roots = [_tree(cols, cname, j, [TaskRef((bname, i, j)) for i in range(nbi)], "col",
                       split_every) for j in range(nbj)]
    layers.update({bname: blocks, rname: rows, cname: cols})
    deps.update({bname: _layers_of(left) | _layers_of(right) | _layers_of(lv) | _layers_of(rv),
                 rname: {bname}, cname: {bname}})

    out: dict[str, da.Array] = {}
    for label, roots, src, chunks in (("left", row_roots, rname, left.chunks[0]),
                                       ("right", col_roots, cname, right.chunks[0])):
        for pos, suffix, dtype in ((0, "rmax", np.float32), (1, "arg", np.int64)):
            name = f"cfh-{label}-{suffix}-{tok}"
            layers[name] = {(name, k): Task((name, k), operator.getitem, TaskRef(root), pos)
                            for k, root in enumerate(roots)}
            deps[name] = {src}
            out[f"{label}_{suffix}"] = name, chunks, dtype
    hlg = HighLevelGraph(layers, deps)
    return {k: da.Array(hlg, name, chunks=(chunks,), dtype=dtype)
            for k, (name, chunks, dtype) in out.items()}
