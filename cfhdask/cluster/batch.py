"""Worker jobs on SLURM and PBS (dask-jobqueue) and worker pods on Kubernetes.

The scheduler runs in the cfhdask process; each batch job runs
``cfhdask.cluster.jobqueue.processes`` Dask workers of ``cores / processes``
threads, with BLAS pinned to one thread, spilling to node-local scratch.

:class:`JobKeeper` looks after the jobs while cfhdask runs:

* before any compute it waits for the first workers, and stops with a one-line
  error naming the reason when they cannot come: the batch system refuses the
  job (``sbatch --test-only`` is asked first), a job pends on a reason that
  never clears (``PartitionConfig``...), a job ends before its worker joined
  (the last line of its log is quoted), or no worker came within
  ``cfhdask.cluster.wait_timeout``;
* workers leave gracefully before the walltime (``--lifetime`` with a random
  stagger, so their data move to the others first) and every job that ends is
  replaced, so a run outlives any walltime and no finished work is lost.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping

from distributed.core import Status

from cfhdask.cluster.local import worker_launch_env
from cfhdask.errors import CfhdaskClusterError, CfhdaskInputError
from cfhdask.settings import (
    ClusterSettings,
    JobqueueSettings,
    KubernetesSettings,
    duration_seconds,
)

__all__ = ["JOB_NAME", "JobKeeper", "jobqueue_kwargs", "kubernetes_kwargs", "queue_states",
           "scheduler_host", "start_jobqueue", "start_kubernetes", "wait_for_pods"]

log = logging.getLogger(__name__)

#: Name of the worker jobs (``squeue -n cfhdask-worker``).
JOB_NAME = "cfhdask-worker"
SUBMIT = {"slurm": "sbatch", "pbs": "qsub"}
#: Job states in which a job still holds or waits for its allocation.
ACTIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED",
                    "REQUEUE_HOLD", "SIGNALING", "STOPPED"})
#: SLURM reasons a pending job never leaves by itself (squeue(1) JOB REASON CODES).
FATAL_REASONS = frozenset({
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "PartitionDown",
    "PartitionInactive", "BadConstraints", "InvalidAccount", "InvalidQOS",
    "AccountNotAllowed", "QOSNotAllowed", "JobHeldAdmin", "JobHeldUser",
    "DependencyNeverSatisfied", "launch failed requeued held",
})
#: Seconds between two looks at the queue while waiting, and while computing.
WAIT_POLL, KEEP_POLL = 1.0, 5.0
#: Dask's logging configuration in the environment: the CLI sets it to send its
#: embedded workers' records to its own log file (:mod:`cfhdask.cli.logs`).  Batch jobs
#: inherit the submitting environment, so their script unsets it: a worker on another
#: node logs to its job's ``.err`` file, not to a path on the login node.
LOGGING_ENV = "DASK_DISTRIBUTED__LOGGING"


# ----------------------------------------------------------------------------- job options
def _lifetime_args(jq: JobqueueSettings) -> list[str]:
    lifetime = jq.worker_lifetime()
    if lifetime is None:
        return []
    life, stagger = lifetime
    return ["--lifetime", f"{life:.0f}s", "--lifetime-stagger", f"{stagger:.0f}s"]


def jobqueue_kwargs(jq: JobqueueSettings | None = None, kind: str = "slurm",
                    dashboard_address: str | None = "127.0.0.1:0") -> tuple[dict, int]:
    """dask-jobqueue cluster keyword arguments and the number of jobs to keep running.

    Parameters
    ----------
    jq : JobqueueSettings, optional
        Default: ``cfhdask.cluster.jobqueue`` of the settings.
    kind : {"slurm", "pbs"}
    dashboard_address : str, optional
        Where the scheduler's dashboard listens (None: no dashboard).
    """
    if jq is None:
        from cfhdask.settings import settings

        jq = settings().cluster.jobqueue
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in worker_launch_env(1).items())
    kwargs = {
        "cores": jq.cores, "processes": jq.processes, "memory": jq.memory,
        "walltime": jq.walltime, "queue": jq.queue, "account": jq.account,
        "interface": jq.interface, "local_directory": jq.local_directory,
        "log_directory": jq.log_directory, "job_name": JOB_NAME,
        "job_script_prologue": [f"export {exports}", f"unset {LOGGING_ENV}", *jq.prologue],
        "job_extra_directives": list(jq.extra_directives),
        "worker_extra_args": _lifetime_args(jq),
        "scheduler_options": ({"dashboard_address": dashboard_address} if dashboard_address
                              else {"dashboard": False}),
    }
    if jq.walltime is None:  # the queue's default, not dask-jobqueue's
        kwargs["job_directives_skip"] = ["#SBATCH -t" if kind == "slurm" else "walltime="]
    return {k: v for k, v in kwargs.items() if v is not None}, jq.jobs


def _request(jq: JobqueueSettings) -> str:
    return (f"{jq.cores} cores, {jq.memory}, walltime {jq.walltime or 'default'}, queue "
            f"{jq.queue or 'default'}")


def _check_interface(interface: str | None) -> None:
    if not interface:
        return
    import psutil

    names = sorted(psutil.net_if_addrs())
    if interface not in names:
        raise CfhdaskInputError(
            f"cfhdask.cluster.jobqueue.interface: no network interface {interface!r} on this "
            f"host (it has {', '.join(names)})")


def _address_towards(host: str) -> str | None:
    """This host's address on the route to ``host`` (no packet is sent)."""
    try:
        ip = socket.gethostbyname(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((ip, 9))
            return s.getsockname()[0]
    except OSError:
        return None


def scheduler_host(kind: str, jq: JobqueueSettings) -> str | None:
    """Where the scheduler listens when no interface is set: reachable by the compute nodes.

    For SLURM, this host's address on the route to the first node of the
    partition (``sinfo``'s NodeAddr): the login node's cluster-internal address
    on a real cluster, 127.0.0.1 when the node is this machine.  None (Dask's
    default, this host's outward address) when an interface is set, for PBS,
    or when SLURM does not say.
    """
    if jq.interface or kind != "slurm":
        return None
    cmd = ["sinfo", "-h", "-o", "%o", *(["-p", jq.queue] if jq.queue else [])]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    nodes = [a for a in out.stdout.split() if a not in ("", "(null)")]
    return _address_towards(nodes[0].split(",")[0]) if nodes else None


def _job_class(base: type) -> type:
    """``base`` (SLURMJob, PBSJob) recording a refused submission instead of raising it.

    A raised error would only be logged by the event loop (a traceback, then a
    wait on no worker); the keeper turns the record into a one-line error.
    """

    class RecordingJob(base):
        failures: list[str] = []

        async def start(self):
            try:
                await super().start()
            except (RuntimeError, ValueError) as exc:
                type(self).failures.append(_last_error_line(str(exc)))
                self.status = Status.running  # as the cluster expects; there is no job

    RecordingJob.failures = []
    RecordingJob.__name__ = RecordingJob.__qualname__ = f"Cfhdask{base.__name__}"
    return RecordingJob


def _cluster_class(base: type) -> type:
    """``base`` (SLURMCluster, PBSCluster) whose worker jobs never reuse a name.

    distributed's ``SpecCluster.new_worker_spec`` hands out the lowest free
    number, so a replacement job may get the name of the job it replaces; and
    ``distributed.deploy.lost-worker-timeout`` (15 s) after a worker left, the
    cluster closes whatever job has its name when no worker of that name is
    connected: the replacement, if it has not joined yet (seen with 1-minute
    jobs: replacements cancelled 4-7 s after submission).  Here each job gets
    a new number.
    """

    class UniqueNames(base):
        def new_worker_spec(self):
            spec = super().new_worker_spec()
            self._i += 1  # the next job gets a new name, even if this one is freed
            return spec

    UniqueNames.__name__ = UniqueNames.__qualname__ = base.__name__
    return UniqueNames


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failure" in ln.lower()]
    return (errors or lines or ["no message"])[-1]


def _preflight(cluster, kind: str, jq: JobqueueSettings) -> None:
    """Ask SLURM whether it would ever run the worker job (``sbatch --test-only``)."""
    if kind != "slurm":
        return
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="cfhdask-job-") as f:
        f.write(cluster.job_script())
        f.flush()
        try:
            out = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True,
                                 text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise CfhdaskClusterError("--cluster slurm: sbatch --test-only did not answer in "
                                      "2 minutes: is slurmctld up (sinfo)?") from None
    if out.returncode != 0:
        raise CfhdaskInputError(
            f"--cluster slurm: SLURM refuses the worker job ({_request(jq)}): "
            f"{_last_error_line(out.stderr or out.stdout)}; change "
            "cfhdask.cluster.jobqueue.cores/memory/walltime/queue")


