"""compute_cfh and ``cfhdask cfh`` end to end through a tiny cohort store."""

from __future__ import annotations

import numpy as np
import pytest
from cfhref import assert_matches, reference_cfh

from cfhdask.cfh.compute import compute_cfh
from cfhdask.cfh.kernels import fisher_z
from cfhdask.cli import main
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.store import CohortStore, open_store

GRID = (7, 4, 3)
AFFINE = np.array([[-2.0, 0, 0, 6], [0, 2, 0, -4], [0, 0, 2, -2], [0, 0, 0, 1]])  # x=0 at i=3


def _bold(rng, n, t, constant=()):
    s = rng.standard_normal(t)
    x = rng.standard_normal((n, t)) + rng.random((n, 1)) * s + 50
    x[list(constant)] = 7.0
    return x.astype(np.float32)


@pytest.fixture
def store(tmp_path, rng):
    st = CohortStore.create(str(tmp_path / "cohort.zarr"), grid_shape=GRID, affine=AFFINE,
                            mask=np.ones(GRID, bool), mask_info={"source": "test"},
                            voxel_chunk=10)
    assert st.n_left == st.n_right == 36 and st.n_midline == 12
    st.write_subject("sub-01", _bold(rng, st.n_voxels, 30), {"tr": 2.0})
    # a different length and constant voxels: left #2, right #5 (store index 36+5)
    st.write_subject("sub-02", _bold(rng, st.n_voxels, 45, constant=[2, 41]), {"tr": 2.0})
    return st


def _check_subject(st, ds, subject):
    bold = np.asarray(st.bold(subject))
    left, right = bold[st.left], bold[st.right]
    lmax, larg, rmax, rarg, c = reference_cfh(left, right)
    sel = ds.sel(subject=subject)
    r_max = sel["r_max"].values
    cp = sel["counterpart"].values
    assert_matches(r_max[st.left], np.where(cp[st.left] < 0, -1, cp[st.left] - st.right.start),
                   lmax, larg, c)
    assert_matches(r_max[st.right], np.where(cp[st.right] < 0, -1, cp[st.right] - st.left.start),
                   rmax, rarg, c.T)
    mid = slice(st.n_left + st.n_right, st.n_voxels)
    assert np.isnan(sel["cfh"].values[mid]).all() and (cp[mid] == -1).all()
    np.testing.assert_array_equal(sel["cfh"].values, fisher_z(r_max))
    assert sel["cfh"].dtype == np.float32 and sel["counterpart"].dtype == np.int32


def test_compute_cfh_end_to_end_and_rerun(store, local_client, tmp_path):
    ds = compute_cfh(store.url, block=8, client=local_client, show_progress=False)
    assert ds.attrs["computed"] == ["sub-01", "sub-02"] and ds.attrs["skipped"] == []
    assert ds.attrs["n_constant"] == {"sub-01": 0, "sub-02": 2}
    assert dict(ds.sizes) == {"subject": 2, "voxel": store.n_voxels}
    for s in ("sub-01", "sub-02"):
        _check_subject(store, ds, s)
    cp2 = ds["counterpart"].sel(subject="sub-02").values
    assert np.isnan(ds["cfh"].sel(subject="sub-02").values[[2, 41]]).all()
    assert 2 not in cp2 and 41 not in cp2
    reopened = open_store(store.url)
    assert reopened.subjects("cfh") == ["sub-01", "sub-02"]
    assert reopened.subject_attrs("sub-02")["n_constant"] == 2
    assert reopened.attrs["history"][-1]["command"] == "cfh"
    # a rerun skips complete subjects and changes nothing
    before = ds["cfh"].values.copy()
    again = compute_cfh(store.url, block=5, client=local_client, show_progress=False)
    assert again.attrs["computed"] == [] and again.attrs["skipped"] == ["sub-01", "sub-02"]
    np.testing.assert_array_equal(again["cfh"].values, before)
    # overwrite with another block size: the same numbers
    redo = compute_cfh(store.url, block=5, subjects=["sub-02"], overwrite=True,
                       client=local_client, show_progress=False)
    assert redo.attrs["computed"] == ["sub-02"]
    np.testing.assert_allclose(redo["r_max"].values[0], ds["r_max"].values[1], atol=1e-6)


def test_compute_cfh_bad_input(store, local_client):
    with pytest.raises(CfhdaskInputError, match="sub-99"):
        compute_cfh(store, subjects=["sub-99"], client=local_client)
    with pytest.raises(CfhdaskInputError, match="backend"):
        compute_cfh(store, backend="tpu", client=local_client)
    with pytest.raises(CfhdaskInputError, match="block"):
        compute_cfh(store, block=1, client=local_client)
    assert open_store(store.url).subjects("cfh") == []


def test_cupy_backend_without_gpu_is_a_clear_error(store):
    from cfhdask.backend import cupy_available

    if cupy_available():
        pytest.skip("a GPU is available here")
    with pytest.raises(CfhdaskInputError, match="cupy"):
        compute_cfh(store, backend="cupy")


def test_cli_cfh(store, local_client, capsys, tmp_path):
    rc = main(["cfh", store.url, "--block", "16", "--subjects", "sub-01", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "subjects computed: 1" in out and "mean CFH" in out
    assert open_store(store.url).subjects("cfh") == ["sub-01"]
    rc = main(["cfh", store.url, "--no-progress", "--block", "20"])
    out = capsys.readouterr().out
    assert rc == 0 and "computed: 1, skipped (complete): 1" in out
    ds = compute_cfh(store.url, client=local_client, show_progress=False)
    for s in ("sub-01", "sub-02"):
        _check_subject(store, ds, s)
    rc = main(["cfh", store.url, "--subjects", "nobody"])
    assert rc == 2 and "nobody" in capsys.readouterr().err


def test_cli_cfh_export(store, local_client, capsys, tmp_path):
    import nibabel as nib

    rc = main(["cfh", store.url, "--no-progress", "--export", str(tmp_path / "maps")])
    assert rc == 0 and "NIfTI maps in" in capsys.readouterr().out
    img = nib.load(tmp_path / "maps" / "sub-02_cfh.nii.gz")
    assert img.shape == GRID
    cfh = open_store(store.url).cfh_maps(["sub-02"]).values[0]
    vol = np.asarray(img.dataobj)
    ijk = store.ijk
    np.testing.assert_allclose(vol[tuple(ijk.T)], np.nan_to_num(cfh, nan=0.0), atol=1e-6)
