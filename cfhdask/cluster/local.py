"""The embedded cluster: a LocalCluster on 127.0.0.1 sized to the machine, BLAS pinned."""

from __future__ import annotations

import logging
import os

import dask
from distributed import LocalCluster

from cfhdask.settings import ClusterSettings, settings

__all__ = ["available_cores", "blas_env", "local_layout", "start_local_cluster"]

log = logging.getLogger(__name__)


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def local_layout(
    n_workers: int | None = None, threads_per_worker: int | None = None,
    config: ClusterSettings | None = None,
) -> tuple[int, int, int]:
    """Workers, threads per worker and BLAS threads for an embedded cluster.

    Parameters
    ----------
    n_workers, threads_per_worker : int, optional
        Requested sizes; ``None`` takes ``cfhdask.cluster.*`` from the config,
        then a default sized to the machine (one single-threaded worker per
        core).
    config : ClusterSettings, optional
        The cluster settings (default: :func:`cfhdask.settings.settings`).

    Returns
    -------
    (n_workers, threads_per_worker, blas_threads)
    """
    cores = available_cores()
    cl = config or settings().cluster
    n_workers = n_workers or cl.n_workers or cores
    threads_per_worker = threads_per_worker or cl.threads_per_worker or 1
    blas = cl.blas_threads or max(1, cores // (n_workers * threads_per_worker))
    return int(n_workers), int(threads_per_worker), int(blas)


def blas_env(blas_threads: int) -> dict[str, str]:
    """Environment variables that pin BLAS/OpenMP thread pools."""
    n = str(int(blas_threads))
    return {k: n for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def start_local_cluster(
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool | None = None,
    dashboard_address: str | None = "default",
    config: ClusterSettings | None = None,
) -> LocalCluster:
    """Start an embedded LocalCluster on localhost, sized to the machine.

    Its worker processes ignore SIGINT (:mod:`cfhdask.cluster.nosigint`): a
    Ctrl-C in the terminal interrupts the client only, which cancels its work
    and closes the cluster.
    """
    cl = config or settings().cluster
    n_workers, threads, blas = local_layout(n_workers, threads_per_worker, cl)
    if processes is None:
        processes = cl.processes
    if dashboard_address == "default":
        dashboard_address = cl.dashboard_address
    env = blas_env(blas)
    # worker processes ignore the terminal's Ctrl-C: the client handles it and closes them
    preload = [*dask.config.get("distributed.worker.preload", []),
               *(["cfhdask.cluster.nosigint"] if processes else [])]
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=processes,
            host="127.0.0.1",
            dashboard_address=dashboard_address,
            memory_limit=cl.memory_limit,
            silence_logs=logging.WARNING,
            preload=preload,
        )
    log.info(
        "Embedded LocalCluster: %d workers x %d threads, BLAS threads %d; dashboard %s",
        n_workers, threads, blas, cluster.dashboard_link if dashboard_address else "off",
    )
    return cluster