def start_jobqueue(kind: str, config: ClusterSettings):
    """Start the scheduler and submit the worker jobs (not waiting for them).

    Returns
    -------
    (dask_jobqueue.JobQueueCluster, JobKeeper)
    """
    try:
        import dask_jobqueue
    except ImportError:  # pragma: no cover - optional extra
        raise CfhdaskInputError(
            f"--cluster {kind} needs dask-jobqueue: pip install 'cfhdask[hpc]'") from None
    jq = config.jobqueue
    _check_interface(jq.interface)
    submit = SUBMIT[kind]
    if shutil.which(submit) is None:
        raise CfhdaskInputError(f"--cluster {kind}: {submit} not found: run cfhdask where "
                                f"{kind.upper()} jobs are submitted (a login node)")
    kwargs, jobs = jobqueue_kwargs(jq, kind, config.dashboard_address)
    host = scheduler_host(kind, jq)
    if host:
        kwargs["scheduler_options"] = {**kwargs["scheduler_options"], "host": host}
        log.info("The scheduler listens on %s, this host's address towards the compute nodes "
                 "(cfhdask.cluster.jobqueue.interface chooses another)", host)
    base = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
    job_cls = _job_class(base.job_cls)
    cluster = _cluster_class(base)(job_cls=job_cls, **kwargs)
    try:
        _preflight(cluster, kind, jq)
        cluster.scale(jobs=jobs)
    except BaseException:
        cluster.close()
        raise
    log.info("%s: %d worker job(s) of %s (%d worker(s) x %d thread(s) each) submitted; "
             "scheduler %s; logs in %s", kind.upper(), jobs, _request(jq), jq.processes,
             jq.threads, cluster.scheduler_address, jq.log_directory or "the job folder")
    return cluster, JobKeeper(cluster, kind, jobs, job_cls,
                              duration_seconds(config.wait_timeout), jq.log_directory,
                              _request(jq))


