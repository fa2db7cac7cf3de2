"""The group counterpart, autonomy counts and paired correlations as Dask graphs."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from cfhref import (
    ArrayReader,
    CountingScheduler,
    check_group,
    cohort,
    near_threshold,
    ranges,
    raw_graph,
    reference_counts,
    reference_group,
)

from cfhdask.cfh.graph import autonomy_graph, paired_graph, standardize_graph
from cfhdask.cfh.groupsum import group_sum_graph


def _group(series, nl, nr, a_block, b_block, batch, split_every=None, chain=None):
    return group_sum_graph(ArrayReader(series), len(series), ranges(0, nl, a_block),
                           ranges(nl, nl + nr, b_block), batch=batch, split_every=split_every,
                           chain=chain)


def _check_group(res, subjects):
    return check_group(res, subjects, atol=1e-5)


@pytest.mark.parametrize("nl,nr,a_block,b_block,batch,split_every", [
    (37, 29, 10, 7, 2, 2),      # blocks that do not divide, unequal hemispheres, deep trees
    (30, 30, 64, 64, 5, 8),     # a single block, one batch
    (12, 45, 5, 16, 1, 3),      # very unequal, one subject per batch
])
def test_group_counterpart_matches_reference(rng, nl, nr, a_block, b_block, batch,
                                             split_every):
    # subjects of different lengths; voxel 3 constant in subject 1 only, right voxel 0 in all
    series, subjects = cohort(rng, nl, nr, (25, 40, 31, 52, 18),
                              constant=[(1, 3)] + [(s, nl) for s in range(5)])
    res = dask.compute(_group(series, nl, nr, a_block, b_block, batch, split_every),
                       scheduler="sync")[0]
    larg, rarg = _check_group(res, subjects)
    assert res["right_arg"][0] == -1 and 0 not in res["left_arg"]  # right 0: never valid
    assert res["left_arg"][3] >= 0  # valid in the other subjects: still has a counterpart
    assert res["left_valid"].all() and not res["right_valid"][0]
    assert res["left_arg"].dtype == np.int64 and res["left_sum"].dtype == np.float32


def test_group_counterpart_independent_of_batch_order_and_workers(rng, local_client):
    nl, nr = 41, 35
    series, subjects = cohort(rng, nl, nr, (30, 44, 27, 38, 35, 29, 50))
    base = dask.compute(_group(series, nl, nr, 9, 12, 3), scheduler="sync")[0]
    larg, rarg, s, _, _ = reference_group(subjects)
    srt = np.sort(s, axis=1)
    clear = srt[:, -1] - srt[:, -2] > 1e-5  # no near-tie: the counterpart must be identical
    for batch, chain in ((1, 1), (1, 3), (2, 2), (7, 4)):  # tree only, chains, one batch
        other = dask.compute(_group(series, nl, nr, 9, 12, batch, chain=chain),
                             scheduler="sync")[0]
        np.testing.assert_array_equal(other["left_arg"][clear], base["left_arg"][clear])
        np.testing.assert_allclose(other["left_sum"], base["left_sum"], atol=2e-5)
    order = [4, 0, 6, 2, 1, 5, 3]
    shuffled = dask.compute(_group([series[k] for k in order], nl, nr, 9, 12, 3),
                            scheduler="sync")[0]
    np.testing.assert_array_equal(shuffled["left_arg"][clear], base["left_arg"][clear])
    np.testing.assert_array_equal(shuffled["right_arg"], base["right_arg"])
    threads = dask.compute(_group(series, nl, nr, 9, 12, 3), scheduler="threads",
                           num_workers=3)[0]
    cluster = local_client.compute(_group(series, nl, nr, 9, 12, 3), sync=True)
    for k in ("left_arg", "right_arg", "left_sum", "right_sum"):
        np.testing.assert_array_equal(threads[k], base[k])
        np.testing.assert_array_equal(cluster[k], base[k])
    _check_group(cluster, subjects)


def test_group_graph_is_lazy_and_reads_each_series_once(rng):
    nl, nr = 20, 20
    series, subjects = cohort(rng, nl, nr, (20, 30, 25, 22, 27))
    reader = ArrayReader(series)
    counter = CountingScheduler()
    with dask.config.set(scheduler=counter):
        out = group_sum_graph(reader, 5, ranges(0, nl, 8), ranges(nl, 2 * nl, 8), batch=2,
                              chain=2)
        assert counter.calls == 0 and reader.reads == 0
    graph = raw_graph(out.values())

    def named(prefix):
        return [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith(prefix)]

    assert len(named("grp-series-")) == (3 + 3) * 3  # (left + right blocks) x batches
    assert len(named("grp-link-")) == 3 * 3 * 3  # (left x right blocks) x batches
    res = dask.compute(out, scheduler="sync")[0]
    assert reader.reads == (3 + 3) * 5  # every block of every subject read once
    _check_group(res, subjects)


@pytest.mark.parametrize("nl,nr,block,split_every", [
    (37, 29, 10, 2),   # blocks that do not divide, unequal hemispheres
    (25, 25, 100, 8),  # a single block per family
    (8, 31, 3, 3),
])
def test_autonomy_counts_match_reference(rng, nl, nr, block, split_every):
    series, subjects = cohort(rng, nl, nr, (45,), constant=[(0, 2), (0, nl + 4)])
    left, right = subjects[0]
    zl, vl = standardize_graph(da.from_array(left, chunks=(11, -1)), block=block)
    zr, vr = standardize_graph(da.from_array(right, chunks=(11, -1)), block=block)
    thr = 0.2
    out = autonomy_graph(zl, zr, vl, vr, threshold=thr, block=block, split_every=split_every)
    res = dask.compute(out, scheduler="sync")[0]
    ref = reference_counts(left, right, thr)
    r = ref["r"]
    near_l = near_threshold(r[:nl], thr)
    near_r = near_threshold(r[nl:], thr)
    for side, near in (("left", near_l), ("right", near_r)):
        valid = ref[f"{side}_valid"]
        for kind in ("ipsi", "contra"):
            got, want = res[f"{side}_{kind}"], ref[f"{side}_{kind}"]
            assert got.dtype == np.int64
            assert np.all(np.abs(got - want)[valid] <= near[valid]), (side, kind)
    assert res["left_ipsi"][2] == 0 and res["right_contra"][4] == 0


def test_paired_graph_matches_reference(rng):
    series, subjects = cohort(rng, 20, 20, (35, 28), constant=[(1, 7)])
    partner = rng.integers(0, 36, 36)
    partner[[0, 5]] = -1
    reader = ArrayReader(series)
    counter = CountingScheduler()
    with dask.config.set(scheduler=counter):
        out = paired_graph(reader, 1, 2, 38, partner, rows=7)  # voxels 2..37 of subject 1
        assert counter.calls == 0 and reader.reads == 0
    res = dask.compute(out, scheduler="sync")[0]
    x = series[1][2:38]
    assert not res["valid"][5] and res["valid"].sum() == 35
    for v in range(36):
        p = partner[v]
        if p < 0 or 5 in (v, p):
            assert np.isnan(res["r"][v])
        else:
            assert res["r"][v] == pytest.approx(np.corrcoef(x[v], x[p])[0, 1], abs=1e-5)


@pytest.mark.parametrize("a_block,b_block,chain,fraction", [
    (8, 10, 2, 1e-12),  # memory for nothing: one block per row strip, one lane at a time
    (8, 10, 2, 0.5),    # one strip
    (40, 40, 1, 0.5),   # one block pair: four lanes at once (two per worker thread)
])
def test_streamed_group_sum_equals_the_lazy_graph(rng, local_client, a_block, b_block, chain,
                                                  fraction):
    from cfhdask.cfh.group import _strips, run_group_sum
    from cfhdask.cfh.groupsum import GroupPlan
    from cfhdask.cluster.waves import cluster_capacity

    nl, nr = 33, 27
    series, subjects = cohort(rng, nl, nr, (30, 44, 27, 38, 35, 29, 50),
                              constant=[(2, 5)] + [(s, nl + 1) for s in range(7)])
    plan = GroupPlan.make(ArrayReader(series), len(series), ranges(0, nl, a_block),
                          ranges(nl, nl + nr, b_block), batch=2, chain=chain, split_every=2)
    cap = cluster_capacity(local_client)
    strips, active = _strips(plan, cap.memory * fraction, 94, cap.threads)
    assert len(strips) == (len(plan.a_ranges) if fraction < 1e-6 else 1)
    assert active == (min(4, len(plan.lanes)) if a_block > nl else 1)
    lazy = dask.compute(_group(series, nl, nr, a_block, b_block, 2, split_every=2,
                               chain=chain), scheduler="sync")[0]
    streamed = run_group_sum(plan, local_client, t_batch=94, memory_fraction=fraction)
    assert set(streamed) == set(lazy)
    for k in lazy:
        np.testing.assert_array_equal(streamed[k], lazy[k], err_msg=k)
    _check_group(streamed, subjects)


def test_worker_parts_share_the_pairs_by_threads():
    from cfhdask.cfh.group import worker_parts

    assert worker_parts([0, 1], 3, [("w0", 1)]) == [(None, [(i, j) for i in (0, 1)
                                                            for j in range(3)])]
    parts = worker_parts(list(range(7)), 7, [("a", 1), ("b", 1)])
    assert [len(p) for _, p in parts] == [24, 25] or [len(p) for _, p in parts] == [25, 24]
    assert sum((p for _, p in parts), []) == [(i, j) for i in range(7) for j in range(7)]
    parts = worker_parts(list(range(4)), 4, [("a", 1), ("b", 3)])
    assert [len(p) for _, p in parts] == [4, 12]


def _transferred(dask_worker):
    return [str(k) for d in dask_worker.transfer_incoming_log for k in d.get("keys", ())]


def test_series_owners_compute_each_block_once_and_balance_threads():
    from cfhdask.cfh.group import series_owners, worker_parts

    parts = worker_parts(list(range(4)), 5, [("a", 1), ("b", 1)])
    owners = series_owners(parts)
    assert sorted(owners) == [("a", i) for i in range(4)] + [("b", j) for j in range(5)]
    assert [owners[("a", i)] for i in range(4)] == [0, 0, 1, 1]
    per_worker = [sum(1 for o in owners.values() if o == w) for w in (0, 1)]
    assert sorted(per_worker) == [4, 5]
    parts = worker_parts(list(range(7)), 7, [("a", 1), ("b", 1)])
    split = [sum(1 for i, _ in p if i == 3) for _, p in parts]  # row 3 is cut in two
    assert series_owners(parts)[("a", 3)] == int(np.argmax(split)) and min(split) > 0
    parts = worker_parts(list(range(4)), 4, [("a", 1), ("b", 3)])  # 4 / 12 pairs
    owners = series_owners(parts, [1, 3])
    assert sum(1 for o in owners.values() if o == 1) > sum(1 for o in owners.values() if o == 0)
    assert series_owners(worker_parts([0, 1], 3, [("w", 2)])) == {
        ("a", 0): 0, ("a", 1): 0, ("b", 0): 0, ("b", 1): 0, ("b", 2): 0}


def test_series_owners_spread_the_batches_in_flight_over_the_workers():
    """16 single-threaded workers, 4 x 4 blocks: one pair a worker, 8 series a batch.  The
    load carried from batch to batch puts the next batch's series on other workers; after
    as many batches as it takes, every worker has computed the same number."""
    from cfhdask.cfh.group import series_owners, worker_parts

    parts = worker_parts(list(range(4)), 4, [(f"w{k}", 1) for k in range(16)])
    load = [0] * 16
    first, second = (set(series_owners(parts, None, load).values()) for _ in range(2))
    assert len(first | second) >= 12  # without the carried load: the same 7 workers
    assert set(series_owners(parts).values()) == first
    for _ in range(2):
        series_owners(parts, None, load)
    assert load == [2] * 16


def test_streamed_group_sum_keeps_sums_on_their_worker_and_reads_each_series_once(
        rng, local_client):
    """Each worker multiplies and sums its share of the block pairs from batch to batch:
    no partial sum travels between workers; each series block of a batch is read and
    standardised once, and fetched by the other worker that needs it."""
    from distributed import get_task_stream

    from cfhdask.cfh.group import run_group_sum
    from cfhdask.cfh.groupsum import GroupPlan

    nl, nr = 40, 36
    series, subjects = cohort(rng, nl, nr, (30, 44, 27, 38, 35, 29))
    plan = GroupPlan.make(ArrayReader(series), len(series), ranges(0, nl, 10),
                          ranges(nl, nl + nr, 9), batch=2, chain=3, split_every=2)
    local_client.run(lambda dask_worker: dask_worker.transfer_incoming_log.clear())
    with get_task_stream(local_client) as ts:
        res = run_group_sum(plan, local_client, t_batch=100, memory_fraction=0.5)
    moved = sum(local_client.run(_transferred).values(), [])
    assert not [k for k in moved if "grp-link-" in k], moved
    computed = [str(d["key"]) for d in ts.data if "grp-series-" in str(d["key"])]
    n_series = len(plan.batches) * (len(plan.a_ranges) + len(plan.b_ranges))
    assert len(computed) == len(set(computed)) == n_series
    fetched = [k for k in moved if "grp-series-" in k]
    assert len(fetched) == len(set(fetched)) <= n_series
    _check_group(res, subjects)


def test_streamed_group_sum_sends_each_batch_as_one_graph(rng, local_client):
    """One update-graph message a batch, not one per worker and kind: on a busy scheduler
    each costs tens of ms, and the next batch's series waited behind them.  Series tasks
    run before links, and every link is restricted to its worker."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    from cfhdask.cfh.group import run_group_sum
    from cfhdask.cfh.groupsum import GroupPlan

    class Graphs(SchedulerPlugin):
        name = "count-update-graph"

        def __init__(self):
            self.calls = []

        def update_graph(self, scheduler, *, tasks, annotations, priority, **kwargs):
            self.calls.append((list(tasks), annotations, priority))

    nl, nr = 40, 36
    series, subjects = cohort(rng, nl, nr, (30, 44, 27, 38, 35, 29))
    plan = GroupPlan.make(ArrayReader(series), len(series), ranges(0, nl, 10),
                          ranges(nl, nl + nr, 9), batch=2, chain=3, split_every=2)
    plugin = Graphs()
    scheduler = local_client.cluster.scheduler
    scheduler.add_plugin(plugin)
    try:
        res = run_group_sum(plan, local_client, t_batch=100, memory_fraction=0.5)
    finally:
        scheduler.remove_plugin(plugin.name)
    batches = [c for c in plugin.calls if any("grp-series-" in str(k) for k in c[0])]
    assert len(batches) == len(plan.batches)
    for tasks, annots, priority in batches:
        series_keys = [k for k in tasks if "grp-series-" in str(k)]
        q = series_keys[0][-1]  # the batch (its tasks also name the last batch's links)
        links = [k for k in tasks if "grp-link-" in str(k) and k[-1] == q]
        assert len(links) == len(plan.a_ranges) * len(plan.b_ranges)
        assert len(series_keys) == len(plan.a_ranges) + len(plan.b_ranges)
        assert all(len(annots["workers"][k]) == 1 for k in links)
        assert max(priority[k] for k in series_keys) < min(priority[k] for k in links)
    _check_group(res, subjects)
