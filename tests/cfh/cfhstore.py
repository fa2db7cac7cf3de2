"""A tiny cohort store for the CFH, VMHC and autonomy-index tests (imported by the tests
and by ``conftest.py``; a module of its own, so that no test imports a ``conftest``)."""

from __future__ import annotations

import numpy as np

from cfhdask.io.store import CohortStore

GRID = (7, 4, 3)
AFFINE = np.array([[-2.0, 0, 0, 6], [0, 2, 0, -4], [0, 0, 2, -2], [0, 0, 0, 1]])  # x=0 at i=3


def bold(rng, n, t, constant=()):
    """Series with a shared signal (strong correlations) and ``constant`` flat voxels."""
    s = rng.standard_normal(t)
    x = rng.standard_normal((n, t)) + rng.random((n, 1)) * s + 50
    x[list(constant)] = 7.0
    return x.astype(np.float32)


def make_store(path, rng, lengths=(30, 45), constant=((), (2, 41)), voxel_chunk=10):
    st = CohortStore.create(str(path), grid_shape=GRID, affine=AFFINE,
                            mask=np.ones(GRID, bool), mask_info={"source": "test"},
                            voxel_chunk=voxel_chunk)
    for k, (t, const) in enumerate(zip(lengths, constant, strict=True)):
        st.write_subject(f"sub-{k + 1:02d}", bold(rng, st.n_voxels, t, const), {"tr": 2.0})
    return st


