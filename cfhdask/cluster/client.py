"""One :class:`distributed.Client` for a whole command: attached, embedded or batch."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from distributed import Client, get_client

from cfhdask.cluster.local import start_local_cluster
from cfhdask.cluster.tls import client_security
from cfhdask.errors import CfhdaskClusterError, CfhdaskInputError
from cfhdask.settings import ClusterSettings, duration_seconds, resolve, settings

__all__ = ["dask_client"]

log = logging.getLogger(__name__)

#: Signals that stop a run cleanly (worker jobs cancelled) instead of killing it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class _Stop(BaseException):
    """Raised in the main thread by a stop signal or by the job keeper.

    A BaseException, so that no ``except Exception`` on the way swallows it;
    :func:`dask_client` turns it into SystemExit or a CfhdaskClusterError.
    """

    def __init__(self, message: str, signum: int | None):
        super().__init__(message)
        self.message = message
        self.signum = signum


class _Stopper:
    """Stop signals (and :meth:`abort` from another thread) raise :class:`_Stop` in main."""

    def __init__(self) -> None:
        self.active = threading.current_thread() is threading.main_thread()
        self.problem: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Stopper:
        if self.active:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.problem is not None:
            raise _Stop(self.problem, None)
        raise _Stop(f"stopped by {signal.Signals(signum).name}", signum)

    def abort(self, problem: str) -> None:
        """Stop the main thread with ``problem`` (called from the keeper's thread)."""
        self.problem = problem
        if self.active:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
        else:  # pragma: no cover - not in the main thread: no signal to interrupt it
            log.error("%s", problem)

    def quiet(self) -> None:
        """Ignore further stop signals (while the cluster is being closed)."""
        if self.active:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)

    def __exit__(self, *exc) -> None:
        if self.active:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


def _attach(cfg: ClusterSettings, timeout: str) -> Client:
    address = cfg.scheduler
    if cfg.scheduler_file:
        if not os.path.exists(cfg.scheduler_file):
            raise CfhdaskInputError(f"--scheduler-file: no such file: {cfg.scheduler_file}")
        import json

        try:
            with open(cfg.scheduler_file) as f:
                address = json.load(f).get("address")
        except (OSError, ValueError, AttributeError) as exc:
            raise CfhdaskInputError(f"--scheduler-file {cfg.scheduler_file}: not a scheduler "
                                    f"file: {exc}") from None
    where = cfg.scheduler or cfg.scheduler_file
    security = client_security(cfg, address)
    try:
        client = Client(address=cfg.scheduler, scheduler_file=cfg.scheduler_file,
                        timeout=timeout, security=security)
    except (OSError, TimeoutError) as exc:
        raise CfhdaskInputError(f"could not reach the Dask scheduler at {where}: "
                                f"{exc}") from None
    except ValueError as exc:  # not an address, or a tcp:// client to a TLS-only scheduler
        raise CfhdaskInputError(
            f"--scheduler {where}: not a Dask scheduler address, or not one this client can "
            f"speak to ({exc}); give e.g. tcp://head-node:8786 (tls:// with --tls-ca-file, "
            f"--tls-cert and --tls-key for a TLS scheduler)") from None
    log.info("Attached to Dask scheduler %s; dashboard %s", client.scheduler.address,
             client.dashboard_link)
    return client


