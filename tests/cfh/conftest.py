"""Fixtures of the CFH, VMHC and autonomy-index tests."""

from __future__ import annotations

import pytest
from cfhstore import make_store


@pytest.fixture
def store(tmp_path, rng):
    """Two subjects of different lengths; sub-02 has constant voxels left #2 and right #5."""
    st = make_store(tmp_path / "cohort.zarr", rng)
    assert st.n_left == st.n_right == 36 and st.n_midline == 12
    return st
