"""CFH graph on an attached in-process cluster (distributed.utils_test.gen_cluster).

Kept in its own module: gen_cluster runs its own event loop and must not share
a module with the module-scoped ``local_client`` fixture.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
from cfhref import assert_matches, reference_cfh
from distributed.utils_test import gen_cluster

from cfhdask.cfh.graph import OUTPUTS, cfh_graph, standardize_graph


def _series(rng, nl, nr, t):
    s = rng.standard_normal(t)
    left = rng.standard_normal((nl, t)) + rng.random((nl, 1)) * s
    right = rng.standard_normal((nr, t)) + rng.random((nr, 1)) * s
    right[0] = 1.0
    return left.astype(np.float32), right.astype(np.float32)


def _graph(left, right, block, split_every):
    zl, vl = standardize_graph(da.from_array(left, chunks=(13, -1)), block=block)
    zr, vr = standardize_graph(da.from_array(right, chunks=(13, -1)), block=block)
    return cfh_graph(zl, zr, vl, vr, block=block, split_every=split_every)


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 3)
async def test_same_numbers_on_gen_cluster(c, s, *workers):
    rng = np.random.default_rng(7)
    left, right = _series(rng, 50, 44, 24)
    out = _graph(left, right, block=9, split_every=2)
    futures = c.compute(out)
    res = await futures
    lmax, larg, rmax, rarg, corr = reference_cfh(left, right)
    assert_matches(res["left_rmax"], res["left_arg"], lmax, larg, corr)
    assert_matches(res["right_rmax"], res["right_arg"], rmax, rarg, corr.T)
    assert res["right_arg"][0] == -1 and 0 not in res["left_arg"]
    sync = dask.compute(out, scheduler="sync")[0]
    for k in OUTPUTS:
        np.testing.assert_array_equal(res[k], sync[k])
