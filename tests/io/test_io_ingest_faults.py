"""Ingest under faults: kill -9 of a worker or of the client, a store that cannot be written.

Real clusters only: a LocalCluster whose nannies restart killed workers, and an
attached ``dask scheduler`` + ``dask worker`` cluster for the killed client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from faulthelpers import LogEvent, attached_cluster, immutable, kill_workers, wait_until
from iohelpers import tree_digest

from cfhdask.errors import CfhdaskInputError
from cfhdask.io.store import CohortStore
from cfhdask.prep.ingest import ingest

N_SUBJECTS = 12


@pytest.fixture
def cohort(make_bold, tmp_path):
    return [make_bold(f"in/sub-{i:02d}_task-rest_bold.nii.gz", n_vol=60)[0]
            for i in range(N_SUBJECTS)]


def _same_subjects(a: CohortStore, b: CohortStore, subjects=None) -> None:
    names = a.subjects() if subjects is None else subjects
    assert names and set(names) <= set(b.subjects())
    for s in names:
        np.testing.assert_array_equal(np.asarray(a.bold(s)), np.asarray(b.bold(s)))
        for key in ("tr", "n_volumes", "n_dropped", "preprocessing", "input_shape"):
            assert a.subject_attrs(s)[key] == b.subject_attrs(s)[key], key


@pytest.mark.slow
def test_worker_killed_mid_ingest_same_store(cohort, mask_file, tmp_path):
    from distributed import Client, LocalCluster

    ref = ingest(cohort, str(tmp_path / "ref.zarr"), mask=mask_file)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as lc, Client(lc) as client:
        box: dict = {}

        def target():
            box["store"] = ingest(cohort, str(tmp_path / "run.zarr"), mask=mask_file,
                                  client=client)

        with LogEvent("cfhdask.prep.ingest", "Ingested ") as ev:
            thread = threading.Thread(target=target)
            thread.start()
            assert ev.event.wait(120)
            n_done = sum("Ingested " in m for m in ev.messages)
            kill_workers(client, 1)
            thread.join(240)
    assert n_done < N_SUBJECTS, "ingest finished before the kill"
    assert sorted(box["store"].subjects()) == ref.subjects()
    _same_subjects(ref, box["store"])


def _n_complete(url: str) -> int:
    """Complete subjects in a store being written (0 while it is being created)."""
    try:
        return len(CohortStore.open(url).subjects())
    except CfhdaskInputError:  # being created: a one-line error, never a KeyError
        return 0


def _ingest_cli(*args, log):
    return subprocess.Popen([sys.executable, "-m", "cfhdask", "ingest", "--drop-volumes", "0",
                             *args],
                            stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_idle(address: str) -> None:
    """Until no worker of the cluster at ``address`` executes a task (cancelled ones too)."""
    from distributed import Client

    with Client(address, timeout="30s") as c:
        wait_until(lambda: not any(c.run(lambda dask_worker: len(dask_worker.state.executing))
                                   .values()), 120, "the workers to go idle")


@pytest.mark.slow
def test_killed_client_rerun_keeps_finished_subjects(cohort, mask_file, tmp_path):
    ref = ingest(cohort, str(tmp_path / "ref.zarr"), mask=mask_file)
    out = str(tmp_path / "run.zarr")
    with attached_cluster(tmp_path / "cluster", n_workers=2) as (address, _):
        with open(tmp_path / "first.log", "w") as log:
            proc = _ingest_cli(*cohort, "--out", out, "--mask", mask_file,
                               "--scheduler", address, log=log)
            wait_until(lambda: _n_complete(out) > 0 or proc.poll() is not None, 120,
                       "a first complete subject")
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            _wait_idle(address)  # a batch running at the kill ends its subject, then stops
        kept = CohortStore.open(out).subjects()
        assert 0 < len(kept) < N_SUBJECTS, kept
        before = {s: CohortStore.open(out).subject_attrs(s)["ingested"] for s in kept}
        digest = {k: v for k, v in tree_digest(out).items()
                  if any(k.startswith(f"subjects/{s}/bold/") for s in kept)}
        with open(tmp_path / "second.log", "w") as log:
            rerun = _ingest_cli(*cohort, "--out", out, "--scheduler", address, log=log)
            assert rerun.wait(240) == 0, (tmp_path / "second.log").read_text()
    text = (tmp_path / "second.log").read_text()
    assert f"Skipping {len(kept)} subject(s)" in text
    store = CohortStore.open(out)
    assert store.subjects() == ref.subjects() and not store.incomplete_subjects()
    _same_subjects(ref, store)
    assert {s: store.subject_attrs(s)["ingested"] for s in kept} == before
    now = tree_digest(out)
    assert all(now[k] == v for k, v in digest.items())  # finished work untouched


def test_unwritable_store_is_one_line_before_compute(cohort, mask_file, tmp_path):
    out = tmp_path / "run.zarr"
    ingest(cohort[:1], str(out), mask=mask_file)
    before = tree_digest(out)
    with immutable(out):
        with LogEvent("cfhdask", "Ingested ") as ev, \
                pytest.raises(CfhdaskInputError, match=r"^--out .*run\.zarr: cannot be written"):
            ingest(cohort[1:3], str(out))
        assert not ev.event.is_set()
        res = subprocess.run([sys.executable, "-m", "cfhdask", "ingest", *cohort[1:3], "--out",
                              str(out)], capture_output=True, text=True,
                             env={**os.environ, "CFHDASK_LOG_DIR": str(tmp_path)})
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "details in" not in ln]
    assert len(lines) == 1 and "cannot be written" in lines[0], res.stderr
    assert tree_digest(out) == before


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 320 KiB tmpfs: room for the store and a few subjects, not all."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.mark.slow
def test_full_store_is_a_clear_error_and_keeps_earlier_subjects(cohort, mask_file, tmp_path,
                                                                 small_tmpfs):
    out = str(small_tmpfs / "run.zarr")
    res = subprocess.run([sys.executable, "-m", "cfhdask", "ingest", *cohort, "--out", out,
                          "--mask", mask_file, "--n-workers", "1", "--drop-volumes", "0"], capture_output=True,
                         text=True, env={**os.environ, "CFHDASK_LOG_DIR": str(tmp_path)})
    assert res.returncode in (1, 2), res.stderr
    assert "No space left on device" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    store = CohortStore.open(out)
    assert not store.incomplete_subjects()
    kept = store.subjects()
    assert 0 < len(kept) < N_SUBJECTS
    ref = ingest([c for c in cohort if any(s in c for s in kept)], str(tmp_path / "ref.zarr"),
                 mask=mask_file)
    _same_subjects(ref, store)
