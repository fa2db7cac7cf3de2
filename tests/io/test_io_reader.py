"""The batch reader of image data: equal to nibabel's get_fdata, every bad file an error."""

from __future__ import annotations

import gzip
from pathlib import Path

import fsspec
import nibabel as nib
import numpy as np
import pytest
from iohelpers import AFFINE, SHAPE

from cfhdask.errors import CfhdaskInputError
from cfhdask.io import nifti
from cfhdask.io.nifti import iter_volume_batches


def save(path: Path, data: np.ndarray, *, slope=None, inter=None, nifti2=False) -> str:
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    img = cls(data, AFFINE)
    if slope is not None:
        img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return str(path)


def read_all(url, start, stop, batch, **kw) -> np.ndarray:
    parts = list(iter_volume_batches(url, start, stop, batch, **kw))
    assert [b0 for b0, _ in parts] == list(range(start, stop, batch))
    assert all(v.dtype == np.float32 and v.flags.f_contiguous for _, v in parts)
    return np.concatenate([v for _, v in parts], axis=3)


CASES = {
    "int16-scaled": (np.int16, 0.0368, -12.5, False),
    "int16": (np.int16, None, None, False),
    "uint8": (np.uint8, 2.0, 0.0, False),
    "big-endian": (np.dtype(">i2"), 0.5, 3.0, False),
    "float32": (np.float32, None, None, False),
    "float64-nifti2": (np.float64, None, None, True),
    "int16-nifti2-scaled": (np.int16, 0.1, 0.0, True),  # a float64 slope
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_batches_equal_nibabel(tmp_path, rng, case, suffix):
    dtype, slope, inter, two = CASES[case]
    raw = (50 + 40 * rng.random((*SHAPE, 17))).astype(dtype)
    path = save(tmp_path / f"b{suffix}", raw, slope=slope, inter=inter, nifti2=two)
    ref = nib.load(path).get_fdata(dtype=np.float32)
    for start, stop, batch in ((0, 17, 17), (3, 17, 5), (2, 9, 1)):
        np.testing.assert_array_equal(read_all(path, start, stop, batch), ref[..., start:stop])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_batches_from_an_fsspec_url(tmp_path, rng, suffix):
    raw = rng.integers(-300, 300, (*SHAPE, 9)).astype(np.int16)
    path = save(tmp_path / f"r{suffix}", raw, slope=0.25, inter=1.0)
    url = f"memory://cfhdask-reader/r{suffix}"
    with open(path, "rb") as src, fsspec.open(url, "wb") as dst:
        dst.write(src.read())
    ref = nib.load(path).get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(read_all(url, 4, 9, 2), ref[..., 4:])


def test_isal_decompresses_when_installed():
    isal = pytest.importorskip("isal")
    assert nifti._gzip.__name__.startswith(isal.__name__)


def test_bad_gzip_data_are_errors(tmp_path, rng):
    raw = rng.standard_normal((*SHAPE, 12)).astype(np.float32)
    good = Path(save(tmp_path / "g.nii.gz", raw)).read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(CfhdaskInputError, match=r"cut.nii.gz: unreadable or truncated data "
                                                r"\(volumes \d+-11\)"):
        read_all(str(cut), 0, 12, 4)
    # a flipped bit in the gzip trailer: the CRC check at the end of the data fails
    crc = tmp_path / "crc.nii.gz"
    crc.write_bytes(good[:-8] + bytes([good[-8] ^ 1]) + good[-7:])
    assert gzip.decompress(good)  # the original is fine
    with pytest.raises(CfhdaskInputError, match="crc.nii.gz: unreadable or truncated"):
        read_all(str(crc), 0, 12, 4)
    read_all(str(crc), 0, 8, 4)  # stopping before the end does not reach the check
    with pytest.raises(CfhdaskInputError, match="nope.nii.gz: no such file"):
        read_all(str(tmp_path / "nope.nii.gz"), 0, 1, 1)


def test_corrupt_deflate_data_are_errors(tmp_path):
    """Damaged compressed data: a bad CRC or an invalid deflate stream (zlib's or ISA-L's
    own error), each a one-line input error."""
    data = np.random.default_rng(0).integers(0, 50, (*SHAPE, 12)).astype(np.int16)
    good = Path(save(tmp_path / "g.nii.gz", data)).read_bytes()
    causes = set()
    for start in range(len(good) // 2, len(good) // 2 + 40):
        mid = bytearray(good)
        mid[start:start + 8] = bytes(b ^ 0xFF for b in mid[start:start + 8])
        bad = tmp_path / f"mid{start}.nii.gz"
        bad.write_bytes(bytes(mid))
        with pytest.raises(CfhdaskInputError, match=f"mid{start}.nii.gz: unreadable") as err:
            read_all(str(bad), 0, 12, 5)
        causes.add(type(err.value.__cause__).__name__)
    assert "BadGzipFile" in causes and len(causes) > 1  # CRC errors and deflate errors
