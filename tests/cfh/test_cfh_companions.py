"""VMHC and the autonomy index through a store, and version-1 stores."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import zarr
from cfhref import near_threshold, reference_ai
from cfhstore import AFFINE, GRID, bold

from cfhdask.cfh.autonomy import compute_autonomy
from cfhdask.cfh.compute import compute_cfh
from cfhdask.cfh.kernels import fisher_z
from cfhdask.cfh.vmhc import compute_vmhc
from cfhdask.cli import main
from cfhdask.errors import CfhdaskInputError, StoreVersionError
from cfhdask.io.store import CohortStore, migrate_store, open_store


def _vmhc_reference(st, subject, mirror):
    x = np.asarray(st.bold(subject), np.float64)
    out = np.full(st.n_voxels, np.nan)
    for v in np.flatnonzero(mirror >= 0):
        a, b = x[v], x[mirror[v]]
        if a.std() > 0 and b.std() > 0:
            out[v] = np.corrcoef(a, b)[0, 1]
    return out


def test_vmhc_end_to_end(store, local_client, tmp_path):
    ds = compute_vmhc(store.url, block=8, client=local_client, show_progress=False,
                      export=str(tmp_path / "maps"))
    assert ds.attrs["mirror_exact"] and ds.attrs["n_pairs"] == 72
    mirror = ds["mirror"].values
    xyz = store.xyz
    has = mirror >= 0
    np.testing.assert_allclose(xyz[mirror[has]], xyz[has] * [-1, 1, 1], atol=1e-5)
    assert not has[store.midline].any()
    for k, s in enumerate(("sub-01", "sub-02")):
        ref = _vmhc_reference(store, s, mirror)
        r = ds["r"].values[k]
        np.testing.assert_array_equal(np.isnan(r), np.isnan(ref))
        np.testing.assert_allclose(r[~np.isnan(ref)], ref[~np.isnan(ref)], atol=1e-5)
        np.testing.assert_array_equal(ds["vmhc"].values[k], fisher_z(r))
        np.testing.assert_allclose(r[has], r[mirror[has]], atol=1e-6)  # symmetric
    # constant in sub-02: its own value and its mirror's are missing, sub-01's are not
    assert np.isnan(ds["r"].values[1, [2, mirror[2]]]).all()
    assert np.isfinite(ds["r"].values[0, [2, mirror[2]]]).all()
    st = open_store(store.url)
    assert st.metric_params("sub-01", "vmhc")["mirror"] == "exact"
    img = nib.load(tmp_path / "maps" / "sub-01_vmhc.nii.gz")
    np.testing.assert_allclose(img.get_fdata()[tuple(store.ijk.T)],
                               np.nan_to_num(ds["vmhc"].values[0]), atol=1e-6)
    again = compute_vmhc(store.url, client=local_client, show_progress=False)
    assert again.attrs["computed"] == []


def test_vmhc_on_an_asymmetric_grid_and_without_pairs(tmp_path, rng, local_client, caplog):
    affine = AFFINE.copy()
    affine[0, 3] = 6.7  # x = 6.7 - 2 i: mirror positions fall between voxel centres
    st = CohortStore.create(str(tmp_path / "asym.zarr"), grid_shape=GRID, affine=affine,
                            mask=np.ones(GRID, bool), mask_info={"source": "t"})
    st.write_subject("sub-01", bold(rng, st.n_voxels, 30), {})
    with caplog.at_level(logging.WARNING, logger="cfhdask"):
        ds = compute_vmhc(st.url, client=local_client, show_progress=False)
    assert "not symmetric about x = 0" in caplog.text
    assert not ds.attrs["mirror_exact"] and 0 < ds.attrs["max_offset_mm"] <= 2.0
    assert open_store(st.url).metric_params("sub-01", "vmhc")["mirror"] == "nearest"
    mirror = ds["mirror"].values
    ref = _vmhc_reference(st, "sub-01", mirror)
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(ds["r"].values[0][ok], ref[ok], atol=1e-5)
    # a mask with one hemisphere's voxels mirrored nowhere
    mask = np.zeros(GRID, bool)
    mask[0, :, :] = mask[5, :2, :] = True  # x = 6 and x = -4: mirrors (x = -6, 4) not in it
    lone = CohortStore.create(str(tmp_path / "lone.zarr"), grid_shape=GRID, affine=AFFINE,
                              mask=mask, mask_info={"source": "t"})
    lone.write_subject("sub-01", bold(rng, lone.n_voxels, 30), {})
    assert main(["vmhc", lone.url, "--no-progress"]) == 2
    assert open_store(lone.url).subjects("vmhc") == []


def test_autonomy_index_end_to_end(store, local_client, tmp_path, caplog):
    thr = 0.3
    ds = compute_autonomy(store.url, threshold=thr, block=8, split_every=2,
                          client=local_client, show_progress=False,
                          export=str(tmp_path / "maps"))
    assert ds.attrs["threshold"] == thr
    for k, s in enumerate(("sub-01", "sub-02")):
        x = np.asarray(store.bold(s))
        ai_l, ai_r, c = reference_ai(x[store.left], x[store.right], thr)
        got = ds["ai"].values[k]
        nl = store.n_left
        near = near_threshold(c["r"], thr)  # pairs that may count either way
        hl, hr = c["left_valid"].sum(), c["right_valid"].sum()
        tol_l = near[:nl] / min(hl - 1, hr)
        tol_r = near[nl:] / min(hr - 1, hl)
        np.testing.assert_array_equal(np.isnan(got[store.left]), np.isnan(ai_l))
        ok = ~np.isnan(ai_l)
        assert np.all(np.abs(got[store.left][ok] - ai_l[ok]) <= tol_l[ok] + 1e-6)
        ok = ~np.isnan(ai_r)
        assert np.all(np.abs(got[store.right][ok] - ai_r[ok]) <= tol_r[ok] + 1e-6)
        assert np.isnan(got[store.midline]).all()
    assert np.isnan(ds["ai"].values[1, [2, 41]]).all()
    assert (tmp_path / "maps" / "sub-02_ai.nii.gz").exists()
    # another threshold recomputes; a threshold outside (-1, 1) is refused
    with caplog.at_level(logging.WARNING, logger="cfhdask"):
        again = compute_autonomy(store.url, client=local_client, show_progress=False)
    assert again.attrs["threshold"] == 0.25 and len(again.attrs["computed"]) == 2
    assert "another threshold" in caplog.text
    with pytest.raises(CfhdaskInputError, match="--threshold"):
        compute_autonomy(store.url, threshold=1.0, client=local_client)


def test_cli_vmhc_and_autonomy(store, local_client, capsys):
    assert main(["vmhc", store.url, "--no-progress", "--subjects", "sub-01"]) == 0
    out = capsys.readouterr().out
    assert "mirror: exact" in out and "subjects computed: 1" in out
    assert main(["autonomy", store.url, "--no-progress", "--threshold", "0.2"]) == 0
    assert "threshold: r > 0.2" in capsys.readouterr().out
    before = open_store(store.url).cfh_maps(var="ai").values
    assert main(["autonomy", store.url, "--threshold", "1.5"]) == 2
    assert "--threshold" in capsys.readouterr().err
    np.testing.assert_array_equal(open_store(store.url).cfh_maps(var="ai").values, before)


def _make_v1(st):
    """Turn a store into what cfhdask wrote before the group counterpart (layout 1)."""
    root = zarr.open_group(st.url, mode="r+")
    for s in st.subjects("cfh_subject"):
        grp = root["subjects"][s]
        for new, old in (("cfh_subject", "cfh"), ("cfh_subject_r", "r_max"),
                         ("cfh_subject_counterpart", "counterpart")):
            arr = grp.create_array(old, shape=grp[new].shape, dtype=grp[new].dtype,
                                   chunks=grp[new].chunks, fill_value=grp[new].fill_value)
            arr[...] = grp[new][...]
            del grp[new]
        attrs = dict(grp.attrs)
        grp.attrs.update({"cfh_complete": True, "cfh_params": attrs["cfh_subject_params"]})
        del grp.attrs["cfh_subject_complete"]
        del grp.attrs["cfh_subject_params"]
    root.attrs.update({"cfhdask_store_version": 1})


def test_version_1_stores_open_read_only_and_migrate(store, local_client, capsys):
    ds = compute_cfh(store.url, counterpart="subject", block=8, client=local_client,
                     show_progress=False).load()  # read before the arrays are renamed
    _make_v1(store)
    v1 = open_store(store.url)
    assert v1.layout_version == 1 and v1.subjects("cfh_subject") == ["sub-01", "sub-02"]
    np.testing.assert_array_equal(v1.cfh_maps(var="cfh_subject").values, ds["cfh"].values)
    assert v1.subjects("cfh") == []
    assert "cfhdask migrate" in v1.missing_metric("cfh")
    with pytest.raises(StoreVersionError, match="cfhdask migrate"):
        open_store(store.url, mode="r+")
    assert main(["cfh", store.url]) == 2
    assert "cfhdask migrate" in capsys.readouterr().err
    assert main(["migrate", store.url]) == 0
    assert "2 subject(s)" in capsys.readouterr().out
    v2 = open_store(store.url, mode="r+")
    assert v2.layout_version == 2 and v2.subjects("cfh_subject") == ["sub-01", "sub-02"]
    np.testing.assert_array_equal(v2.cfh_maps(var="cfh_subject_counterpart").values,
                                  ds["counterpart"].values)
    assert v2.metric_params("sub-01", "cfh_subject")["counterpart"] == "subject"
    assert v2.subjects("cfh") == [] and migrate_store(store.url) == []
    assert v2.attrs["history"][-1]["command"] == "migrate"
