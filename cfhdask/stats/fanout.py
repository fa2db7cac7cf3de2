"""Permutations fanned out on a Dask cluster.

The residualised data and the voxel graph are scattered to every worker once;
each task scores one batch of the permutation schedule and returns only its
null maxima (an array of shape (batch, 2, 4), never a map); the client puts
them in schedule order.  Finished batches survive lost workers: when the
workers holding the scattered data die, the data are scattered again and only
the unfinished batches rerun.  Because permutation ``k`` depends only on the seed
and ``k`` (see :mod:`cfhdask.stats.permute`) and GEMMs run on aligned
micro-batches, the result is identical whatever the number of workers or the
batch size.
"""

from __future__ import annotations

import logging
import math
import uuid
from concurrent.futures import CancelledError

import numpy as np
from distributed import Client, KilledWorker, as_completed

from cfhdask.errors import CfhdaskError
from cfhdask.stats.clusters import VoxelGraph
from cfhdask.stats.glm import MICRO_BATCH, GLMPrep
from cfhdask.stats.null import NULL_STATS, SIGNS, NullSettings, batch_null_maxima
from cfhdask.stats.permute import PermutationSchedule

log = logging.getLogger(__name__)


#: Tasks per worker thread aimed at when the batch size is chosen automatically.
TASKS_PER_THREAD = 4
#: Largest automatic batch (permutations per task).
MAX_AUTO_BATCH = 512
#: Times the shared data may be scattered again after the workers holding them died.
MAX_RESCATTERS = 5
#: Seconds to wait for a worker when none is left (e.g. while a nanny restarts one).
WORKER_WAIT_S = 300


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


def _lost(fut) -> bool:
    """The task stopped because the scattered data (or the workers holding them) were lost."""
    return fut.status == "cancelled" or (
        fut.status == "error" and isinstance(fut.exception(), CancelledError))


def null_maxima_dask(client: Client, prep: GLMPrep, graph: VoxelGraph,
                     schedule: PermutationSchedule, settings: NullSettings,
                     batch_size: int | None = None) -> np.ndarray:
    """Null maxima of every permutation of ``schedule``, computed on ``client``.

    When the workers holding the scattered data die, the data are scattered
    again and only the unfinished batches are resubmitted (finished batches
    are kept); after :data:`MAX_RESCATTERS` such losses a one-line
    :class:`~cfhdask.errors.CfhdaskError` says how many batches had finished.

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
    bounds = batch_bounds(schedule.n_perm, batch_size)
    log.info("permutations: %d in %d task(s) of %d", schedule.n_perm, len(bounds), batch_size)
    out = np.zeros((schedule.n_perm, len(SIGNS), len(NULL_STATS)))
    todo = dict(bounds)
    token = uuid.uuid4().hex[:10]
    for attempt in range(MAX_RESCATTERS + 1):
        if not _run_batches(client, prep, graph, schedule, settings, todo, out,
                            key=f"cfhdask-null-{token}-{attempt}"):
            return out
        log.warning("permutations: the workers holding the data were lost; scattering it "
                    "again for the %d unfinished batch(es) of %d (finished ones kept)",
                    len(todo), len(bounds))
    raise CfhdaskError(
        f"permutations: the Dask workers holding the data were lost {MAX_RESCATTERS + 1} "
        f"times; {len(bounds) - len(todo)} of {len(bounds)} batches had finished (check the "
        "workers' memory limit and logs)")


def _run_batches(client: Client, prep: GLMPrep, graph: VoxelGraph,
                 schedule: PermutationSchedule, settings: NullSettings,
                 todo: dict[int, int], out: np.ndarray, key: str) -> bool:
    """Scatter the data and run the batches ``todo`` (start -> stop), removing each
    finished one; True when the scattered data were lost on the way."""
    if not client.nthreads():
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    prep_f, graph_f = client.scatter([prep, graph], broadcast=True, hash=False)
    futures = {client.submit(batch_null_maxima, prep_f, graph_f, schedule, start, stop,
                             settings, key=f"{key}-{start}-{stop}", pure=False): start
               for start, stop in todo.items()}
    n_perm = out.shape[0]
    step = max(1, len(futures) // 10)

    def finished() -> int:
        return n_perm - sum(stop - start for start, stop in todo.items())

    try:
        for i, fut in enumerate(as_completed(list(futures)), start=1):
            if _lost(fut):
                return True
            try:
                res = fut.result()
            except CancelledError:  # finished, then lost with its worker before the gather
                return True
            except KilledWorker as exc:
                raise CfhdaskError(
                    "permutations: a batch was running on workers that all died (out of "
                    f"memory? see the workers' logs); {finished()} of {n_perm} permutations "
                    "had finished") from exc
            start = futures[fut]
            out[start:start + res.shape[0]] = res
            del todo[start]
            if i % step == 0 or i == len(futures):
                log.info("permutations: %d / %d (%d%%)", finished(), n_perm,
                         100 * finished() // n_perm)
            fut.release()
        return False
    finally:
        client.cancel(list(futures))
        client.cancel([prep_f, graph_f])


def null_maxima_local(prep: GLMPrep, graph: VoxelGraph, schedule: PermutationSchedule,
                      settings: NullSettings, batch_size: int | None = None) -> np.ndarray:
    """The same as :func:`null_maxima_dask`, in this process (no cluster)."""
    batch_size = batch_size or MAX_AUTO_BATCH
    out = np.zeros((schedule.n_perm, len(SIGNS), len(NULL_STATS)))
    for start, stop in batch_bounds(schedule.n_perm, batch_size):
        out[start:stop] = batch_null_maxima(prep, graph, schedule, start, stop, settings)
    return out
