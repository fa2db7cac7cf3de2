"""Per-subject maps under faults: a store that cannot be written or is damaged is one line
before any compute; kill -9 of the client mid-``cfh`` leaves no half-written subject for any
reader (``xr.open_datatree`` included), and the rerun finishes the cohort, recomputing no
finished subject, bit-identical to an uninterrupted run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from cfhstore import make_store
from faulthelpers import attached_cluster, immutable, wait_until

from cfhdask.cfh.compute import compute_cfh
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.store import METRICS, CohortStore, open_store


def _cli(*args, tmp_path, **kw):
    env = {**os.environ, "CFHDASK_LOG_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cfhdask", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _one_line(proc) -> str:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    lines = [ln for ln in out.splitlines() if ln.strip() and "details in" not in ln]
    assert len(lines) == 1 and "Traceback" not in out, out
    return lines[0]


@pytest.mark.parametrize("command", ["cfh", "vmhc", "autonomy"])
def test_unwritable_store_is_one_line_before_compute(tmp_path, rng, command):
    st = make_store(tmp_path / "c.zarr", rng)
    with immutable(st.url):
        line = _one_line(_cli(command, st.url, "--n-workers", "1", tmp_path=tmp_path))
        assert f"store {st.url}: cannot be written" in line, line
        assert "Embedded LocalCluster" not in line
    assert open_store(st.url).subjects() == ["sub-01", "sub-02"]
    assert all(open_store(st.url).subjects(m) == [] for m in METRICS)


def test_unwritable_store_api_error_names_the_store(tmp_path, rng):
    st = make_store(tmp_path / "c.zarr", rng)
    with immutable(st.url), pytest.raises(CfhdaskInputError,
                                           match=r"^store .*c\.zarr: cannot be written"):
        compute_cfh(st.url, counterpart="subject", show_progress=False)


def _export_dirs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """--export directories that cannot be used, and the error each gets."""
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "locked").mkdir()
    return {"under a file": (tmp_path / "a-file" / "maps", "cannot be created"),
            "a file": (tmp_path / "a-file", "cannot be created"),
            "in an unwritable directory": (tmp_path / "locked" / "maps", "cannot be created"),
            "unwritable": (tmp_path / "locked", "cannot be written")}


@pytest.mark.parametrize("command", ["cfh", "vmhc", "autonomy"])
@pytest.mark.parametrize("case", ["under a file", "unwritable"])
def test_bad_export_dir_is_one_line_before_any_cluster(tmp_path, rng, command, case):
    st = make_store(tmp_path / "c.zarr", rng)
    bad, error = _export_dirs(tmp_path)[case]
    with immutable(tmp_path / "locked"):  # one line, and no cluster line before it
        line = _one_line(_cli(command, st.url, "--export", str(bad), "--n-workers", "1",
                              tmp_path=tmp_path))
    assert f"--export directory {bad}: {error}" in line, line
    assert all(open_store(st.url).subjects(m) == [] for m in METRICS)  # nothing computed


@pytest.mark.parametrize("case", ["under a file", "a file", "in an unwritable directory",
                                  "unwritable"])
def test_bad_export_dir_api_error_before_compute(tmp_path, rng, case):
    st = make_store(tmp_path / "c.zarr", rng)
    bad, error = _export_dirs(tmp_path)[case]
    with immutable(tmp_path / "locked"), pytest.raises(
            CfhdaskInputError, match=rf"^--export directory {re.escape(str(bad))}: {error}: "
                                     r"\w+Error"):
        compute_cfh(st.url, counterpart="subject", export=str(bad), show_progress=False)
    assert open_store(st.url).subjects("cfh_subject") == []
    assert not (tmp_path / "locked" / "maps").exists()


def test_export_dir_is_created_and_filled(tmp_path, rng, local_client):
    st = make_store(tmp_path / "c.zarr", rng)
    out = tmp_path / "new" / "maps"
    compute_cfh(st.url, counterpart="subject", export=str(out), client=local_client,
                show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == [
        "sub-01_cfh_subject.nii.gz", "sub-01_counterpart_subject.nii.gz",
        "sub-02_cfh_subject.nii.gz", "sub-02_counterpart_subject.nii.gz"]


def test_store_without_subjects_group_is_one_line(tmp_path, rng):
    st = make_store(tmp_path / "c.zarr", rng)
    os.remove(Path(st.url) / "subjects" / "zarr.json")
    line = _one_line(_cli("cfh", st.url, tmp_path=tmp_path))
    assert f"{st.url}/subjects/zarr.json is missing" in line, line


# ----------------------------------------------------------------------------- kill -9
N_SUBJECTS = 12
METRIC = "cfh_subject"


def _cohort(path: Path, rng) -> CohortStore:
    st = make_store(path, rng, lengths=(200,) * N_SUBJECTS, constant=((),) * N_SUBJECTS)
    assert st.voxel_chunk < st.n_voxels  # several chunks an array
    return st


def _raw_maps(url: str) -> dict[str, dict[str, np.ndarray]]:
    """subject -> every array of the metric that ``xr.open_datatree`` shows."""
    tree = xr.open_datatree(url, engine="zarr", consolidated=False, zarr_format=3)
    return {name: {v: np.asarray(node[v].values) for v in METRICS[METRIC] if v in node}
            for name, node in tree["subjects"].children.items()}


def _no_partial_subject(url: str, ref: dict) -> None:
    for subject, maps in _raw_maps(url).items():
        for var, values in maps.items():  # whatever is listed is complete and final
            np.testing.assert_array_equal(values, ref[subject][var], err_msg=f"{subject} {var}")


def _idle(address: str) -> None:
    """Wait until no task runs anywhere (the killed client's last writes finished)."""
    from distributed import Client

    with Client(address, timeout="30s") as c:
        wait_until(lambda: not any(c.processing().values()) and not any(
            c.run(lambda dask_worker: len(dask_worker.state.executing)).values()), 120,
            "an idle cluster")


@pytest.mark.slow
def test_killed_client_mid_cfh_rerun_finishes_without_recomputing(tmp_path, rng):
    st = _cohort(tmp_path / "ref.zarr", rng)
    shutil.copytree(st.url, tmp_path / "run.zarr")
    url = str(tmp_path / "run.zarr")
    cli = ("cfh", url, "--counterpart", "subject", "--block", "8", "--no-progress")
    with attached_cluster(tmp_path / "cluster", n_workers=2) as (address, _):
        from distributed import Client

        with Client(address, timeout="30s") as client:
            compute_cfh(st.url, counterpart="subject", block=8, client=client,
                        show_progress=False)
        ref = _raw_maps(st.url)
        assert len(ref) == N_SUBJECTS and all(len(m) == 3 for m in ref.values())

        proc = _cli(*cli, "--scheduler", address, tmp_path=tmp_path)
        try:
            def some_done() -> bool:
                _no_partial_subject(url, ref)  # checked all along the run
                return bool(open_store(url).subjects(METRIC)) or proc.poll() is not None

            wait_until(some_done, 180, "a first complete subject")
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        _no_partial_subject(url, ref)
        _idle(address)
        _no_partial_subject(url, ref)
        kept = open_store(url).subjects(METRIC)
        assert 0 < len(kept) < N_SUBJECTS, kept
        stamps = {s: (Path(url) / "subjects" / s / METRIC / "zarr.json").stat().st_mtime_ns
                  for s in kept}

        rerun = _cli(*cli, "--scheduler", address, tmp_path=tmp_path)
        out, _ = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, out
    assert f"Skipping {len(kept)} subject(s) with complete {METRIC}" in out, out
    assert f"subjects computed: {N_SUBJECTS - len(kept)}, skipped (complete): {len(kept)}" in out
    assert {s: (Path(url) / "subjects" / s / METRIC / "zarr.json").stat().st_mtime_ns
            for s in kept} == stamps  # finished maps never rewritten
    store = open_store(url)
    assert store.subjects(METRIC) == sorted(ref) and not store.incomplete_subjects()
    assert _raw_maps(url).keys() == ref.keys()
    _no_partial_subject(url, ref)  # and every map is there: bit-identical to the reference
    assert all(len(m) == 3 for m in _raw_maps(url).values())
