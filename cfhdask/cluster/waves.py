"""Cohort-level scheduling: keep a whole cohort's work in flight on a Dask cluster.

A cohort is a list of independent *units* (a subject, or a batch of small
subjects).  :func:`run_waves` submits them in waves sized to the cluster: as
many units are in flight at once as half the workers' memory holds (each unit
declares the bytes it needs at its peak), and never fewer than one per worker
thread when memory allows it; as each unit finishes, the next ones are
submitted.  The bound is re-read from the scheduler at refills, at most once
every :data:`~cfhdask.inflight.REFRESH_S` seconds, so a cluster that grows (``adapt``,
new SLURM jobs) gets more work and one that shrinks is not flooded.  Nothing
here waits on a fixed look-ahead, and the client holds only the futures of the units in flight.

Units run on the workers and write their own results (see
:mod:`cfhdask.prep.ingest` and :mod:`cfhdask.cfh.compute`); the client sees
only their completion (and small summaries).  A unit whose worker dies is
rerun by Dask elsewhere (its inputs are in the store, never scattered).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BATCHES_PER_THREAD", "MEMORY_FRACTION", "WHOLE_TASK_BYTES",
           "Capacity", "batch_units", "cluster_batches", "cluster_capacity", "even_ranges",
           "in_flight_limit", "run_waves"]

log = logging.getLogger(__name__)

#: Share of the workers' memory the units in flight may take together.
MEMORY_FRACTION = 0.5
#: Units in flight per worker thread when the workers have no memory limit.
UNBOUNDED_PER_THREAD = 4
#: A subject whose stored series weighs at most this is done whole by one task (load,
#: prepare, write, publish on a worker) in a batch of such subjects; larger ones are
#: split into a chunked graph.
WHOLE_TASK_BYTES = 16 * 2**20
#: Batches per worker thread when a cohort of small subjects is split into batches: enough
#: for the last ones to even out the workers' load, few enough to keep the client's cost
#: per subject small.
BATCHES_PER_THREAD = 4


@dataclass(frozen=True)
class Capacity:
    """What a cluster offers right now.

    Attributes
    ----------
    threads : int
        Worker threads (sum over workers).
    memory : int
        Sum of the workers' memory limits in bytes (0 when unlimited/unknown).
    workers : int
        Number of workers.
    nthreads : tuple of (address, threads)
        Each worker's address and threads, sorted by address.
    """

    threads: int
    memory: int
    workers: int
    nthreads: tuple[tuple[str, int], ...] = ()


def cluster_capacity(client) -> Capacity:
    """The threads and memory of the workers currently connected to ``client``."""
    try:
        info = client.scheduler_info(n_workers=-1)  # all workers, not the first 5
    except TypeError:  # pragma: no cover - distributed < 2025.4
        info = client.scheduler_info()
    workers = info.get("workers", {})
    nthreads = tuple(sorted((addr, int(w.get("nthreads", 1))) for addr, w in workers.items()))
    limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
    memory = 0 if not limits or any(m <= 0 for m in limits) else sum(limits)
    return Capacity(threads=sum(t for _, t in nthreads), memory=memory, workers=len(limits),
                    nthreads=nthreads)


def in_flight_limit(capacity: Capacity, unit_bytes: int,
                    memory_fraction: float = MEMORY_FRACTION) -> int:
    """Units kept in flight at once on a cluster of ``capacity``.

    ``memory_fraction`` of the workers' memory divided by the peak bytes of
    one unit, at least one unit per worker thread when that fits (and at least
    one unit).  Without a memory limit, :data:`UNBOUNDED_PER_THREAD` per thread.
    """
    threads = max(1, capacity.threads)
    if capacity.memory <= 0:
        return UNBOUNDED_PER_THREAD * threads
    by_memory = int(capacity.memory * memory_fraction) // max(1, int(unit_bytes))
    return max(1, by_memory)


def batch_units(sizes: Sequence[int], min_bytes: int) -> list[list[int]]:
    """Group consecutive items so that each unit weighs at least ``min_bytes``.

    Small subjects are batched together (one task for several), large ones
    stay alone.  Returns lists of item indices, in order.
    """
    units: list[list[int]] = []
    current: list[int] = []
    weight = 0
    for i, size in enumerate(sizes):
        current.append(i)
        weight += int(size)
        if weight >= min_bytes:
            units.append(current)
            current, weight = [], 0
    if current:
        units.append(current)
    return units


def cluster_batches(n_items: int, capacity: Capacity,
                    per_thread: int = BATCHES_PER_THREAD) -> list[range]:
    """Split ``n_items`` consecutive items into batches sized to the cluster.

    ``per_thread`` batches per worker thread (fewer when there are fewer
    items), of sizes differing by at most one.  Returns index ranges, in order.
    """
    if n_items <= 0:
        return []
    return even_ranges(n_items, per_thread * max(1, capacity.threads))


def even_ranges(n_items: int, n_parts: int) -> list[range]:
    """``n_items`` consecutive items in ``n_parts`` ranges (fewer when there are fewer
    items) of sizes differing by at most one, in order."""
    n = max(1, min(int(n_items), int(n_parts)))
    size, extra = divmod(int(n_items), n)
    out, start = [], 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        out.append(range(start, stop))
        start = stop
    return out


def run_waves(client, units: Sequence[Any], submit: Callable[[Any], Any],
              finished: Callable[[Any, Any, Any], None], *, unit_bytes: int,
              what: str = "units",
              submit_many: Callable[[list[tuple[int, Any]]], list] | None = None) -> None:
    """Run every unit on ``client``, a memory-bounded wave at a time.

    Parameters
    ----------
    client : distributed.Client
    units : sequence
        The work, in submission order.
    submit : callable
        ``submit(unit) -> Future`` (a ``client.compute`` or ``client.submit``).
    finished : callable
        ``finished(unit, future, result)``, called in this process as each unit
        ends (in completion order), whatever its status (``result`` is ``None``
        unless it finished; results of units that end together come in one
        gather); the future is released after the call.
    unit_bytes : int
        Peak worker memory of one unit (bounds the units in flight, see
        :func:`in_flight_limit`).
    what : str
        Name of the units in log messages.
    submit_many : callable, optional
        Submits the units of a refill together (see
        :func:`cfhdask.inflight.run_in_flight`).

    On any exception (``KeyboardInterrupt`` included) the units in flight are
    cancelled and the exception re-raised (the loop is
    :func:`cfhdask.inflight.run_in_flight`).
    """
    from cfhdask.inflight import run_in_flight, throttled

    said: list[int] = []
    capacity = throttled(lambda: cluster_capacity(client))

    def limit() -> int:
        bound = in_flight_limit(capacity(), unit_bytes)
        if not said or said[-1] != bound:
            log.info("%s: up to %d in flight (%d in all)", what, bound, len(units))
            said.append(bound)
        return bound

    run_in_flight(client, units, submit, finished, limit, submit_many=submit_many)
