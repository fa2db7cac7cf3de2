"""End-to-end group inference: planted effect, atlas labels, outputs, mask."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cfhdask.errors import CfhdaskInputError
from cfhdask.stats.inference import group_inference


def _run(ds, **kw):
    kw.setdefault("n_perm", 200)
    kw.setdefault("compute", "local")
    return group_inference(ds["Y"], ds["table"], group="group", groups=["patient", "control"],
                           covariates=["age", "sex"], ijk=ds["ijk"],
                           grid_shape=ds["grid_shape"], affine=ds["affine"], **kw)


def test_planted_effect_found_with_atlas_label(dataset, tmp_path):
    res = _run(dataset, tfce=True, out_dir=str(tmp_path))
    cl = res.clusters
    top = cl[cl.contrast == "patient_gt_control"].iloc[0]
    assert top.p_fwe < 0.05 and top.mass_p_fwe < 0.05 and top.tfce_p_fwe < 0.05
    peak = np.array([top.peak_x, top.peak_y, top.peak_z])
    assert np.abs(peak - np.array([-24.0, 6.0, 3.0])).max() <= 3.0  # within one voxel
    assert top.aal_peak == "Putamen_L"
    assert top.harvard_oxford_peak == "Left_Putamen"
    assert top.aal_regions.startswith("Putamen_L ")
    neg = cl[cl.contrast == "control_gt_patient"]
    assert (neg.p_fwe > 0.05).all()
    c = res.contrasts["patient_gt_control"]
    assert c.logp_vox_fwe.max() > -np.log10(0.05)
    assert c.logp_vox_fwe.max() <= np.log10(res.params["n_perm"]) + 1e-12
    # outputs
    files = {p.name for p in tmp_path.iterdir()}
    for name in ("patient_gt_control", "control_gt_patient"):
        for suffix in ("tstat", "logp_uncorrected", "logp_vox_fwe", "logp_cluster_fwe",
                       "logp_tfce_fwe", "clusters"):
            assert f"{name}_{suffix}.nii.gz" in files
        assert f"{name}_null_max_t.npy" in files
    img = nib.load(tmp_path / "patient_gt_control_tstat.nii.gz")
    assert img.shape == tuple(dataset["grid_shape"])
    np.testing.assert_allclose(img.affine, dataset["affine"])
    vol = np.asarray(img.dataobj)
    np.testing.assert_allclose(vol[tuple(res.ijk.T)], c.t, rtol=1e-6, atol=1e-6)
    labels = np.asarray(nib.load(tmp_path / "patient_gt_control_clusters.nii.gz").dataobj)
    assert (labels[tuple(res.ijk.T)] == c.cluster_labels).all()
    tsv = pd.read_csv(tmp_path / "clusters.tsv", sep="\t")
    assert list(tsv.columns[:10]) == ["contrast", "cluster", "size_voxels", "size_mm3", "mass",
                                      "peak_t", "peak_x", "peak_y", "peak_z", "p_fwe"]
    assert len(tsv) == len(cl)
    null = np.load(tmp_path / "patient_gt_control_null_max_t.npy")
    assert null.shape == (200,) and null[0] == pytest.approx(c.t.max())
    meta = json.loads((tmp_path / "stats.json").read_text())
    assert meta["n_perm"] == 200 and meta["seed"] == 0 and meta["versions"]["numpy"]
    _check_local_maxima(tsv, tmp_path, dataset["affine"])
    assert not any(f.startswith(".tmp-") for f in files)


def _check_local_maxima(tsv, out, affine):
    """Each listed maximum: in its cluster, no 18-neighbour of the cluster higher, > 8 mm
    from the ones before it, voxel FWE p = share of null max-T >= its t."""
    from cfhdask.stats.results import fwe_p

    seen_second = False
    for contrast, rows in tsv.groupby("contrast"):
        t = np.asarray(nib.load(out / f"{contrast}_tstat.nii.gz").dataobj, float)
        lab = np.asarray(nib.load(out / f"{contrast}_clusters.nii.gz").dataobj)
        null = np.load(out / f"{contrast}_null_max_t.npy")
        for _, r in rows.iterrows():
            pts = []
            for pre in ("peak", "peak2", "peak3"):
                if pre != "peak" and pd.isna(r[f"{pre}_t"]):
                    assert pd.isna(r[f"{pre}_vox_p_fwe"])
                    continue
                xyz = np.array([r[f"{pre}_x"], r[f"{pre}_y"], r[f"{pre}_z"]])
                v = tuple(np.rint(np.linalg.solve(affine, [*xyz, 1])[:3]).astype(int))
                assert lab[v] == r["cluster"]
                assert t[v] == pytest.approx(r[f"{pre}_t"], rel=1e-5)
                box = tuple(slice(max(c - 1, 0), c + 2) for c in v)
                nb = np.where(lab[box] == r["cluster"], t[box], -np.inf)
                centre = np.array(v) - [b.start for b in box]
                d = np.indices(nb.shape).reshape(3, -1).T - centre
                near = (np.abs(d).sum(axis=1) <= 2).reshape(nb.shape)  # 18-connectivity
                assert t[v] >= nb[near].max() - 1e-5
                assert all(np.linalg.norm(xyz - q) > 8.0 for q in pts)
                tol = 1e-5 * (1 + abs(t[v]))  # the map is float32 on disk
                lo, hi = fwe_p(null, [t[v] + tol, t[v] - tol])
                assert lo <= r[f"{pre}_vox_p_fwe"] <= hi
                pts.append(xyz)
            seen_second |= len(pts) > 1
            assert r["peak_t"] == pytest.approx(t[lab == r["cluster"]].max(), rel=1e-5)
    assert seen_second


def test_nan_and_midline_voxels_are_dropped_and_reported(rng, dataset_factory):
    ds = dataset_factory(rng, box=(5, 5, 4), nan_voxels=7, effect=0.0)
    # midline voxels (x == 0) in the data: shift the box onto the midline
    ds["ijk"] = ds["ijk"] + np.array([30 - ds["ijk"][:, 0].min() - 2, 0, 0])
    res = _run(ds, n_perm=20, atlases=None)
    m = res.params["mask"]
    nan_cols = ~np.isfinite(ds["Y"]).all(axis=0)
    midline = ds["ijk"][:, 0] == 30  # x = 0 on the 3 mm grid
    assert m["n_dropped_midline"] == midline.sum() == 5 * 4
    assert m["n_dropped_nonfinite"] == (nan_cols & ~midline).sum() > 0
    assert m["n_voxels_analysed"] == 100 - m["n_dropped_midline"] - m["n_dropped_nonfinite"]
    assert res.ijk.shape[0] == m["n_voxels_analysed"]
    assert np.isfinite(res.contrasts["patient_gt_control"].t).all()


def test_bad_options(dataset):
    with pytest.raises(CfhdaskInputError, match="scheme"):
        _run(dataset, scheme="smith")
    with pytest.raises(CfhdaskInputError, match="connectivity"):
        _run(dataset, connectivity=8)
    with pytest.raises(CfhdaskInputError, match="^cluster_p: "):
        _run(dataset, cluster_p=2.0)
    with pytest.raises(CfhdaskInputError, match="^n_perm: "):
        _run(dataset, n_perm=0)
    with pytest.raises(CfhdaskInputError, match="ijk"):
        group_inference(dataset["Y"], dataset["table"], group="group")


def test_dask_and_local_agree(dataset, local_client):
    a = _run(dataset, n_perm=40, atlases=None)
    b = _run(dataset, n_perm=40, atlases=None, compute="dask", client=local_client,
             batch_size=8)
    for name in a.contrasts:
        for k in a.contrasts[name].null:
            np.testing.assert_array_equal(a.contrasts[name].null[k], b.contrasts[name].null[k])
    pd.testing.assert_frame_equal(a.clusters, b.clusters)