# ----------------------------------------------------------------------------- queue
def _slurm_states(ids: list[str]) -> dict[str, tuple[str, str]]:
    out = subprocess.run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"],
                         capture_output=True, text=True, timeout=60)
    states = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    return states


def _pbs_states(ids: list[str]) -> dict[str, tuple[str, str]]:
    letters = {"Q": "PENDING", "H": "PENDING", "W": "PENDING", "T": "PENDING",
               "R": "RUNNING", "B": "RUNNING", "S": "SUSPENDED", "E": "COMPLETING"}
    states = {}
    for job_id in ids:
        out = subprocess.run(["qstat", job_id], capture_output=True, text=True, timeout=60)
        rows = [ln.split() for ln in out.stdout.splitlines() if ln.startswith(job_id)]
        if out.returncode == 0 and rows and len(rows[-1]) >= 5:
            letter = rows[-1][4]
            states[job_id] = (letters.get(letter, letter), "held" if letter == "H" else "")
    return states


def queue_states(kind: str, ids: Iterable[str]) -> dict[str, tuple[str, str]] | None:
    """``job id -> (state, reason)`` of the jobs the queue still knows.

    Jobs that ended long enough ago are absent.  None when the queue cannot
    be asked (the command failed or timed out).
    """
    ids = [str(i) for i in ids]
    if not ids:
        return {}
    try:
        return _slurm_states(ids) if kind == "slurm" else _pbs_states(ids)
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------- keeper
def _belongs(worker: str, job_name: str) -> bool:
    return worker == job_name or worker.startswith(f"{job_name}-")


