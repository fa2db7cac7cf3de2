"""Cohort-level scheduling (:mod:`cfhdask.cluster.waves`) on a real LocalCluster."""

from __future__ import annotations

import time

import pytest

from cfhdask.cluster.waves import (
    BATCHES_PER_THREAD,
    UNBOUNDED_PER_THREAD,
    Capacity,
    batch_units,
    cluster_batches,
    cluster_capacity,
    in_flight_limit,
    run_waves,
)


def test_in_flight_limit_is_half_the_memory_over_a_unit():
    cap = Capacity(threads=4, memory=8 * 2**30, workers=4)
    assert in_flight_limit(cap, 2**30) == 4  # 4 GiB of 8 for units of 1 GiB
    assert in_flight_limit(cap, 64 * 2**30) == 1  # a unit larger than the cluster: one
    assert in_flight_limit(Capacity(threads=3, memory=0, workers=3), 2**40) == \
        UNBOUNDED_PER_THREAD * 3  # no memory limit: per thread


def test_batch_units_groups_small_items_in_order():
    assert batch_units([1, 1, 1, 1, 1], 2) == [[0, 1], [2, 3], [4]]
    assert batch_units([5, 1, 1, 3], 2) == [[0], [1, 2], [3]]
    assert batch_units([], 2) == []


def test_cluster_batches_cover_the_items_in_order_sized_to_the_threads():
    cap = Capacity(threads=16, memory=0, workers=16)
    batches = cluster_batches(1000, cap)
    assert len(batches) == 16 * BATCHES_PER_THREAD
    assert [i for r in batches for i in r] == list(range(1000))
    assert {len(r) for r in batches} == {15, 16}  # sizes within one
    assert cluster_batches(5, cap) == [range(i, i + 1) for i in range(5)]  # one each
    assert cluster_batches(7, Capacity(threads=1, memory=0, workers=1), per_thread=2) == \
        [range(0, 4), range(4, 7)]
    assert cluster_batches(0, cap) == []


def test_capacity_counts_every_worker(local_client):
    cap = cluster_capacity(local_client)
    assert (cap.workers, cap.threads) == (2, 2) and cap.memory > 0
    addrs = sorted(local_client.scheduler_info(n_workers=-1)["workers"])
    assert cap.nthreads == tuple((a, 1) for a in addrs)


def _slow(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x * x


def test_every_unit_runs_once_never_more_than_the_limit_in_flight(local_client):
    memory = cluster_capacity(local_client).memory
    limit = 3
    units = list(range(12))
    in_flight, peak, results = [0], [0], {}

    def submit(unit):
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        return local_client.submit(_slow, unit, 0.05, pure=False)

    def finished(unit, fut, result):
        in_flight[0] -= 1
        assert unit not in results
        results[unit] = result

    run_waves(local_client, units, submit, finished, unit_bytes=int(memory * 0.5) // limit + 1)
    assert results == {u: u * u for u in units}
    assert 1 < peak[0] <= limit


def test_a_failing_unit_cancels_the_units_in_flight(local_client):
    submitted = []

    def submit(unit):
        fut = local_client.submit(_slow, unit, 0.5 if unit else 0.0, pure=False)
        submitted.append(fut)
        return fut

    def finished(unit, fut, result):
        raise RuntimeError(f"unit {unit} failed")

    with pytest.raises(RuntimeError, match="unit 0 failed"):
        run_waves(local_client, range(6), submit, finished, unit_bytes=1)
    deadline = time.monotonic() + 30
    while any(f.status == "pending" for f in submitted[1:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {f.status for f in submitted[1:]} == {"cancelled"}
