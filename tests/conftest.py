"""Shared fixtures of the cfhdask test suite."""

from __future__ import annotations

import os
import sys

# Tests run on 2 cores: keep BLAS single-threaded inside the test process so
# Dask threads x BLAS threads never oversubscribe.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

# A plugin may have imported NumPy (and started OpenBLAS) before this file ran, in
# which case the variables above came too late: pin the pools for the whole session.
threadpool_limits(limits=1)


@pytest.fixture(autouse=True, scope="session")
def _cli_logs_in_a_test_folder(tmp_path_factory):
    """Every CLI run writes its debug log to $CFHDASK_LOG_DIR (else the temporary folder):
    the suite's hundreds of runs write theirs under pytest's own temporary folder."""
    if "CFHDASK_LOG_DIR" not in os.environ:
        os.environ["CFHDASK_LOG_DIR"] = str(tmp_path_factory.mktemp("cli-logs"))
    yield


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded random generator (the same stream in every test)."""
    return np.random.default_rng(20241125)


@pytest.fixture(scope="module")
def local_client():
    """A real 2-worker LocalCluster (processes) with its client, shared per module."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        yield client


@pytest.fixture(autouse=True, scope="module")
def _no_stale_distributed_default():
    """After each module, no default scheduler may point at a client that is gone,
    and dask-jobqueue's defaults are still there.

    distributed's ``Client`` sets ``scheduler: dask.distributed`` and restores the
    value it found when it closes; clients closed out of creation order (a CLI's
    client attached to the module's cluster, closed after it) restore a stale
    value, and a later ``dask.compute`` then fails with "no Client active".
    """
    yield
    import dask
    from distributed.client import _get_global_client

    if dask.config.get("scheduler", None) == "dask.distributed" and \
            _get_global_client() is None:
        dask.config.config.pop("scheduler", None)
        dask.config.config.pop("shuffle", None)
    # distributed.utils_test.gen_cluster leaves the global config without the defaults
    # that dask-jobqueue registered when it was imported: put them back
    jq = sys.modules.get("dask_jobqueue")
    if jq is not None and dask.config.get("jobqueue", None) is None:
        with open(os.path.join(os.path.dirname(jq.__file__), "jobqueue.yaml")) as f:
            dask.config.update(dask.config.config, yaml.safe_load(f), priority="old")
