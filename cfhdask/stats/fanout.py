"""Permutations fanned out on a Dask cluster.

The residualised data and the voxel graph are scattered to every worker once;
each task scores one batch of the permutation schedule and returns only its
null maxima (an array of shape (batch, 2, 4), never a map); the client puts
them in schedule order.  Because permutation ``k`` depends only on the seed
and ``k`` (see :mod:`cfhdask.stats.permute`) and GEMMs run on aligned
micro-batches, the result is identical whatever the number of workers or the
batch size.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from distributed import Client, as_completed

from cfhdask.stats.clusters import VoxelGraph
from cfhdask.stats.glm import MICRO_BATCH, GLMPrep
from cfhdask.stats.null import NULL_STATS, SIGNS, NullSettings, batch_null_maxima
from cfhdask.stats.permute import PermutationSchedule

log = logging.getLogger(__name__)


#: Tasks per worker thread aimed at when the batch size is chosen automatically.
TASKS_PER_THREAD = 4
#: Largest automatic batch (permutations per task).
MAX_AUTO_BATCH = 512


def auto_batch_size(n_perm: int, n_threads: int) -> int:
    """Permutations per task: at least :data:`TASKS_PER_THREAD` tasks per worker thread.

    A multiple of the GEMM micro-batch, between one micro-batch and
    :data:`MAX_AUTO_BATCH`.
    """
    per = n_perm // (TASKS_PER_THREAD * max(1, int(n_threads)))
    return int(min(MAX_AUTO_BATCH, max(MICRO_BATCH, per // MICRO_BATCH * MICRO_BATCH)))


def batch_bounds(n_perm: int, batch_size: int) -> list[tuple[int, int]]:
    """Task bounds over ``range(n_perm)``; sizes rounded up to the GEMM micro-batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    b = MICRO_BATCH * math.ceil(batch_size / MICRO_BATCH)
    return [(s, min(s + b, n_perm)) for s in range(0, n_perm, b)]


def null_maxima_dask(client: Client, prep: GLMPrep, graph: VoxelGraph,
                     schedule: PermutationSchedule, settings: NullSettings,
                     batch_size: int | None = None) -> np.ndarray:
    """Null maxima of every permutation of ``schedule``, computed on ``client``.

    Parameters
    ----------
    client : distributed.Client
    prep : GLMPrep
        Residualised data (scattered once, broadcast to all workers).
    graph : VoxelGraph
        Neighbour table of the voxels (scattered once).
    schedule : PermutationSchedule
    settings : NullSettings
    batch_size : int, optional
        Permutations per task (rounded up to a multiple of the micro-batch);
        default :func:`auto_batch_size` for the client's worker threads.

    Returns
    -------
    ndarray of shape (n_perm, 2, 4)
        Axis 1 is :data:`~cfhdask.stats.null.SIGNS`, axis 2 :data:`NULL_STATS`.
    """
    if batch_size is None:
        batch_size = auto_batch_size(schedule.n_perm, sum(client.nthreads().values()))
    prep_f, graph_f = client.scatter([prep, graph], broadcast=True, hash=False)
    bounds = batch_bounds(schedule.n_perm, batch_size)
    log.info("permutations: %d in %d task(s) of %d", schedule.n_perm, len(bounds), batch_size)
    futures = {}
    for start, stop in bounds:
        fut = client.submit(batch_null_maxima, prep_f, graph_f, schedule, start, stop,
                            settings, key=f"cfhdask-null-{start}-{stop}-{id(schedule)}",
                            pure=False)
        futures[fut] = start
    out = np.zeros((schedule.n_perm, len(SIGNS), len(NULL_STATS)))
    done = 0
    step = max(1, len(bounds) // 10)
    try:
        for i, fut in enumerate(as_completed(list(futures)), start=1):
            res = fut.result()
            start = futures[fut]
            out[start:start + res.shape[0]] = res
            done += res.shape[0]
            if i % step == 0 or i == len(bounds):
                log.info("permutations: %d / %d (%d%%)", done, schedule.n_perm,
                         100 * done // schedule.n_perm)
            fut.release()
    finally:
        for fut in futures:
            fut.cancel()
        client.cancel([prep_f, graph_f])
    return out


def null_maxima_local(prep: GLMPrep, graph: VoxelGraph, schedule: PermutationSchedule,
                      settings: NullSettings, batch_size: int | None = None) -> np.ndarray:
    """The same as :func:`null_maxima_dask`, in this process (no cluster)."""
    batch_size = batch_size or MAX_AUTO_BATCH
    out = np.zeros((schedule.n_perm, len(SIGNS), len(NULL_STATS)))
    for start, stop in batch_bounds(schedule.n_perm, batch_size):
        out[start:stop] = batch_null_maxima(prep, graph, schedule, start, stop, settings)
    return out
