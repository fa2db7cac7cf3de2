"""Permutations survive the loss of the workers holding their scattered data (kill -9).

Real LocalCluster (nanny processes restart the killed workers); the result is
compared with the in-process computation, bit for bit.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from faulthelpers import LogEvent, kill_workers, wait_until
from scipy import ndimage

from cfhdask.errors import CfhdaskError
from cfhdask.stats import fanout
from cfhdask.stats.clusters import voxel_graph
from cfhdask.stats.glm import prepare_glm
from cfhdask.stats.null import NullSettings
from cfhdask.stats.permute import make_schedule

#: Each test waits for nannies to restart killed workers (tens of seconds on 2 cores).
pytestmark = pytest.mark.slow

SHAPE = (12, 12, 10)
N_PERM = 128
BATCH = 16


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(3)
    n = 24
    ijk = np.argwhere(np.ones(SHAPE, bool))
    x = np.r_[np.ones(n // 2), np.zeros(n - n // 2)]
    Z = np.column_stack([np.ones(n), rng.normal(size=n)])
    Y = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0).ravel()
                  for _ in range(n)])
    prep = prepare_glm(Y, x, Z)
    graph = voxel_graph(ijk, SHAPE, 26)
    schedule = make_schedule(x, N_PERM, seed=11)
    settings = NullSettings(scheme="freedman-lane", t_threshold=2.0, tfce_dh=0.1)
    ref = fanout.null_maxima_local(prep, graph, schedule, settings, BATCH)
    return prep, graph, schedule, settings, ref


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as lc, Client(lc) as client:
        yield client


def _run_and_kill(client, problem):
    """Run the permutations in a thread; kill -9 every worker once some batches finished."""
    prep, graph, schedule, settings, _ = problem
    box: dict = {}

    def target():
        try:
            box["out"] = fanout.null_maxima_dask(client, prep, graph, schedule, settings,
                                                 BATCH)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc

    with LogEvent("cfhdask.stats.fanout", "permutations: ") as ev:
        thread = threading.Thread(target=target)
        thread.start()
        wait_until(lambda: any(" / " in m for m in ev.messages) or not thread.is_alive(),
                   120, "the first finished batches")
        assert thread.is_alive(), "every batch finished before the kill"
        kill_workers(client)  # every worker holding the scattered data
        thread.join(240)
    assert not thread.is_alive()
    return box, ev.messages


def test_killed_workers_keep_finished_batches_and_same_result(cluster, problem):
    box, messages = _run_and_kill(cluster, problem)
    assert "exc" not in box, box.get("exc")
    np.testing.assert_array_equal(box["out"], problem[-1])
    lost = [m for m in messages if "were lost" in m]
    assert lost and "kept" in lost[0]
    unfinished = int(re.search(r"the (\d+) unfinished", lost[0]).group(1))
    assert unfinished < N_PERM // BATCH  # finished batches were not resubmitted


def test_lost_data_beyond_retries_is_one_clear_error(cluster, problem, monkeypatch):
    cluster.wait_for_workers(2, timeout=120)
    monkeypatch.setattr(fanout, "MAX_RESCATTERS", 0)
    box, _ = _run_and_kill(cluster, problem)
    exc = box.get("exc")
    assert isinstance(exc, CfhdaskError), exc
    msg = str(exc)
    assert "\n" not in msg and "FutureCancelledError" not in msg
    assert "workers holding the data were lost" in msg and f"of {N_PERM // BATCH} batches" in msg
