"""The one refill loop of cohort work (waves of units, permutation batches) on a real cluster."""

from __future__ import annotations

import time

import pytest

from cfhdask.inflight import run_in_flight


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=2, processes=False,  # in-process comms
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def _slow_square(x: int) -> int:
    time.sleep(0.01 * (x % 3))
    return x * x


def test_bounded_refilled_and_every_item_once(client):
    state = {"in_flight": 0, "peak": 0, "asked": 0, "submitted": 0, "asked_when_all_in": 0}
    results = {}

    def submit(x):
        state["submitted"] += 1
        state["in_flight"] += 1
        state["peak"] = max(state["peak"], state["in_flight"])
        return client.submit(_slow_square, x, pure=False)

    def finished(x, fut, result):
        state["in_flight"] -= 1
        assert x not in results and fut.status == "finished"
        results[x] = result  # gathered with the others that ended with it

    def limit():  # a cluster that grows: 1, 2, 3 ... in flight
        state["asked"] += 1
        state["asked_when_all_in"] += state["submitted"] == 20
        return min(3, state["asked"])

    assert run_in_flight(client, range(20), submit, finished, limit) == []
    assert results == {x: x * x for x in range(20)}
    # asked again at every refill while items wait, never once all are submitted: the
    # first three refills submit 1, 2, 3 and no refill submits more than 3 (tasks that end
    # together are one refill, so how many refills there are depends on the timing)
    assert state["peak"] == 3 and state["asked"] >= 3 + -(-(20 - 6) // 3)
    assert state["asked_when_all_in"] == 0


def test_submit_many_sends_each_refill_in_one_call(client):
    """With ``submit_many``, a refill submits everything it can in one call (one graph),
    with each item's position in the cohort; ``submit`` is not used."""
    calls, results = [], {}

    def submit_many(entries):
        calls.append([pos for pos, _ in entries])
        return client.map(_slow_square, [x for _, x in entries], pure=False)

    def submit(x):
        raise AssertionError("submit_many replaces submit")

    def finished(x, fut, result):
        results[x] = result

    items = list(range(10, 22))
    assert run_in_flight(client, items, submit, finished, lambda: 5,
                         submit_many=submit_many) == []
    assert results == {x: x * x for x in items}
    assert calls[0] == [0, 1, 2, 3, 4]  # the first refill fills every slot at once
    assert sorted(p for c in calls for p in c) == list(range(12))
    assert all(0 < len(c) <= 5 for c in calls) and len(calls) < len(items)


def test_lost_hook_stops_and_returns_the_unfinished_in_order(client):
    seen = []

    def finished(x, fut, result):
        seen.append(x)

    left = run_in_flight(client, list(range(10)), lambda x: client.submit(_slow_square, x,
                                                                          pure=False),
                         finished, lambda: 1, lost=lambda fut: fut.result() == 16)
    assert seen == [0, 1, 2, 3] and left == [4, 5, 6, 7, 8, 9]


def test_a_failure_cancels_what_is_in_flight(client):
    futures = []

    def submit(x):
        futures.append(client.submit(time.sleep, 0.5 if x else 0, pure=False))
        return futures[-1]

    def finished(x, fut, result):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        run_in_flight(client, range(4), submit, finished, lambda: 4)
    time.sleep(0.2)
    assert [f.status for f in futures[1:]] == ["cancelled"] * 3


def test_throttled_reads_at_most_once_per_period(monkeypatch):
    import cfhdask.inflight as inflight

    now = [100.0]
    monkeypatch.setattr(inflight.time, "monotonic", lambda: now[0])
    calls = []
    read = inflight.throttled(lambda: calls.append(now[0]) or len(calls), seconds=1.0)
    assert [read(), read()] == [1, 1]  # the second call is the cached value
    now[0] += 0.99
    assert read() == 1 and calls == [100.0]
    now[0] += 0.01
    assert read() == 2 and calls == [100.0, 101.0]


def test_results_that_ended_together_come_in_one_gather(client, monkeypatch):
    from distributed import wait

    from cfhdask.inflight import _results

    futures = [client.submit(_slow_square, x, pure=False) for x in range(6)]
    wait(futures)
    calls = []
    gather = client.gather
    monkeypatch.setattr(client, "gather", lambda fs, **kw: calls.append(len(fs)) or gather(fs))
    assert _results(client, futures) == {f.key: x * x for x, f in enumerate(futures)}
    assert calls == [6]

    def lost(fs, **kw):
        raise RuntimeError("a result went with its worker")

    monkeypatch.setattr(client, "gather", lost)
    assert _results(client, futures) == {}  # each is then asked on its own
