"""Tasks pinned loosely to a worker run on the next worker when every worker has left.

distributed leaves a task restricted with ``allow_other_workers=True`` in
``no-worker`` for good when it became ready while no worker ran (a worker
joining later only wakes tasks allowed on itself); the group sum pins its
links so.  :mod:`cfhdask.cluster.restrictions` wakes them.  Real schedulers:
``gen_cluster`` and an in-process LocalCluster.
"""

from __future__ import annotations

import asyncio
import threading
import time

import dask
import numpy as np
from distributed import Worker
from distributed.utils_test import gen_cluster

from cfhdask.cluster.restrictions import LooseRestrictionsRescue, rescue_loose_restrictions


def _slow_inc(x, seconds):
    time.sleep(seconds)
    return x + 1


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_pinned_task_of_the_last_worker_runs_on_the_next_one(c, s, a):
    await c.register_plugin(LooseRestrictionsRescue())
    fut = c.submit(_slow_inc, 1, 1.0, workers=[a.address], allow_other_workers=True,
                   key="pinned")
    while not a.state.executing:
        await asyncio.sleep(0.01)
    await a.close()  # the only worker leaves while its pinned task runs
    while s.workers:
        await asyncio.sleep(0.01)
    assert s.tasks["pinned"].state == "no-worker"
    async with Worker(s.address, nthreads=1):
        assert await asyncio.wait_for(fut, 20) == 2
    plugin = s.plugins[LooseRestrictionsRescue.name]
    assert plugin.rescued >= 1


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)], timeout=60)
async def test_strict_restrictions_are_left_alone(c, s, a):
    """Only loose restrictions are relaxed: a task that must run on a worker still waits."""
    await c.register_plugin(LooseRestrictionsRescue())
    fut = c.submit(_slow_inc, 1, 0.0, workers=["tcp://127.0.0.1:9"], key="strict")
    while "strict" not in s.tasks or s.tasks["strict"].state != "no-worker":
        await asyncio.sleep(0.01)
    await asyncio.sleep(2.5 * LooseRestrictionsRescue().interval)
    assert s.tasks["strict"].state == "no-worker" and not fut.done()


def test_rescue_is_installed_once(local_client):
    assert rescue_loose_restrictions(local_client)
    assert rescue_loose_restrictions(local_client)
    names = local_client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.plugins))
    assert names.count(LooseRestrictionsRescue.name) == 1


class _SlowReader:
    """An in-memory ``read(k, start, stop)`` that takes ``seconds`` per read."""

    def __init__(self, series, seconds: float):
        self.series = [np.asarray(x, np.float32) for x in series]
        self.seconds = seconds

    def __call__(self, k, start, stop):
        time.sleep(self.seconds)
        return self.series[k][start:stop]


def test_group_sum_survives_every_worker_leaving_mid_run():
    """Both workers leave while the streamed group sum runs (partial sums and pinned links
    lost), new ones join: it completes, bit-identical to the lazy graph."""
    from distributed import Client, LocalCluster

    from cfhdask.cfh.group import run_group_sum
    from cfhdask.cfh.groupsum import GroupPlan, group_sum_graph

    rng = np.random.default_rng(7)
    nl, nr = 30, 26
    series = [rng.standard_normal((nl + nr, t)).astype(np.float32)
              for t in (40, 35, 44, 38, 30, 42, 36, 41)]
    a_ranges = [(0, 10), (10, 20), (20, 30)]
    b_ranges = [(30, 43), (43, 56)]
    reader = _SlowReader(series, 0.05)
    plan = GroupPlan.make(reader, len(series), a_ranges, b_ranges, batch=1, chain=4,
                          split_every=2)
    lazy = dask.compute(group_sum_graph(reader, len(series), a_ranges, b_ranges, batch=1,
                                        chain=4, split_every=2), scheduler="sync")[0]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as lc, Client(lc) as client:
        sched = lc.scheduler
        box: dict = {}

        def target():
            try:
                box["res"] = run_group_sum(plan, client, t_batch=400)
            except BaseException as exc:  # pragma: no cover - shown by the assert below
                box["exc"] = exc

        thread = threading.Thread(target=target)
        thread.start()

        def links_done():
            return sum(1 for k, ts in list(sched.tasks.items())
                       if "grp-link-" in str(k) and ts.state == "memory")

        deadline = time.monotonic() + 60
        while links_done() < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert links_done() >= 4
        lc.scale(0)  # every worker leaves at once
        while sched.workers and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not sched.workers
        stuck = [ts for ts in list(sched.tasks.values())
                 if ts.state == "no-worker" and ts.loose_restrictions]
        assert stuck  # the pinned tasks that distributed alone never runs again
        lc.scale(2)
        thread.join(120)
        assert not thread.is_alive(), "the group sum hangs after its workers left"
        assert "exc" not in box, box.get("exc")
    for k in lazy:
        np.testing.assert_array_equal(box["res"][k], lazy[k], err_msg=k)
