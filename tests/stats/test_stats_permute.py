"""Permutation schedules and the Dask fan-out: seeded, exhaustive, worker-independent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from distributed import Client, LocalCluster

from cfhdask.stats.clusters import voxel_graph
from cfhdask.stats.fanout import batch_bounds, null_maxima_dask, null_maxima_local
from cfhdask.stats.glm import prepare_glm
from cfhdask.stats.null import NullSettings
from cfhdask.stats.permute import make_schedule, n_distinct_permutations


def test_random_schedule_identity_first_seeded_and_splittable():
    x = np.r_[np.ones(10), np.zeros(10)]
    s = make_schedule(x, 50, seed=3)
    assert not s.exhaustive and s.n_perm == 50
    full = s.batch(0, 50)
    np.testing.assert_array_equal(full[0], np.arange(20))
    assert all(sorted(p) == list(range(20)) for p in full)
    np.testing.assert_array_equal(np.vstack([s.batch(0, 7), s.batch(7, 50)]), full)
    np.testing.assert_array_equal(make_schedule(x, 50, seed=3).batch(0, 50), full)
    assert not np.array_equal(make_schedule(x, 50, seed=4).batch(1, 50), full[1:])
    assert len({p.tobytes() for p in full}) == 50


def test_exhaustive_draper_stoneman_when_few():
    x = np.r_[np.ones(3), np.zeros(4)]
    assert n_distinct_permutations(x, "draper-stoneman") == math.comb(7, 3)
    s = make_schedule(x, 1000, scheme="draper-stoneman")
    assert s.exhaustive and s.n_perm == 35
    np.testing.assert_array_equal(s.batch(0, 1)[0], np.arange(7))
    labels = {x[p].tobytes() for p in s.batch(0, s.n_perm)}
    assert len(labels) == 35


def test_exhaustive_freedman_lane_when_few():
    x = np.r_[np.ones(2), np.zeros(3)]
    s = make_schedule(x, 500)
    assert s.exhaustive and s.n_perm == 120
    np.testing.assert_array_equal(s.batch(0, 1)[0], np.arange(5))
    assert make_schedule(x, 100).n_perm == 100  # 5! > 100: random


def test_batch_bounds_cover_and_align():
    b = batch_bounds(101, 10)
    assert b[0] == (0, 16) and b[-1][1] == 101
    assert all(s % 8 == 0 for s, _ in b)
    with pytest.raises(ValueError):
        batch_bounds(10, 0)


def _problem(rng):
    shape = (8, 9, 7)
    ijk = np.argwhere(np.ones(shape, bool))
    n = 16
    x = np.r_[np.ones(8), np.zeros(8)]
    Y = rng.normal(size=(n, len(ijk)))
    prep = prepare_glm(Y, x, np.column_stack([np.ones(n), rng.normal(size=n)]))
    graph = voxel_graph(ijk, shape, 18)
    settings = NullSettings(scheme="freedman-lane", t_threshold=1.5, tfce_dh=0.1)
    return prep, graph, make_schedule(x, 60, seed=11), settings


def test_same_null_for_any_workers_and_batch_size(rng, local_client):
    prep, graph, sched, settings = _problem(rng)
    ref = null_maxima_local(prep, graph, sched, settings, batch_size=60)
    assert ref.shape == (60, 2, 4) and (ref[:, :, 1] > 0).any() and (ref[:, :, 3] > 0).all()
    two = null_maxima_dask(local_client, prep, graph, sched, settings, batch_size=8)
    np.testing.assert_array_equal(two, ref)
    assert len(local_client.scheduler_info()["workers"]) == 2
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as lc, Client(lc) as one:
        single = null_maxima_dask(one, prep, graph, sched, settings, batch_size=24)
    np.testing.assert_array_equal(single, ref)
