"""The CFH Dask graph: equal to the float64 reference, lazy, the same on every scheduler."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from cfhref import CountingScheduler, assert_matches, raw_graph, reference_cfh

from cfhdask.cfh.graph import OUTPUTS, cfh_graph, standardize_graph
from cfhdask.errors import CfhdaskInputError


def _series(rng, nl, nr, t, constant_left=(), constant_right=()):
    # a shared signal makes correlations strong and argmaxes well separated
    s = rng.standard_normal(t)
    left = rng.standard_normal((nl, t)) + rng.random((nl, 1)) * s
    right = rng.standard_normal((nr, t)) + rng.random((nr, 1)) * s
    left[list(constant_left)] = 2.5
    right[list(constant_right)] = 0.0
    return left.astype(np.float32), right.astype(np.float32)


def _graph(left, right, block, split_every=None, std_block=None):
    zl, vl = standardize_graph(da.from_array(left, chunks=(13, -1)), block=std_block or block)
    zr, vr = standardize_graph(da.from_array(right, chunks=(13, -1)), block=std_block or block)
    return cfh_graph(zl, zr, vl, vr, block=block, split_every=split_every)


def _check(res, left, right):
    lmax, larg, rmax, rarg, c = reference_cfh(left, right)
    assert_matches(res["left_rmax"], res["left_arg"], lmax, larg, c)
    assert_matches(res["right_rmax"], res["right_arg"], rmax, rarg, c.T)


@pytest.mark.parametrize(
    "nl,nr,block,split_every",
    [
        (60, 60, 16, 2),     # several blocks, fan-in 2: a deep tree
        (61, 47, 10, 3),     # blocks do not divide the counts, unequal hemispheres
        (61, 47, 7, None),   # default fan-in
        (50, 20, 500, 8),    # a single block
        (9, 130, 4, 4),      # very unequal
    ],
)
def test_graph_matches_reference(rng, nl, nr, block, split_every):
    left, right = _series(rng, nl, nr, 40, constant_left=[0, nl - 1], constant_right=[3])
    out = _graph(left, right, block, split_every)
    assert set(out) == set(OUTPUTS)
    (res,) = dask.compute(out, scheduler="sync")
    _check(res, left, right)
    assert np.isnan(res["left_rmax"][[0, nl - 1]]).all() and res["right_arg"][3] == -1
    assert 0 not in res["right_arg"] and nl - 1 not in res["right_arg"]
    assert 3 not in res["left_arg"]
    assert res["left_arg"].dtype == np.int64 and res["left_rmax"].dtype == np.float32


def test_graph_std_chunks_differ_from_block(rng):
    left, right = _series(rng, 40, 33, 25)
    (res,) = dask.compute(_graph(left, right, block=9, std_block=16), scheduler="sync")
    _check(res, left, right)


def test_graph_on_numpy_inputs_without_masks(rng):
    left, right = _series(rng, 30, 20, 50)
    from cfhdask.cfh.kernels import standardize

    out = cfh_graph(standardize(left)[0], standardize(right)[0], block=8)
    (res,) = dask.compute(out, scheduler="threads")
    _check(res, left, right)


def test_different_series_lengths(rng):
    for t in (12, 33, 200):
        left, right = _series(rng, 21, 17, t)
        (res,) = dask.compute(_graph(left, right, block=6), scheduler="sync")
        _check(res, left, right)


def test_graph_building_is_lazy(rng):
    left, right = _series(rng, 40, 30, 20)
    counter = CountingScheduler()
    with dask.config.set(scheduler=counter):
        out = _graph(left, right, block=8)
        assert counter.calls == 0
        res = dask.compute(out)[0]
    assert counter.calls == 1
    _check(res, left, right)


def test_each_block_computed_once(rng):
    left, right = _series(rng, 30, 25, 20)
    out = _graph(left, right, block=10)
    graph = raw_graph(out.values())
    blocks = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("cfh-block-")]
    assert len(blocks) == 3 * 3


def test_graph_rejects_bad_input(rng):
    with pytest.raises(CfhdaskInputError, match="length"):
        cfh_graph(np.zeros((3, 5), np.float32), np.zeros((3, 6), np.float32))
    with pytest.raises(CfhdaskInputError, match="left_valid"):
        cfh_graph(np.zeros((3, 5), np.float32), np.zeros((3, 5), np.float32),
                  left_valid=np.ones(4, bool))
    with pytest.raises(CfhdaskInputError, match="split-every"):
        cfh_graph(np.zeros((3, 5), np.float32), np.zeros((3, 5), np.float32), split_every=1)


def test_same_numbers_on_sync_threads_and_local_cluster(rng, local_client):
    left, right = _series(rng, 70, 55, 30, constant_left=[5], constant_right=[54])
    out = _graph(left, right, block=12, split_every=3)
    sync = dask.compute(out, scheduler="sync")[0]
    threads = dask.compute(out, scheduler="threads", num_workers=2)[0]
    cluster = local_client.compute(out, sync=True)
    one_worker_bigger_block = dask.compute(_graph(left, right, block=64), scheduler="sync")[0]
    for other in (threads, cluster):
        for k in OUTPUTS:
            np.testing.assert_array_equal(other[k], sync[k])
    for k in ("left_arg", "right_arg"):
        np.testing.assert_array_equal(one_worker_bigger_block[k], sync[k])
    _check(cluster, left, right)
