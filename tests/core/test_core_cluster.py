"""The ways cfhdask reaches a Dask cluster, on real schedulers."""

from __future__ import annotations

import time

import dask
import pytest
from distributed import Client, LocalCluster

from cfhdask import cluster as cl
from cfhdask.errors import CfhdaskInputError


def test_local_layout_never_oversubscribes():
    cores = cl.available_cores()
    for n_workers, threads in [(None, None), (1, 1), (2, 1), (1, 2)]:
        w, t, b = cl.local_layout(n_workers, threads)
        assert w >= 1 and t >= 1 and b >= 1
        if w * t <= cores:
            assert w * t * b <= cores


def test_blas_env_pins_every_pool():
    env = cl.blas_env(3)
    assert env == {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}


def test_embedded_cluster_pins_blas_threads_in_workers():
    with cl.dask_client(n_workers=2, threads_per_worker=1) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.scheduler.address.startswith("tcp://127.0.0.1")

        def blas_threads():
            from threadpoolctl import threadpool_info

            return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})

        per_worker = client.run(blas_threads)
        cores = cl.available_cores()
        for threads in per_worker.values():
            assert max(threads) <= max(1, cores // 2)


def _sigint_handler() -> str:
    import signal

    return str(signal.getsignal(signal.SIGINT))


def test_embedded_workers_leave_ctrl_c_to_the_client():
    """The terminal's SIGINT reaches the whole process group: workers, restarted ones
    included, ignore it; the client's own SIGINT handling is left as it was."""
    import os
    import signal

    before = signal.getsignal(signal.SIGINT)  # Python's, or what an earlier test left
    with cl.dask_client(n_workers=1, threads_per_worker=1) as client:
        (pid, handler), = client.run(lambda: (os.getpid(), _sigint_handler())).values()
        assert handler == str(signal.SIG_IGN)
        os.kill(pid, signal.SIGKILL)  # the nanny starts a new worker process
        deadline, now = time.monotonic() + 60, [(pid, "")]
        while now[0][0] == pid and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                now = list(client.run(lambda: (os.getpid(), _sigint_handler())).values())
            except Exception:  # the killed worker, until the scheduler drops it
                continue
            now = now or [(pid, "")]
        assert now[0][0] != pid and now[0][1] == str(signal.SIG_IGN)
    assert signal.getsignal(signal.SIGINT) is before  # the client's handling is untouched


def test_attach_by_address_and_scheduler_file(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None, host="127.0.0.1", protocol="tcp",
                      scheduler_kwargs={"scheduler_file": str(sched_file)}) as lc:
        with cl.dask_client(scheduler=lc.scheduler_address) as client:
            assert client.submit(sum, [1, 2, 3]).result() == 6
        with cl.dask_client(scheduler_file=str(sched_file)) as client:
            assert client.scheduler.address == lc.scheduler_address
        # the attached cluster is left running
        with Client(lc) as c2:
            assert c2.submit(len, "abc").result() == 3


def test_existing_default_client_is_reused():
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as lc, Client(lc) as c:
        with cl.dask_client() as client:
            assert client is c


def test_bad_scheduler_options_are_clear_errors(tmp_path):
    with pytest.raises(CfhdaskInputError, match="either --scheduler or --scheduler-file"):
        with cl.dask_client(scheduler="tcp://127.0.0.1:1", scheduler_file="x.json"):
            pass
    missing = tmp_path / "nope.json"
    with pytest.raises(CfhdaskInputError, match="nope.json"):
        with cl.dask_client(scheduler_file=str(missing)):
            pass
    with pytest.raises(CfhdaskInputError, match="could not reach"):
        with cl.dask_client(scheduler="tcp://127.0.0.1:9", timeout="1s"):
            pass
    with pytest.raises(CfhdaskInputError, match="kind: input should be 'local'"):
        with cl.dask_client(cluster="moon"):
            pass


def test_env_overrides_config(monkeypatch):
    from cfhdask.settings import settings

    monkeypatch.setenv("DASK_CFHDASK__CFH__BLOCK", "123")
    dask.config.refresh()
    try:
        assert settings().cfh.block == 123
    finally:
        monkeypatch.delenv("DASK_CFHDASK__CFH__BLOCK")
        dask.config.refresh()
    assert settings().cfh.block == 4096
