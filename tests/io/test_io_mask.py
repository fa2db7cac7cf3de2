"""Masks: the grey-matter template against nilearn directly, user masks, voxel table."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from iohelpers import AFFINE, SHAPE, write_nifti

from cfhdask.errors import CfhdaskInputError
from cfhdask.grid import voxel_table
from cfhdask.prep.mask import gm_mask, gm_probability, load_user_mask, resolve_mask

#: A coarse (6 mm) MNI grid, x-flipped like SPM/DPABI.
MNI6_SHAPE = (31, 37, 31)
MNI6_AFFINE = np.array([[-6.0, 0, 0, 90.0], [0, 6.0, 0, -126.0], [0, 0, 6.0, -72.0],
                        [0, 0, 0, 1.0]])


def test_gm_mask_matches_nilearn_resampling():
    from nilearn.datasets import load_mni152_gm_template
    from nilearn.image import resample_to_img

    ref = nib.Nifti1Image(np.zeros(MNI6_SHAPE, np.float32), MNI6_AFFINE)
    direct = resample_to_img(load_mni152_gm_template(resolution=1), ref,
                             interpolation="linear", force_resample=True, copy_header=True)
    expected = direct.get_fdata() > 0.2
    got = gm_mask(MNI6_SHAPE, MNI6_AFFINE, 0.2)
    assert got.shape == MNI6_SHAPE and got.dtype == bool
    assert 2000 < got.sum() < 8000  # grey matter at 6 mm: a few thousand voxels
    assert np.array_equal(got, expected)
    table = voxel_table(got, MNI6_AFFINE)
    assert table.n_left > 0 and table.n_right > 0 and table.n_midline > 0
    # roughly symmetric hemispheres
    assert abs(table.n_left - table.n_right) < 0.1 * table.n_left
    # cached per grid: the same (read-only) array comes back
    assert gm_probability(MNI6_SHAPE, MNI6_AFFINE) is gm_probability(MNI6_SHAPE, MNI6_AFFINE)
    assert gm_mask(MNI6_SHAPE, MNI6_AFFINE, 0.5).sum() < got.sum()


def test_gm_mask_errors():
    with pytest.raises(CfhdaskInputError, match="--gm-threshold"):
        gm_mask(MNI6_SHAPE, MNI6_AFFINE, 1.5)
    far = MNI6_AFFINE.copy()
    far[:3, 3] += 5000.0  # a grid nowhere near the brain
    with pytest.raises(CfhdaskInputError, match="--mask gm: no voxel"):
        gm_mask((4, 4, 4), far)


def test_user_mask(tmp_path, user_mask):
    p = write_nifti(tmp_path / "m.nii.gz", user_mask.astype(np.float32))
    got, info = resolve_mask(p, SHAPE, AFFINE)
    assert np.array_equal(got, user_mask) and info == {"source": p}
    other = AFFINE.copy()
    other[0, 3] += 3.0
    q = write_nifti(tmp_path / "shifted_mask.nii.gz", user_mask.astype(np.uint8), other)
    with pytest.raises(CfhdaskInputError, match="mask .*shifted_mask.nii.gz: grid"):
        load_user_mask(q, SHAPE, AFFINE)
    r = write_nifti(tmp_path / "small_mask.nii.gz", user_mask[:, :, :5].astype(np.uint8))
    with pytest.raises(CfhdaskInputError, match="small_mask.nii.gz: grid"):
        load_user_mask(r, SHAPE, AFFINE)
    e = write_nifti(tmp_path / "empty_mask.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(CfhdaskInputError, match="empty_mask.nii.gz: empty"):
        load_user_mask(e, SHAPE, AFFINE)
    with pytest.raises(CfhdaskInputError, match="missing_mask.nii.gz: no such file"):
        load_user_mask(str(tmp_path / "missing_mask.nii.gz"), SHAPE, AFFINE)


def test_voxel_table_order_brute_force(rng):
    mask = rng.random(SHAPE) > 0.6
    table = voxel_table(mask, AFFINE)
    left, right, mid = [], [], []
    for i in range(SHAPE[0]):  # brute force, C order
        for j in range(SHAPE[1]):
            for k in range(SHAPE[2]):
                if mask[i, j, k]:
                    x = AFFINE[0, 0] * i + AFFINE[0, 3]
                    (left if x < 0 else right if x > 0 else mid).append((i, j, k))
    np.testing.assert_array_equal(table.ijk, np.array(left + right + mid))
    assert (table.n_left, table.n_right, table.n_midline) == (len(left), len(right), len(mid))
    np.testing.assert_array_equal(table.hemisphere,
                                  [-1] * len(left) + [1] * len(right) + [0] * len(mid))
