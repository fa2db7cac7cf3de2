"""Batches of permutations fanned out on a Dask cluster, robust to lost workers.

One machine for every permutation workload: the permutations of one analysis
(:func:`null_maxima_dask`, ``cfhdask stats``) and the splits x permutations of
a null-check (:mod:`cfhdask.stats.nullcheck`) both go through
:func:`fan_out`.

* **Shared data** (the residualised data, the voxel graph, the schedule) are
  scattered once to every worker; each task gets only small arguments (a
  batch's bounds, a split's labels) and returns only small results (null
  maxima or counts, never a map).
* **Cohort-level scheduling**: the whole workload is in flight at once, bounded
  by the memory the client lets finished results take
  (:data:`RESULT_BUDGET`), never by a fixed look-ahead; the bound is re-read
  from the cluster's current thread count as batches finish, so a cluster
  that grows gets more work.  Automatic batches give at least
  :data:`TASKS_PER_THREAD` tasks per worker thread (:func:`auto_batch_size`).
* **Lost workers**: a task that was running on a worker that died is rerun
  elsewhere by Dask.  When the workers holding the scattered data all die
  (the data of a scatter cannot be recomputed), the data are scattered again
  and only the unfinished batches are resubmitted; finished batches are kept
  by the client and never recomputed.  Nothing of Dask's
  ``FutureCancelledError`` reaches the user: the run completes, or after
  :data:`MAX_RESCATTERS` losses stops with a one-line
  :class:`~cfhdask.errors.CfhdaskError`.

Because permutation ``k`` depends only on the seed and ``k`` (see
:mod:`cfhdask.stats.permute`) and GEMMs run on aligned micro-batches, results
are identical whatever the number of workers, the batch size, or the workers
lost on the way.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from typing import Any

import numpy as np
from distributed import Client, Future, KilledWorker

from cfhdask.errors import CfhdaskError
from cfhdask.stats.clusters import VoxelGraph
from cfhdask.stats.glm import MICRO_BATCH, GLMPrep
from cfhdask.stats.null import NULL_STATS, SIGNS, NullSettings, batch_null_maxima
from cfhdask.stats.permute import PermutationSchedule

__all__ = ["MAX_AUTO_BATCH", "MAX_RESCATTERS", "RESULT_BUDGET", "TASKS_PER_THREAD",
           "auto_batch_size", "batch_bounds", "fan_out", "max_in_flight", "null_maxima_dask",
           "null_maxima_local"]

log = logging.getLogger(__name__)


#: Tasks per worker thread aimed at when the batch size is chosen automatically.
TASKS_PER_THREAD = 4
#: Largest automatic batch (permutations per task).
MAX_AUTO_BATCH = 512
#: Bytes of results the client lets be in flight (finished or not) at once.
RESULT_BUDGET = 256 * 2**20
#: Times the shared data may be re-scattered after the workers holding them died.
MAX_RESCATTERS = 5
#: Seconds to wait for a worker when none is left (e.g. while a nanny restarts one).
WORKER_WAIT_S = 300


def auto_batch_size(n_perm: int, n_threads: int, n_analyses: int = 1) -> int:
    """Permutations per task: at least :data:`TASKS_PER_THREAD` tasks per worker thread.

    A multiple of the GEMM micro-batch, between one micro-batch and
    :data:`MAX_AUTO_BATCH`.

    Parameters
    ----------
    n_perm : int
        Permutations of one analysis.
    n_threads : int
        Worker threads of the cluster.
    n_analyses : int
        Analyses sharing the cluster (the splits of a null-check): their tasks
        together fill the threads.
    """
    per = n_perm * max(1, int(n_analyses)) // (TASKS_PER_THREAD * max(1, int(n_threads)))
    return int(min(MAX_AUTO_BATCH, max(MICRO_BATCH, per // MICRO_BATCH * MICRO_BATCH)))


def batch_bounds(n_perm: int, batch_size: int) -> list[tuple[int, int]]:
    """Task bounds over ``range(n_perm)``; sizes rounded up to the GEMM micro-batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    b = MICRO_BATCH * math.ceil(batch_size / MICRO_BATCH)
    return [(s, min(s + b, n_perm)) for s in range(0, n_perm, b)]


