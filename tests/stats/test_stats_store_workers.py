"""``stats`` on a store: the workers read the maps; the client holds only small things.

The subjects x voxels matrix is read from the store by the workers (one task
per map and voxel chunk), the GLM is prepared in a worker and the permutation
batches take it from worker memory.  The result is bit for bit the in-process
one (no worker) and that of 2 worker processes, and the client's traced peak
memory is more than two float64 copies of the maps below that of the same
analysis handed the maps as an array (what the client held before).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from cfhdask.stats.inference import group_inference

N_PER_GROUP, BOX = 20, (24, 24, 20)
KW = dict(group="group", groups=["patient", "control"], covariates=["age", "sex"],
          n_perm=48, batch_size=16, tfce=True, cluster_p=0.01, atlases=[])


def _dataset(rng):
    """Smooth-ish maps on a box of the 3 mm grid, a planted effect, a participants table."""
    from scipy import ndimage

    lo = np.array([18, 30, 20])
    ijk = np.argwhere(np.ones(BOX, bool)) + lo
    n = 2 * N_PER_GROUP
    group = np.array(["patient"] * N_PER_GROUP + ["control"] * N_PER_GROUP)
    Y = np.stack([ndimage.gaussian_filter(rng.standard_normal(BOX), 1.0).ravel() * 3
                  for _ in range(n)])
    Y[group == "patient", :200] += 1.5
    table = pd.DataFrame({"participant_id": [f"sub-{i + 1:02d}" for i in range(n)],
                          "group": group, "age": rng.normal(40, 10, n),
                          "sex": rng.choice(["F", "M"], n)})
    return {"Y": Y, "ijk": ijk, "table": table}


@pytest.fixture(scope="module")
def store_and_table(tmp_path_factory, store_writer):
    rng = np.random.default_rng(7)
    ds = _dataset(rng)
    store = store_writer(tmp_path_factory.mktemp("store_workers") / "store.zarr", ds["Y"],
                         ds["ijk"], ds["table"].participant_id, rng)
    return store, ds["table"]


def _arrays(res):
    out = {}
    for name, c in res.contrasts.items():
        for k in ("t", "logp_vox_fwe", "logp_cluster_fwe", "logp_cluster_mass_fwe", "tfce",
                  "logp_tfce_fwe", "cluster_labels"):
            out[f"{name}.{k}"] = getattr(c, k)
        out.update({f"{name}.null.{k}": v for k, v in c.null.items()})
    return out


@pytest.fixture(scope="module")
def local_result(store_and_table):
    import dask

    store, table = store_and_table
    with dask.config.set(scheduler="threads"):
        return group_inference(store, table, compute="local", **KW)


def test_store_maps_read_by_workers_same_bits(store_and_table, local_result, local_client):
    """In-process (no worker) and 2 worker processes: the same bits."""
    store, table = store_and_table
    res = group_inference(store, table, client=local_client, **KW)
    ref, got = _arrays(local_result), _arrays(res)
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert res.params["mask"] == local_result.params["mask"]
    assert len(res.clusters) and res.clusters.equals(local_result.clusters)


def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_client_holds_no_copy_of_the_maps(store_and_table, local_client):
    """Traced client peak: the store path vs the same maps handed over as an array (the
    old path: the client held them, their rows, the residuals, and scattered them)."""
    store, table = store_and_table
    Y = np.asarray(store.cfh_maps(list(table.participant_id)).values, dtype=np.float64)
    one_copy = Y.nbytes
    kw = dict(KW, ijk=store.ijk, grid_shape=store.grid_shape, affine=store.affine,
              subjects=list(table.participant_id))
    group_inference(store, table, client=local_client, **KW)  # warm imports and caches
    peak_store = _traced_peak(lambda: group_inference(store, table, client=local_client,
                                                      **KW))
    peak_array = _traced_peak(lambda: group_inference(Y, table, client=local_client, **kw))
    print(f"client traced peak: store {peak_store / 2**20:.1f} MiB, array "
          f"{peak_array / 2**20:.1f} MiB, one float64 copy of the maps "
          f"{one_copy / 2**20:.1f} MiB")
    assert peak_store + 2 * one_copy < peak_array, (peak_store, peak_array, one_copy)
