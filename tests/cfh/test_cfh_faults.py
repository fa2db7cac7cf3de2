"""CFH under faults: kill -9 of a worker mid-run, the run completes with identical maps."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from cfhstore import bold, make_store
from faulthelpers import LogEvent, kill_workers

from cfhdask.cfh.compute import compute_cfh
from cfhdask.io.store import open_store

#: Waits for a nanny to restart the killed worker (tens of seconds on 2 cores).
pytestmark = pytest.mark.slow

N_SUBJECTS = 16


@pytest.mark.parametrize("counterpart", ["subject", "group"])
def test_worker_killed_mid_cfh_same_maps(tmp_path, rng, counterpart):
    from distributed import Client, LocalCluster

    st = make_store(tmp_path / "ref.zarr", rng)
    for i in range(3, N_SUBJECTS + 1):
        st.write_subject(f"sub-{i:02d}", bold(rng, st.n_voxels, 400), {"tr": 2.0})
    shutil.copytree(tmp_path / "ref.zarr", tmp_path / "run.zarr")
    metric = "cfh" if counterpart == "group" else "cfh_subject"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as lc, Client(lc) as client:
        ref = compute_cfh(st.url, block=8, counterpart=counterpart, show_progress=False,
                          client=client)
        box: dict = {}

        def target():
            box["ds"] = compute_cfh(str(tmp_path / "run.zarr"), block=8,
                                    counterpart=counterpart, show_progress=False,
                                    client=client)

        with LogEvent("cfhdask.cfh.compute", " (1/") as ev:
            thread = threading.Thread(target=target)
            thread.start()
            assert ev.event.wait(180)
            kill_workers(client, 1)
            thread.join(300)
    run = open_store(str(tmp_path / "run.zarr"))
    assert run.subjects(metric) == open_store(st.url).subjects(metric)
    assert len(run.subjects(metric)) == N_SUBJECTS
    for var in ("cfh", "r", "counterpart"):
        np.testing.assert_array_equal(box["ds"][var].values, ref[var].values)
