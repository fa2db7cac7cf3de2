"""compute_cfh with per-subject counterparts (``--counterpart subject``) through a store."""

from __future__ import annotations

import numpy as np
import pytest
from cfhref import assert_matches, reference_cfh
from cfhstore import GRID

from cfhdask.cfh.compute import compute_cfh
from cfhdask.cfh.kernels import fisher_z
from cfhdask.cli import main
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.store import open_store


def _check_subject(st, ds, subject):
    bold = np.asarray(st.bold(subject))
    left, right = bold[st.left], bold[st.right]
    lmax, larg, rmax, rarg, c = reference_cfh(left, right)
    sel = ds.sel(subject=subject)
    r = sel["r"].values
    cp = sel["counterpart"].values
    assert_matches(r[st.left], np.where(cp[st.left] < 0, -1, cp[st.left] - st.right.start),
                   lmax, larg, c)
    assert_matches(r[st.right], np.where(cp[st.right] < 0, -1, cp[st.right] - st.left.start),
                   rmax, rarg, c.T)
    assert np.isnan(sel["cfh"].values[st.midline]).all() and (cp[st.midline] == -1).all()
    np.testing.assert_array_equal(sel["cfh"].values, fisher_z(r))
    assert sel["cfh"].dtype == np.float32 and sel["counterpart"].dtype == np.int32


def test_compute_cfh_subject_mode_end_to_end_and_rerun(store, local_client):
    ds = compute_cfh(store.url, counterpart="subject", block=8, client=local_client,
                     show_progress=False)
    assert ds.attrs["metric"] == "cfh_subject" and ds.attrs["counterpart"] == "subject"
    assert ds.attrs["computed"] == ["sub-01", "sub-02"] and ds.attrs["skipped"] == []
    assert ds.attrs["n_constant"] == {"sub-01": 0, "sub-02": 2}
    assert dict(ds.sizes) == {"subject": 2, "voxel": store.n_voxels}
    for s in ("sub-01", "sub-02"):
        _check_subject(store, ds, s)
    cp2 = ds["counterpart"].sel(subject="sub-02").values
    assert np.isnan(ds["cfh"].sel(subject="sub-02").values[[2, 41]]).all()
    assert 2 not in cp2 and 41 not in cp2
    reopened = open_store(store.url)
    assert reopened.subjects("cfh_subject") == ["sub-01", "sub-02"]
    assert reopened.subjects("cfh") == []  # the group metric is another one
    assert reopened.subject_attrs("sub-02")["n_constant"] == 2
    assert reopened.metric_params("sub-02", "cfh_subject")["counterpart"] == "subject"
    assert reopened.attrs["history"][-1]["command"] == "cfh"
    before = ds["cfh"].values.copy()
    again = compute_cfh(store.url, counterpart="subject", block=5, client=local_client,
                        show_progress=False)
    assert again.attrs["computed"] == [] and again.attrs["skipped"] == ["sub-01", "sub-02"]
    np.testing.assert_array_equal(again["cfh"].values, before)
    redo = compute_cfh(store.url, counterpart="subject", block=5, subjects=["sub-02"],
                       overwrite=True, client=local_client, show_progress=False)
    assert redo.attrs["computed"] == ["sub-02"]
    np.testing.assert_allclose(redo["r"].values[0], ds["r"].values[1], atol=1e-6)


def test_compute_cfh_bad_input(store, local_client):
    with pytest.raises(CfhdaskInputError, match="sub-99"):
        compute_cfh(store, subjects=["sub-99"], client=local_client)
    with pytest.raises(CfhdaskInputError, match="backend"):
        compute_cfh(store, backend="tpu", client=local_client)
    with pytest.raises(CfhdaskInputError, match="block"):
        compute_cfh(store, block=1, client=local_client)
    with pytest.raises(CfhdaskInputError, match="counterpart"):
        compute_cfh(store, counterpart="mirror", client=local_client)
    st = open_store(store.url)
    assert st.subjects("cfh") == st.subjects("cfh_subject") == []
    assert st.group_counterpart() is None


def test_cupy_backend_without_gpu_is_a_clear_error(store):
    from cfhdask.backend import cupy_available

    if cupy_available():
        pytest.skip("a GPU is available here")
    with pytest.raises(CfhdaskInputError, match="cupy"):
        compute_cfh(store, backend="cupy")


def test_cli_cfh_subject_mode(store, local_client, capsys, tmp_path):
    rc = main(["cfh", store.url, "--counterpart", "subject", "--block", "16",
               "--subjects", "sub-01", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "subjects computed: 1" in out and "per-subject maximum" in out
    assert open_store(store.url).subjects("cfh_subject") == ["sub-01"]
    rc = main(["cfh", store.url, "--counterpart", "subject", "--no-progress", "--block", "20",
               "--export", str(tmp_path / "maps")])
    out = capsys.readouterr().out
    assert rc == 0 and "computed: 1, skipped (complete): 1" in out
    ds = compute_cfh(store.url, counterpart="subject", client=local_client,
                     show_progress=False)
    for s in ("sub-01", "sub-02"):
        _check_subject(store, ds, s)
    import nibabel as nib

    img = nib.load(tmp_path / "maps" / "sub-02_cfh_subject.nii.gz")
    assert img.shape == GRID
    vol = np.asarray(img.dataobj)
    np.testing.assert_allclose(vol[tuple(store.ijk.T)],
                               np.nan_to_num(ds["cfh"].values[1], nan=0.0), atol=1e-6)
    cp = nib.load(tmp_path / "maps" / "sub-02_counterpart_subject.nii.gz").get_fdata()
    has = ds["counterpart"].values[1] >= 0
    np.testing.assert_allclose(cp[tuple(store.ijk.T)][has],
                               store.xyz[ds["counterpart"].values[1][has]], atol=1e-5)
    with pytest.raises(SystemExit) as exc:
        main(["cfh", store.url, "--counterpart", "mirror"])
    assert exc.value.code == 2 and "--counterpart" in capsys.readouterr().err
    assert main(["cfh", store.url, "--subjects", "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err
