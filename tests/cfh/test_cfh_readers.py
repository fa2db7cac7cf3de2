"""Readers never see half-written maps: store.datatree() hides unflagged metrics and subjects."""

from __future__ import annotations

import numpy as np

from cfhdask.cfh.compute import compute_cfh
from cfhdask.io.store import SUBJECTS, open_store


def test_datatree_shows_complete_maps_only(store, local_client, rng):
    compute_cfh(store.url, block=8, client=local_client, show_progress=False,
                counterpart="subject")
    st = open_store(store.url, mode="r+")
    tree = st.datatree()
    assert "cfh_subject" in tree[f"{SUBJECTS}/sub-01"].data_vars
    # an interrupted rewrite: sub-02's arrays are there, its flag is not
    grp = st._subjects_group()["sub-02"]
    grp.attrs.update({"cfh_subject_complete": False})
    grp["cfh_subject"][:5] = np.float32(np.nan)  # half of a new write
    # and a subject whose ingest is under way
    st.begin_subject("sub-09", 20, {"tr": 2.0})
    tree = open_store(store.url).datatree()
    assert "sub-09" not in tree[SUBJECTS].children
    node = tree[f"{SUBJECTS}/sub-02"]
    assert not {"cfh_subject", "cfh_subject_r", "cfh_subject_counterpart"} & set(node.data_vars)
    assert "bold" in node.data_vars
    full = tree[f"{SUBJECTS}/sub-01"]
    np.testing.assert_array_equal(full["cfh_subject"].values,
                                  st.cfh_maps(["sub-01"], var="cfh_subject").values[0])


def test_cli_mean_is_a_chunked_reduction(rng):
    import dask.array as da
    import xarray as xr

    from cfhdask.cli.cfh import cohort_mean

    values = rng.standard_normal((7, 50)).astype(np.float32)
    values[values > 1.2] = np.nan
    maps = xr.DataArray(da.from_array(values, chunks=(1, 20)), dims=("subject", "voxel"))
    n, mean = cohort_mean(maps)
    assert n == 7
    np.testing.assert_allclose(mean, np.nanmean(values.astype(np.float64)), rtol=1e-12)
    assert np.isnan(cohort_mean(maps * np.nan)[1])