class JobKeeper:
    """Waits for the workers of a dask-jobqueue cluster, replaces ended jobs, names problems.

    Parameters
    ----------
    cluster : dask_jobqueue.JobQueueCluster
    kind : {"slurm", "pbs"}
    jobs : int
        Jobs to keep running.
    job_cls : type
        The cluster's job class (records refused submissions).
    timeout : float
        Seconds without any worker before giving up.
    log_directory : str, optional
        Where the jobs' stderr files are.
    request : str
        The jobs' request, for messages.
    """

    def __init__(self, cluster, kind: str, jobs: int, job_cls: type, timeout: float,
                 log_directory: str | None, request: str = ""):
        self.cluster = cluster
        self.kind = kind
        self.jobs = jobs
        self.job_cls = job_cls
        self.timeout = timeout
        self.log_directory = log_directory
        self.request = request
        self.seen: set[str] = set()
        self.replaced = 0
        self.submitted: set[str] = set()
        self._lost = 0
        self._since = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- looking
    def connected(self) -> set[str]:
        """Names of the workers connected now."""
        info = self.cluster.scheduler_info.get("workers", {})
        return {str(w.get("name")) for w in list(info.values())}

    def _job_ids(self) -> dict[str, str | None]:
        return {str(name): getattr(job, "job_id", None)
                for name, job in list(self.cluster.workers.items())}

    def _stderr_tail(self, job_id: str) -> str:
        if not self.log_directory:
            return ""
        path = os.path.join(self.log_directory, f"{JOB_NAME}-{job_id}.err")
        try:
            with open(path, errors="replace") as f:
                lines = [ln.strip() for ln in f.read().splitlines()[-50:] if ln.strip()]
        except OSError:
            return ""
        return f"; {path}: {_last_error_line(chr(10).join(lines))}" if lines else ""

    def describe(self, states: Mapping[str, tuple[str, str]] | None = None) -> str:
        """The jobs and their states, e.g. ``12 PENDING (Resources), 13 RUNNING``."""
        ids = [j for j in self._job_ids().values() if j]
        if states is None:
            states = queue_states(self.kind, ids) or {}
        parts = []
        for j in ids:
            state, reason = states.get(j, ("ended", ""))
            shown = f" ({reason})" if reason and reason not in ("None", "") else ""
            parts.append(f"{j} {state}{shown}")
        return ", ".join(parts) or "none submitted"

    def poll(self) -> tuple[int, str | None]:
        """One look: ``(workers connected, problem)``; ended jobs are replaced.

        The problem, a sentence, is set when the run cannot go on: the batch
        system refused a job, a job pends on a reason that never clears while
        no worker runs, jobs keep ending before their worker joins, or no
        worker came for ``timeout`` seconds.
        """
        names = self.connected()
        self.seen |= names
        now = time.monotonic()
        if names:
            self._since = now
        if self.job_cls.failures:
            return len(names), (f"{SUBMIT[self.kind]} refused a worker job: "
                                f"{self.job_cls.failures[-1]}")
        ids = self._job_ids()
        self.submitted |= {j for j in ids.values() if j}
        states = queue_states(self.kind, [j for j in ids.values() if j])
        if states is None:  # the queue did not answer: only the timeout applies
            states = {}
            ended: list[str] = []
        else:
            ended = []
            for name, job_id in ids.items():
                if not job_id:
                    continue
                state, reason = states.get(job_id, ("ended", ""))
                if state in ACTIVE:
                    if state == "PENDING" and reason in FATAL_REASONS and not names:
                        return 0, (f"worker job {job_id} cannot start: it pends on "
                                   f"{reason}, which does not clear by itself (scontrol "
                                   f"show job {job_id}; the request is {self.request})")
                    continue
                if not any(_belongs(w, name) for w in self.seen):
                    self._lost += 1
                    if not names or self._lost > 2 * self.jobs:
                        how = "ended" if state == "ended" else f"ended ({state})"
                        return len(names), (f"worker job {job_id} {how} before its Dask "
                                            f"worker joined{self._stderr_tail(job_id)}")
                ended.append(name)
        if ended:
            self._replace(ended)
        if not names and now - self._since > self.timeout:
            return 0, (f"no Dask worker joined in {self.timeout:.0f} s "
                       f"(cfhdask.cluster.wait_timeout); worker jobs: {self.describe(states)}")
        return len(names), None

    def _replace(self, ended: list[str]) -> None:
        log.info("%d worker job(s) ended (lifetime or walltime); submitting %d replacement(s)",
                 len(ended), len(ended))
        self.replaced += len(ended)

        async def replace():
            await self.cluster.scale_down(ended)
            self.cluster.scale(jobs=self.jobs)

        self.cluster.sync(replace)

    # -------------------------------------------------------------- waiting
    def wait(self, n_workers: int) -> None:
        """Block until ``n_workers`` workers are connected.

        Raises
        ------
        CfhdaskClusterError
            The problem :meth:`poll` found.
        """
        last_log = time.monotonic()
        while True:
            count, problem = self.poll()
            if problem:
                raise CfhdaskClusterError(problem)
            if count >= n_workers:
                log.info("%d Dask worker(s) connected", count)
                return
            if time.monotonic() - last_log > 30:
                log.info("Waiting for Dask workers (%d of %d): %s", count, n_workers,
                         self.describe())
                last_log = time.monotonic()
            time.sleep(WAIT_POLL)

    def watch(self, on_problem) -> None:
        """Keep polling in a thread; call ``on_problem(message)`` once, then stop."""

        def run():
            while not self._stop.wait(KEEP_POLL):
                try:
                    _, problem = self.poll()
                except Exception as exc:  # never let the keeper die silently
                    log.warning("cluster keeper: %s", exc)
                    continue
                if problem:
                    on_problem(problem)
                    return

        self._thread = threading.Thread(target=run, name="cfhdask-job-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watching thread."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * KEEP_POLL)


