"""NIfTI reading: headers, lazy masked series, and every bad file."""

from __future__ import annotations

import gzip
from pathlib import Path

import dask
import fsspec
import nibabel as nib
import numpy as np
import pytest
from iohelpers import AFFINE, SHAPE, write_nifti

from cfhdask.errors import CfhdaskInputError
from cfhdask.io import nifti
from cfhdask.io.nifti import (
    check_bold,
    check_same_grid,
    load_masked,
    masked_series,
    read_header,
    tr_from_header,
)


def _ijk(mask):
    return np.argwhere(mask)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_header_and_masked_series_match_nibabel(make_bold, user_mask, suffix, monkeypatch):
    monkeypatch.setattr(nifti, "_BLOCK_BYTES", 5 * int(np.prod(SHAPE)) * 4)  # 5 volumes
    path, data = make_bold(f"sub-01_bold{suffix}", n_vol=23, dtype=np.int16)
    info = read_header(path)
    assert info.shape == (*SHAPE, 23) and info.n_volumes == 23 and info.tr == 2.0
    assert info.compressed == (suffix == ".nii.gz") and info.dtype == np.int16
    ijk = _ijk(user_mask)
    series = masked_series(info, ijk, drop_volumes=3)
    assert series.dtype == np.float32 and series.shape == (len(ijk), 20)
    assert series.numblocks[1] == (1 if suffix == ".nii.gz" else 4)
    ref = np.asarray(nib.load(path).get_fdata())[tuple(ijk.T)][:, 3:]
    np.testing.assert_array_equal(series.compute(scheduler="sync"), ref.astype(np.float32))


def test_masked_series_is_lazy(make_bold, user_mask):
    path, _ = make_bold("sub-01_bold.nii")
    calls = []
    with dask.config.set(scheduler=lambda *a, **k: calls.append(1)):
        masked_series(read_header(path), _ijk(user_mask), 2)
    assert calls == []


def test_read_from_fsspec_url(make_bold, user_mask):
    path, data = make_bold("sub-02_bold.nii.gz")
    url = "memory://cfhdask-nifti/sub-02_bold.nii.gz"
    with open(path, "rb") as src, fsspec.open(url, "wb") as dst:
        dst.write(src.read())
    info = read_header(url)
    assert info.shape == (*SHAPE, 20)
    ijk = _ijk(user_mask)
    got = load_masked(url, ijk, 0, 20)
    np.testing.assert_allclose(got, data[tuple(ijk.T)], rtol=1e-6)


def test_tr_units():
    img = nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.float32), AFFINE)
    img.header.set_zooms((3, 3, 3, 2500.0))
    img.header.set_xyzt_units("mm", "msec")
    assert tr_from_header(img.header) == pytest.approx(2.5)
    img.header.set_zooms((3, 3, 3, 0.0))
    assert tr_from_header(img.header) is None
    assert tr_from_header(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), AFFINE).header) is None


def test_missing_file_and_bad_url(tmp_path):
    with pytest.raises(CfhdaskInputError, match="nope.nii.gz: no such file"):
        read_header(str(tmp_path / "nope.nii.gz"))
    with pytest.raises(CfhdaskInputError, match="nosuchproto://x/sub-01.nii.gz"):
        read_header("nosuchproto://x/sub-01.nii.gz")
    with pytest.raises(CfhdaskInputError, match="memory://cfhdask-none/a.nii: no such file"):
        read_header("memory://cfhdask-none/a.nii")


def test_unreadable_file(tmp_path):
    p = tmp_path / "junk.nii.gz"
    p.write_bytes(gzip.compress(b"this is not a nifti" * 10))
    with pytest.raises(CfhdaskInputError, match="junk.nii.gz: not a readable NIfTI"):
        read_header(str(p))
    q = tmp_path / "junk.nii"
    q.write_bytes(b"\x00" * 10)
    with pytest.raises(CfhdaskInputError, match="junk.nii: not a readable NIfTI"):
        read_header(str(q))


def test_truncated_files(make_bold, user_mask, tmp_path):
    path, _ = make_bold("sub-01_bold.nii")
    raw = Path(path).read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CfhdaskInputError, match="cut.nii: truncated"):
        read_header(str(cut))
    gz_path, _ = make_bold("sub-02_bold.nii.gz")
    graw = Path(gz_path).read_bytes()
    gcut = tmp_path / "cut.nii.gz"
    gcut.write_bytes(graw[: len(graw) // 2])
    info = read_header(str(gcut))  # header is intact; the data are not
    with pytest.raises(CfhdaskInputError, match="cut.nii.gz: unreadable or truncated"):
        masked_series(info, _ijk(user_mask)).compute(scheduler="sync")


def test_not_4d_and_too_few_volumes(tmp_path, make_bold):
    p3 = write_nifti(tmp_path / "anat.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(CfhdaskInputError, match="anat.nii.gz: expected a 4D"):
        check_bold(read_header(p3))
    short, _ = make_bold("sub-01_bold.nii.gz", n_vol=12)
    check_bold(read_header(short), drop_volumes=2)
    with pytest.raises(CfhdaskInputError, match="sub-01_bold.nii.gz: 12 volumes, 9 after"):
        check_bold(read_header(short), drop_volumes=3)


def test_grid_mismatch_names_odd_file(make_bold):
    a, _ = make_bold("sub-01_bold.nii.gz")
    b, _ = make_bold("sub-02_bold.nii.gz", shape=(10, 12, 9))
    shifted = AFFINE.copy()
    shifted[1, 3] += 0.01
    c, _ = make_bold("sub-03_bold.nii.gz", affine=shifted)
    tiny = AFFINE.copy()
    tiny[1, 3] += 1e-4  # within 1e-3 mm: the same grid
    d, _ = make_bold("sub-04_bold.nii.gz", affine=tiny)
    check_same_grid([read_header(a), read_header(d)])
    with pytest.raises(CfhdaskInputError, match="sub-02_bold.nii.gz: grid"):
        check_same_grid([read_header(a), read_header(b)])
    with pytest.raises(CfhdaskInputError, match="sub-03_bold.nii.gz: grid"):
        check_same_grid([read_header(a), read_header(d), read_header(c)])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_inside_mask_only(tmp_path, user_mask, rng, bad):
    data = rng.standard_normal((*SHAPE, 15)).astype(np.float32)
    data[0, 0, 0, 4] = bad  # outside the mask: fine
    p = write_nifti(tmp_path / "sub-01_bold.nii.gz", data)
    ijk = _ijk(user_mask)
    assert np.isfinite(masked_series(read_header(p), ijk).compute(scheduler="sync")).all()
    i, j, k = ijk[7]
    data[i, j, k, 6] = bad
    q = write_nifti(tmp_path / "sub-02_bold.nii.gz", data)
    with pytest.raises(CfhdaskInputError, match="sub-02_bold.nii.gz: 1 NaN/Inf.*volume 6"):
        masked_series(read_header(q), ijk).compute(scheduler="sync")