def _wait_attached(client: Client, cfg: ClusterSettings) -> None:
    n = cfg.wait_workers or 0
    if n <= 0:
        return
    timeout = duration_seconds(cfg.wait_timeout)
    log.info("Waiting for %d Dask worker(s) (up to %s)", n, cfg.wait_timeout)
    try:
        client.wait_for_workers(n, timeout=timeout)
    except TimeoutError:
        have = len(client.nthreads())
        raise CfhdaskClusterError(
            f"only {have} of {n} Dask workers joined {client.scheduler.address} in "
            f"{timeout:.0f} s (--wait-workers, cfhdask.cluster.wait_timeout)") from None


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    cluster: str | None = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    timeout: str = "20s",
    *,
    config: ClusterSettings | None = None,
    **options: Any,
) -> Iterator[Client]:
    """A :class:`distributed.Client` for the duration of a ``with`` block.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``, ``tls://host:8786``).
    scheduler_file : str, optional
        Scheduler file written by ``dask scheduler --scheduler-file``.
    cluster : {"local", "slurm", "pbs", "kubernetes"}, optional
        Kind of cluster to start when no scheduler is given (default local).
    n_workers, threads_per_worker : int, optional
        Size of an embedded LocalCluster.
    timeout : str
        How long to wait for an existing scheduler to answer.
    config : ClusterSettings, optional
        The cluster settings the arguments apply to (default
        ``cfhdask.cluster`` of :func:`cfhdask.settings.settings`; a study's
        ``cluster`` section).
    **options
        Other fields of :class:`~cfhdask.settings.ClusterSettings`:
        ``wait_workers``, ``wait_timeout``, ``tls_ca_file``, ``tls_cert``, ``tls_key``...

    Yields
    ------
    distributed.Client
        The client; clusters started here are closed on exit (their pending and
        running jobs cancelled, also on SIGTERM), attached ones are left running.

    Raises
    ------
    CfhdaskInputError
        Bad options, an unreachable scheduler, a job the batch system refuses.
    CfhdaskClusterError
        Workers that cannot start or are all gone (the reason is in the message).
    """
    if scheduler and scheduler_file:
        raise CfhdaskInputError("give either --scheduler or --scheduler-file, not both")
    given = {"scheduler": scheduler, "scheduler_file": scheduler_file, "kind": cluster,
             "n_workers": n_workers, "threads_per_worker": threads_per_worker, **options}
    base = config if config is not None else settings().cluster
    if scheduler or scheduler_file:  # an explicit attachment replaces a configured one
        base = base.model_copy(update={"scheduler": None, "scheduler_file": None})
    cfg = resolve("cluster", given, base=base)
    if cfg.scheduler or cfg.scheduler_file:
        client = _attach(cfg, timeout)
        try:
            _wait_attached(client, cfg)
            yield client
        finally:
            client.close()
        return
    if cfg.kind == "local":
        try:
            existing = get_client()
        except ValueError:
            existing = None
        sized = n_workers if config is None else (n_workers or config.n_workers)
        if existing is not None and sized is None:
            log.info("Using the existing Dask client %s", existing)
            yield existing
            return
        lc = start_local_cluster(cfg.n_workers, cfg.threads_per_worker, config=cfg)
        try:
            with Client(lc) as client:
                yield client
        finally:
            _close_quietly(lc)
        return
    with _batch_client(cfg) as client:
        yield client


@contextlib.contextmanager
def _batch_client(cfg: ClusterSettings) -> Iterator[Client]:
    """A SLURM/PBS/Kubernetes cluster, its client, and the keeper of its workers."""
    from cfhdask.cluster import batch

    if cfg.kind not in ("slurm", "pbs", "kubernetes"):
        raise CfhdaskInputError(f"--cluster: unknown kind {cfg.kind!r} "
                                "(local, slurm, pbs, kubernetes)")
    n_wait = 1 if cfg.wait_workers is None else cfg.wait_workers
    lc = keeper = client = None
    with _Stopper() as stopper:
        try:
            if cfg.kind == "kubernetes":
                lc = batch.start_kubernetes(cfg.kubernetes)
                client = Client(lc)
                batch.wait_for_pods(client, n_wait, duration_seconds(cfg.wait_timeout),
                                    cfg.kubernetes.image)
            else:
                lc, keeper = batch.start_jobqueue(cfg.kind, cfg)
                client = Client(lc)
                keeper.wait(n_wait)
                keeper.watch(stopper.abort)
            log.info("%s cluster ready; dashboard %s", cfg.kind.upper(), lc.dashboard_link)
            yield client
        except _Stop as exc:
            stopper.quiet()
            if exc.signum is None:
                raise CfhdaskClusterError(exc.message) from None
            log.warning("%s: closing the cluster (worker jobs cancelled); finished work is "
                        "kept", exc.message)
            raise SystemExit(128 + exc.signum) from None
        finally:
            stopper.quiet()
            if keeper is not None:
                keeper.stop()
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
            if lc is not None:
                _close_quietly(lc)


def _close_quietly(cluster) -> None:
    """Close a cluster cfhdask started (a batch one cancels every job it submitted).

    A slow or failing close (workers still busy closing their connections) is a
    warning: it must neither hide the real error nor fail finished work.
    """
    try:
        cluster.close(timeout=60)
    except Exception as exc:  # TimeoutError included
        log.warning("closing the %s: %s", type(cluster).__name__,
                    str(exc) or type(exc).__name__)
