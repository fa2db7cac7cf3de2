"""Attaching to a remote scheduler over TLS: a real ``dask scheduler`` and ``dask worker``.

Certificates are made here (a CA signing the scheduler's, the workers' and the
client's); everything listens on 127.0.0.1.  Dask's TLS is mutual: the client
checks the scheduler against the CA and presents its own certificate.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from clusterhelpers import assert_same_cfh, assert_same_stats, cli_env, run_cli
from tlscerts import make_pki

from cfhdask.cluster import dask_client
from cfhdask.errors import CfhdaskInputError

DASK = str(Path(sys.executable).with_name("dask"))


def _tls_args(pki, role: str) -> list[str]:
    return ["--tls-ca-file", pki["ca"][0], "--tls-cert", pki[role][0], "--tls-key",
            pki[role][1]]


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A TLS-only scheduler and 2 single-threaded workers on 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    pki = make_pki(folder / "pki")
    sched_file = folder / "scheduler.json"
    env = cli_env({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    logs = [open(folder / f"{name}.log", "w") for name in ("scheduler", "worker")]
    procs = [subprocess.Popen(
        [DASK, "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(sched_file), *_tls_args(pki, "scheduler")],
        stdout=logs[0], stderr=subprocess.STDOUT, env=env)]
    try:
        deadline = time.monotonic() + 60
        while not (sched_file.exists() and sched_file.stat().st_size) and \
                time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tls://127.0.0.1:")
        procs.append(subprocess.Popen(
            [DASK, "worker", address, "--host", "127.0.0.1", "--nworkers", "2", "--nthreads",
             "1", "--no-dashboard", *_tls_args(pki, "worker")],
            stdout=logs[1], stderr=subprocess.STDOUT, env=env))
        with dask_client(scheduler=address, tls_ca_file=pki["ca"][0], tls_cert=pki["client"][0],
                         tls_key=pki["client"][1], wait_workers=2, wait_timeout="60s"):
            pass
        yield SimpleNamespace(address=address, pki=pki, scheduler_file=str(sched_file),
                              port=address.rsplit(":", 1)[1])
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for f in logs:
            f.close()


def test_cfh_and_stats_attach_over_tls(tls_cluster, tiny_store, tmp_path):
    store = tmp_path / "cohort.zarr"
    shutil.copytree(tiny_store.store, store)
    tls = _tls_args(tls_cluster.pki, "client")
    proc = run_cli("cfh", store, "--overwrite", "--no-progress", "--scheduler",
                   tls_cluster.address, *tls)
    assert proc.returncode == 0, proc.stderr
    assert f"Attached to Dask scheduler {tls_cluster.address}" in proc.stderr
    assert "subjects computed: 8" in proc.stdout
    assert_same_cfh(store, tiny_store.store)
    # the same certificates from the Dask config (environment), through a scheduler file
    env = {"DASK_CFHDASK__CLUSTER__TLS_CA_FILE": tls_cluster.pki["ca"][0],
           "DASK_CFHDASK__CLUSTER__TLS_CERT": tls_cluster.pki["client"][0],
           "DASK_CFHDASK__CLUSTER__TLS_KEY": tls_cluster.pki["client"][1]}
    proc = run_cli("stats", store, "--participants", tiny_store.participants, "--group", "group",
                   "--covariates", "age,sex", "--n-perm", "40", "--seed", "1", "--out",
                   tmp_path / "stats", "--scheduler-file", tls_cluster.scheduler_file, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"Attached to Dask scheduler {tls_cluster.address}" in proc.stderr
    assert_same_stats(tmp_path / "stats", tiny_store.stats_dir)


def test_tls_problems_are_one_line_errors(tls_cluster, tiny_store, tmp_path):
    other = make_pki(tmp_path / "other", ca_name="another CA")
    cases = [
        ([], "a tls:// scheduler needs --tls-ca-file"),
        (_tls_args(other, "client"), f"could not reach the Dask scheduler at "
                                     f"{tls_cluster.address}"),  # not signed by its CA
        (["--tls-ca-file", tls_cluster.pki["ca"][0], "--tls-cert", str(tmp_path / "no.pem")],
         "--tls-cert: no such file"),
        (["--tls-ca-file", tls_cluster.pki["ca"][0]], "a TLS connection needs both the CA certificate"),
    ]
    store = tmp_path / "cohort.zarr"
    shutil.copytree(tiny_store.store, store)
    for args, message in cases:
        proc = run_cli("cfh", store, "--overwrite", "--no-progress", "--scheduler",
                       tls_cluster.address, *args, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    # a plain tcp:// client is not let in
    with pytest.raises(CfhdaskInputError, match="could not reach the Dask scheduler"):
        with dask_client(scheduler=f"tcp://127.0.0.1:{tls_cluster.port}", timeout="3s"):
            pass


def test_api_client_over_tls(tls_cluster):
    pki = tls_cluster.pki
    with dask_client(scheduler=tls_cluster.address, tls_ca_file=pki["ca"][0],
                     tls_cert=pki["client"][0], tls_key=pki["client"][1]) as client:
        assert client.scheduler.address == tls_cluster.address
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert len(client.nthreads()) == 2
        assert all(a.startswith("tls://127.0.0.1:") for a in client.nthreads())
    assert os.path.exists(tls_cluster.scheduler_file)  # the attached cluster is left running