def max_in_flight(n_threads: int, result_nbytes: int) -> int:
    """Tasks kept submitted at once: as many as :data:`RESULT_BUDGET` holds, and at
    least two rounds of :data:`TASKS_PER_THREAD` tasks per thread."""
    floor = 2 * TASKS_PER_THREAD * max(1, int(n_threads))
    return int(max(floor, RESULT_BUDGET // max(1, int(result_nbytes))))


def _threads(client: Client) -> int:
    return int(sum(client.nthreads().values()))


def _scatter(client: Client, shared: Sequence[Any], what: str) -> list:
    """Scatter ``shared`` to every worker (waiting for one when none is left).

    A :class:`~distributed.Future` in ``shared`` (data a task made in a
    worker) is passed on as it is: Dask moves it between workers, and
    recomputes it if its workers are lost.
    """
    if not client.nthreads():
        log.warning("%s: no Dask worker; waiting up to %d s for one", what, WORKER_WAIT_S)
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise CfhdaskError(f"{what}: no Dask worker joined the cluster within "
                               f"{WORKER_WAIT_S} s") from None
    data = [v for v in shared if not isinstance(v, Future)]
    sent = iter(client.scatter(data, broadcast=True, hash=False) if data else ())
    return [v if isinstance(v, Future) else next(sent) for v in shared]


def _lost(fut) -> bool:
    """A task stopped because its data (a scatter) or its workers were lost."""
    if fut.status == "cancelled":
        return True
    if fut.status == "error":
        exc = fut.exception()
        return isinstance(exc, CancelledError)
    return False


def fan_out(client: Client, fn: Callable, shared: Sequence[Any], items: Sequence[tuple],
            consume: Callable[[int, Any], None], *, what: str = "permutations",
            sizes: Sequence[int] | None = None, result_nbytes: int = 4096,
            progress: Callable[[int, int], None] | None = None) -> None:
    """Run ``fn(*shared, *items[i])`` for every ``i`` on ``client``.

    Parameters
    ----------
    client : distributed.Client
    fn : callable
        The task (a kernel: no Dask inside).
    shared : sequence
        Arguments common to every task, scattered once to every worker (and
        again if the workers holding them are lost).
    items : sequence of tuples
        The per-task arguments (small: bounds, labels, seeds).
    consume : callable
        ``consume(i, result)``, called in this process as each task finishes
        (in completion order; place results by ``i``).  Each item is consumed
        exactly once, even when workers are lost.
    what : str
        Name of the work in log messages and errors.
    sizes : sequence of int, optional
        Units of work of each item (permutations), for progress messages.
    result_nbytes : int
        Approximate size of one result, bounding the tasks in flight
        (:func:`max_in_flight`).
    progress : callable, optional
        ``progress(done, total)`` in units, after each finished item.

    Raises
    ------
    CfhdaskError
        When the data had to be re-scattered more than :data:`MAX_RESCATTERS`
        times, a task killed its workers (``KilledWorker``), or no worker is left.
        An exception raised by ``fn`` itself is raised as it is.
    """
    n = len(items)
    tally = _Tally([1] * n if sizes is None else [int(s) for s in sizes], what, progress)
    done = np.zeros(n, dtype=bool)
    token = uuid.uuid4().hex[:10]
    log.info("%s: %d in %d task(s)", what, tally.total, n)
    for attempt in range(MAX_RESCATTERS + 1):
        if not _round(client, fn, shared, items, consume, done, tally,
                      key=f"cfhdask-{what.replace(' ', '-')}-{token}-{attempt}",
                      result_nbytes=result_nbytes):
            return
        log.warning("%s: the workers holding the data were lost; scattering it again and "
                    "resubmitting the %d unfinished batch(es) (%d of %d finished, kept)",
                    what, int((~done).sum()), int(done.sum()), n)
    raise CfhdaskError(
        f"{what}: the Dask workers holding the data were lost {MAX_RESCATTERS + 1} times; "
        f"{int(done.sum())} of {n} batches had finished (check the workers' memory limit "
        "and logs)")


class _Tally:
    """Units of work done, logged every tenth and passed to a progress callback."""

    def __init__(self, units: list[int], what: str, progress) -> None:
        self.units, self.what, self.progress = units, what, progress
        self.total = int(sum(units))
        self.done = 0
        self.step = max(1, self.total // 10)
        self.next_log = self.step

    def add(self, i: int) -> None:
        self.done += self.units[i]
        if self.done >= self.next_log or self.done == self.total:
            log.info("%s: %d / %d (%d%%)", self.what, self.done, self.total,
                     100 * self.done // max(1, self.total))
            self.next_log = self.done + self.step
        if self.progress is not None:
            self.progress(self.done, self.total)


def _round(client: Client, fn: Callable, shared: Sequence[Any], items: Sequence[tuple],
           consume: Callable[[int, Any], None], done: np.ndarray, tally: _Tally, *,
           key: str, result_nbytes: int) -> bool:
    """Scatter ``shared``, run every unfinished item; True when the scattered data were lost."""
    from cfhdask.inflight import run_in_flight, throttled

    threads = throttled(lambda: _threads(client))
    shared_f = _scatter(client, shared, tally.what)

    def submit(i: int):
        return client.submit(fn, *shared_f, *items[i], pure=False, key=f"{key}-{i}")

    def finished(i: int, fut, result) -> None:
        if fut.status == "error":
            _raise_task_error(fut.exception(), tally.what, int(done.sum()), len(items))
        consume(i, result)
        done[i] = True
        tally.add(i)

    try:
        return bool(run_in_flight(client, [int(i) for i in np.flatnonzero(~done)], submit,
                                  finished, lambda: max_in_flight(threads(), result_nbytes),
                                  lost=_lost))
    finally:
        scattered = [f for f, v in zip(shared_f, shared, strict=True) if f is not v]
        if scattered:
            client.cancel(scattered)


def _raise_task_error(exc: BaseException, what: str, n_done: int, n: int) -> None:
    if isinstance(exc, KilledWorker):
        raise CfhdaskError(
            f"{what}: a batch was running on several workers that all died (out of "
            f"memory? see the workers' logs); {n_done} of {n} batches had finished") from exc
    raise exc


def _batch(prep: GLMPrep, graph: VoxelGraph, schedule: PermutationSchedule,
           settings: NullSettings, start: int, stop: int) -> np.ndarray:
    return batch_null_maxima(prep, graph, schedule, start, stop, settings)


def null_maxima_dask(client: Client, prep: GLMPrep | Future, graph: VoxelGraph,
                     schedule: PermutationSchedule, settings: NullSettings,
                     batch_size: int | None = None,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Null maxima of every permutation of ``schedule``, computed on ``client``.

    Parameters
    ----------
    client : distributed.Client
    prep : GLMPrep or distributed.Future
        Residualised data (scattered once to every worker, with the graph,
        the schedule and the settings), or the future of a task that made
        them in a worker (they then never pass through this process).
    graph : VoxelGraph
    schedule : PermutationSchedule
    settings : NullSettings
    batch_size : int, optional
        Permutations per task (rounded up to a multiple of the micro-batch);
        default :func:`auto_batch_size` for the client's worker threads.
    progress : callable, optional
        ``progress(done, total)`` permutations, as batches finish.

    Returns
    -------
    ndarray of shape (n_perm, 2, 4)
        Axis 1 is :data:`~cfhdask.stats.null.SIGNS`, axis 2 :data:`NULL_STATS`.
    """
    if batch_size is None:
        batch_size = auto_batch_size(schedule.n_perm, _threads(client))
    bounds = batch_bounds(schedule.n_perm, batch_size)
    out = np.zeros((schedule.n_perm, len(SIGNS), len(NULL_STATS)))

    def consume(i: int, res: np.ndarray) -> None:
        start = bounds[i][0]
        out[start:start + res.shape[0]] = res

    fan_out(client, _batch, [prep, graph, schedule, settings], bounds, consume,
            what="permutations", sizes=[b - a for a, b in bounds],
            result_nbytes=out[:bounds[0][1]].nbytes, progress=progress)
    return out


def null_maxima_local(prep: GLMPrep, graph: VoxelGraph, schedule: PermutationSchedule,
                      settings: NullSettings, batch_size: int | None = None) -> np.ndarray:
    """The same as :func:`null_maxima_dask`, in this process (no cluster)."""
    batch_size = batch_size or MAX_AUTO_BATCH
    out = np.zeros((schedule.n_perm, len(SIGNS), len(NULL_STATS)))
    for start, stop in batch_bounds(schedule.n_perm, batch_size):
        out[start:stop] = batch_null_maxima(prep, graph, schedule, start, stop, settings)
    return out