# ----------------------------------------------------------------------------- kubernetes
def _k8s_quantity(memory: str) -> str:
    from dask.utils import parse_bytes

    return f"{int(parse_bytes(memory)) // 2**20}Mi"


def kubernetes_kwargs(k8s: KubernetesSettings) -> dict:
    """Keyword arguments of ``dask_kubernetes.operator.KubeCluster`` from the settings."""
    res = {"cpu": str(k8s.threads), "memory": _k8s_quantity(k8s.memory)}
    return {"name": "cfhdask", "image": k8s.image, "n_workers": k8s.n_workers,
            "resources": {"requests": dict(res), "limits": dict(res)},
            "env": worker_launch_env(1),
            "worker_command": ["dask", "worker", "--nthreads", str(k8s.threads),
                               "--memory-limit", k8s.memory]}


def start_kubernetes(k8s: KubernetesSettings):
    """Create a DaskCluster through the Dask Kubernetes operator."""
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError:  # pragma: no cover - optional extra
        raise CfhdaskInputError("--cluster kubernetes needs dask-kubernetes: pip install "
                                "'cfhdask[kubernetes]'") from None
    try:  # pragma: no cover - needs a Kubernetes cluster with the Dask operator
        return KubeCluster(**kubernetes_kwargs(k8s))
    except Exception as exc:  # no kube config, no operator, no permission...
        raise CfhdaskClusterError(f"--cluster kubernetes: could not create the DaskCluster: "
                                  f"{_last_error_line(str(exc)) or type(exc).__name__}") from None


def wait_for_pods(client, n_workers: int, timeout: float, image: str) -> None:
    """Wait for ``n_workers`` worker pods; a one-line error after ``timeout`` seconds."""
    try:
        client.wait_for_workers(n_workers, timeout=timeout)
    except TimeoutError:
        raise CfhdaskClusterError(
            f"no Dask worker pod joined in {timeout:.0f} s (image {image}): see kubectl get "
            "pods -l dask.org/cluster-name=cfhdask") from None
