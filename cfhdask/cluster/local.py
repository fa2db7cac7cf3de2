"""The embedded cluster: a LocalCluster on 127.0.0.1 sized to the machine, BLAS pinned."""

from __future__ import annotations

import logging
import os

import dask
from distributed import LocalCluster

from cfhdask.settings import ClusterSettings, settings

__all__ = ["available_cores", "blas_env", "local_layout", "start_local_cluster",
           "worker_launch_env"]

#: glibc's trim threshold variable; Dask's nanny sets it to 65536 unless told otherwise
TRIM = "MALLOC_TRIM_THRESHOLD_"

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


def _nanny_env(blas_threads: int, cl: ClusterSettings) -> dict[str, str | None]:
    """``distributed.nanny.pre-spawn-environ`` of a worker: BLAS pinned, the trim threshold.

    A ``None`` value unsets the variable (Dask's convention for this setting).
    """
    trim = cl.malloc_trim_threshold
    return {**blas_env(blas_threads), TRIM: None if trim is None else str(trim)}


def worker_launch_env(blas_threads: int = 1,
                      config: ClusterSettings | None = None) -> dict[str, str]:
    """Environment of a ``dask worker`` started outside this process (batch job, pod).

    Its nanny would otherwise apply Dask's default pre-spawn environment
    (``MALLOC_TRIM_THRESHOLD_=65536``): the same worker environment as the
    embedded cluster's, from ``cfhdask.cluster.malloc_trim_threshold``.

    Parameters
    ----------
    blas_threads : int
        BLAS/OpenMP threads of each worker process.
    config : ClusterSettings, optional
        The cluster settings (default: :func:`cfhdask.settings.settings`).
    """
    cl = config or settings().cluster
    trim = cl.malloc_trim_threshold
    env = blas_env(blas_threads)
    if trim is None:  # variables set in the environment win over the config: unset it there
        env["DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"] = f'{{"{TRIM}": None}}'
    else:
        env[TRIM] = str(trim)
    return env


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
    env = _nanny_env(blas, cl)
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
