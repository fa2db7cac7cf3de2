"""Fixtures of the I/O tests: tiny NIfTI inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from iohelpers import AFFINE, SHAPE, write_nifti


@pytest.fixture
def user_mask() -> np.ndarray:
    """A box mask on SHAPE straddling the midline (i = 5)."""
    m = np.zeros(SHAPE, dtype=bool)
    m[2:9, 3:10, 2:6] = True
    return m


@pytest.fixture
def make_bold(tmp_path, rng):
    """Factory: write a random 4D BOLD image and return (path, data)."""

    def _make(name: str, n_vol: int = 20, shape=SHAPE, affine=AFFINE, dtype=np.float32,
              tr: float | None = 2.0, folder: Path | None = None):
        data = (100 + 10 * rng.standard_normal((*shape, n_vol))).astype(dtype)
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_nifti(path, data, affine, tr), data

    return _make


@pytest.fixture
def mask_file(tmp_path, user_mask) -> str:
    """The user mask saved as NIfTI on the test grid."""
    return write_nifti(tmp_path / "mask.nii.gz", user_mask.astype(np.uint8), AFFINE)
