"""Every worker cfhdask starts gets one environment: BLAS pinned, malloc trimming as set.

Dask's nanny gives its worker processes ``MALLOC_TRIM_THRESHOLD_=65536`` unless told
otherwise; the embedded cluster sets its own pre-spawn environment, so without care a
SLURM/PBS job or a pod would run the same kernels with other allocator settings
(``benchmarks/bench_worker_env.py`` measures what that costs). Real workers here: the
embedded LocalCluster, and ``dask worker`` started by a shell with the job script's
prologue or with the pod's variables.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import dask
import pytest
from distributed import Client, LocalCluster

from cfhdask import cluster as cl
from cfhdask.cluster.batch import jobqueue_kwargs, kubernetes_kwargs
from cfhdask.settings import settings

TRIM = "MALLOC_TRIM_THRESHOLD_"
KEYS = (TRIM, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    return {k: os.environ.get(k) for k in KEYS}


def _probe():
    """A function pickled by value, for a worker that cannot import this module."""
    keys = KEYS
    return lambda: {k: __import__("os").environ.get(k) for k in keys}


def _expected(trim: int | None) -> dict:
    return {TRIM: None if trim is None else str(trim), "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def clean_environ(monkeypatch):
    """No trim variable in this process, and none left behind: a nanny writes its
    pre-spawn environment into the process that runs it."""
    monkeypatch.setenv(TRIM, "placeholder")
    monkeypatch.delenv(TRIM)  # restored (absent) at teardown, whatever a nanny set


@pytest.mark.parametrize("trim", [None, 65536])
def test_embedded_workers_trim_as_set(trim, clean_environ):
    with dask.config.set({"cfhdask.cluster.malloc-trim-threshold": trim}):
        with cl.dask_client(n_workers=1, threads_per_worker=1) as client:
            (env,) = client.run(_env).values()
    assert env == _expected(trim)


def _external_worker_env(command: str, extra_env: dict) -> dict:
    """Environment of a ``dask worker`` started by ``bash -c command`` (+ ``extra_env``)."""
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    with LocalCluster(n_workers=0, processes=False, host="127.0.0.1", protocol="tcp",
                      dashboard_address=None) as lc, Client(lc) as client:
        worker = (f"exec {shlex.quote(sys.executable)} -m distributed.cli.dask_worker "
                  f"{lc.scheduler_address} --nthreads 1 --no-dashboard")
        proc = subprocess.Popen(["bash", "-c", f"{command}\n{worker}"], env={**env, **extra_env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            client.wait_for_workers(1, timeout=60)
            (got,) = client.run(_probe()).values()
        finally:
            proc.terminate()
            proc.wait(30)
    return got


@pytest.mark.parametrize("trim", [None, 65536])
def test_batch_job_and_pod_workers_match_the_embedded_ones(trim, clean_environ):
    with dask.config.set({"cfhdask.cluster.malloc-trim-threshold": trim}):
        prologue = jobqueue_kwargs(kind="slurm")[0]["job_script_prologue"]
        pod_env = kubernetes_kwargs(settings().cluster.kubernetes)["env"]
    assert _external_worker_env("\n".join(prologue), {}) == _expected(trim)
    assert _external_worker_env("true", pod_env) == _expected(trim)


def test_shipped_scripts_keep_the_default_trimming(clean_environ):
    """The sbatch recipe's exports, run by bash, give its workers the default environment."""
    text = (REPO / "deploy" / "slurm" / "cfhdask-slurm.sbatch").read_text()
    exports = [ln for ln in text.splitlines() if ln.startswith("export ")]
    assert _external_worker_env("\n".join(exports), {}) == _expected(None)
    pbs = (REPO / "deploy" / "pbs" / "cfhdask-pbs.sh").read_text()
    assert 'PRE_SPAWN_ENVIRON=\'{\\"MALLOC_TRIM_THRESHOLD_\\": None}\'' in pbs
