"""Dask clusters: the embedded LocalCluster, an existing scheduler, batch systems.

Every compute entry point of cfhdask takes the same three ways to run:

* nothing given: an embedded :class:`distributed.LocalCluster` bound to
  localhost and sized to the machine, BLAS threads limited so that
  ``workers x threads x BLAS threads <= cores``;
* ``scheduler`` (``tcp://host:8786``) or ``scheduler_file``: attach to a
  cluster that already runs (HPC, Kubernetes, cloud) and leave it running;
* ``cluster="slurm" | "pbs" | "kubernetes"``: start workers through
  dask-jobqueue or dask-kubernetes with the settings in ``cfhdask.yaml``.

When a :class:`distributed.Client` is already the default client (e.g. in a
notebook), it is used as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster, get_client

from cfhdask.errors import CfhdaskInputError
from cfhdask.settings import settings

log = logging.getLogger(__name__)


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def local_layout(
    n_workers: int | None = None, threads_per_worker: int | None = None
) -> tuple[int, int, int]:
    """Workers, threads per worker and BLAS threads for an embedded cluster.

    Parameters
    ----------
    n_workers, threads_per_worker : int, optional
        Requested sizes; ``None`` takes ``cfhdask.cluster.*`` from the config,
        then a default sized to the machine (one single-threaded worker per
        core).

    Returns
    -------
    (n_workers, threads_per_worker, blas_threads)
    """
    cores = available_cores()
    cl = settings().cluster
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
) -> LocalCluster:
    """Start an embedded LocalCluster on localhost, sized to the machine."""
    n_workers, threads, blas = local_layout(n_workers, threads_per_worker)
    cl = settings().cluster
    if processes is None:
        processes = cl.processes
    if dashboard_address == "default":
        dashboard_address = cl.dashboard_address
    env = blas_env(blas)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=processes,
            host="127.0.0.1",
            dashboard_address=dashboard_address,
            memory_limit=cl.memory_limit,
            silence_logs=logging.WARNING,
        )
    log.info(
        "Embedded LocalCluster: %d workers x %d threads, BLAS threads %d; dashboard %s",
        n_workers, threads, blas, cluster.dashboard_link if dashboard_address else "off",
    )
    return cluster


def jobqueue_kwargs() -> tuple[dict, int]:
    """dask-jobqueue cluster keyword arguments and job count from ``cfhdask.cluster.jobqueue``."""
    jq = settings().cluster.jobqueue.model_dump()
    jobs = int(jq.pop("jobs"))
    kwargs = {k: v for k, v in jq.items() if v is not None}
    return kwargs, jobs


def _start_batch_cluster(kind: str):
    """Start a dask-jobqueue (SLURM/PBS) or dask-kubernetes cluster from config."""
    if kind in ("slurm", "pbs"):
        try:
            import dask_jobqueue
        except ImportError as exc:  # pragma: no cover - optional extra
            raise CfhdaskInputError(
                f"--cluster {kind} needs dask-jobqueue: pip install 'cfhdask[hpc]'"
            ) from exc
        kwargs, jobs = jobqueue_kwargs()
        cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
        cluster = cls(**kwargs)
        cluster.scale(jobs=jobs)
        return cluster
    if kind == "kubernetes":
        try:
            from dask_kubernetes.operator import KubeCluster
        except ImportError as exc:  # pragma: no cover - optional extra
            raise CfhdaskInputError(
                "--cluster kubernetes needs dask-kubernetes: pip install 'cfhdask[kubernetes]'"
            ) from exc
        k8s = settings().cluster.kubernetes
        return KubeCluster(name="cfhdask", image=k8s.image, n_workers=k8s.n_workers)
    raise CfhdaskInputError(f"--cluster: unknown kind {kind!r} (local, slurm, pbs, kubernetes)")


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    cluster: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    timeout: str = "20s",
) -> Iterator[Client]:
    """A :class:`distributed.Client` for the duration of a ``with`` block.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``).
    scheduler_file : str, optional
        Scheduler file written by ``dask scheduler --scheduler-file``.
    cluster : {"local", "slurm", "pbs", "kubernetes"}, optional
        Kind of cluster to start when no scheduler is given (default local).
    n_workers, threads_per_worker : int, optional
        Size of an embedded LocalCluster.
    timeout : str
        How long to wait for an existing scheduler to answer.

    Yields
    ------
    distributed.Client
        The client; clusters started here are closed on exit, attached ones
        are left running.
    """
    if scheduler and scheduler_file:
        raise CfhdaskInputError("give either --scheduler or --scheduler-file, not both")
    if scheduler or scheduler_file:
        if scheduler_file and not os.path.exists(scheduler_file):
            raise CfhdaskInputError(f"--scheduler-file: no such file: {scheduler_file}")
        try:
            client = Client(address=scheduler, scheduler_file=scheduler_file, timeout=timeout)
        except ValueError as exc:  # not an address at all
            raise CfhdaskInputError(
                f"--scheduler {scheduler or scheduler_file}: not a Dask scheduler address "
                f"({exc}); give e.g. tcp://head-node:8786") from None
        except (OSError, TimeoutError) as exc:
            raise CfhdaskInputError(
                f"could not reach the Dask scheduler at {scheduler or scheduler_file}: {exc}"
            ) from exc
        log.info("Attached to Dask scheduler %s; dashboard %s",
                 client.scheduler.address, client.dashboard_link)
        try:
            yield client
        finally:
            client.close()
        return
    if cluster in (None, "local"):
        try:
            existing = get_client()
        except ValueError:
            existing = None
        if existing is not None and n_workers is None:
            log.info("Using the existing Dask client %s", existing)
            yield existing
            return
        lc = start_local_cluster(n_workers, threads_per_worker)
    else:
        lc = _start_batch_cluster(cluster)
        log.info("Started %s cluster; dashboard %s", cluster, lc.dashboard_link)
    client = Client(lc)
    try:
        yield client
    finally:
        client.close()
        lc.close()
