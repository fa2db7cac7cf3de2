"""NIfTI export of CFH maps and counterpart coordinates."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from iohelpers import AFFINE, SHAPE

from cfhdask.errors import CfhdaskInputError
from cfhdask.io.export import export_maps
from cfhdask.io.store import CohortStore


def test_export_maps(tmp_path, user_mask, rng):
    store = CohortStore.create(str(tmp_path / "s.zarr"), grid_shape=SHAPE, affine=AFFINE,
                               mask=user_mask, mask_info={"source": "test"}, voxel_chunk=40)
    n = store.n_voxels
    for s in ("sub-01", "sub-02"):
        store.write_subject(s, rng.standard_normal((n, 12)).astype(np.float32), {})
    cfh = rng.standard_normal(n).astype(np.float32)
    cfh[store.midline] = np.nan
    counterpart = np.full(n, -1, dtype=np.int32)
    counterpart[store.left] = rng.integers(store.right.start, store.right.stop, store.n_left)
    counterpart[store.right] = rng.integers(0, store.n_left, store.n_right)
    counterpart[5] = -1  # e.g. a constant voxel
    store.write_cfh("sub-01", cfh, counterpart, np.tanh(cfh), {}, metric="cfh_subject")

    paths = export_maps(str(tmp_path / "s.zarr"), tmp_path / "out", metric="cfh_subject")
    assert [p.name for p in paths] == ["sub-01_cfh_subject.nii.gz",
                                       "sub-01_counterpart_subject.nii.gz"]
    img = nib.load(paths[0])
    assert img.shape == SHAPE and np.allclose(img.affine, AFFINE)
    vol = img.get_fdata()
    ijk = tuple(store.ijk.T)
    np.testing.assert_allclose(vol[ijk], np.nan_to_num(cfh, nan=0.0), rtol=1e-6)
    assert np.all(vol[~user_mask] == 0) and np.all(vol[ijk][store.midline] == 0)
    cp = nib.load(paths[1]).get_fdata()
    assert cp.shape == (*SHAPE, 3)
    has = counterpart >= 0
    np.testing.assert_allclose(cp[ijk][has], store.xyz[counterpart[has]], atol=1e-5)
    assert np.all(cp[ijk][~has] == 0) and np.all(cp[~user_mask] == 0)
    # counterparts lie in the other hemisphere
    assert np.all(cp[ijk][store.left][has[store.left]][:, 0] > 0)

    with pytest.raises(CfhdaskInputError, match="no CFH .* results for sub-02"):
        export_maps(store, tmp_path / "out2", subjects=["sub-02"], metric="cfh_subject")

    # group mode: the maps, and once the group counterpart and its distance to the mirror
    store.write_cfh("sub-02", cfh, counterpart, np.tanh(cfh), {})
    store.write_group_counterpart(counterpart, np.ones(n), {"fingerprint": "x"})
    paths = export_maps(store, tmp_path / "group")
    assert [p.name for p in paths] == ["sub-02_cfh.nii.gz", "group_counterpart.nii.gz",
                                       "group_counterpart_displacement.nii.gz"]
    disp = nib.load(paths[2]).get_fdata()[ijk]
    want = np.linalg.norm(store.xyz[counterpart[has]] - store.xyz[has] * [-1, 1, 1], axis=1)
    np.testing.assert_allclose(disp[has], want, atol=1e-4)
    assert np.all(disp[~has] == 0)
