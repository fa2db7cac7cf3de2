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




BANDED_GRID = (9, 6, 4)
BANDED_AFFINE = np.array([[-2.0, 0, 0, 8], [0, 2, 0, -4], [0, 0, 2, -2], [0, 0, 0, 1]])  # x=0 at i=4


def make_banded_store(path, rng, lengths=(100, 120, 90, 110), constant=((), (2, 130), (), ()),
                      unfiltered=(3,), voxel_chunk=16):
    """Subjects whose series are band-passed 0.01-0.1 Hz at TR 2 s (low rank, as denoised
    fMRI), of different lengths, with constant voxels; the subjects in ``unfiltered`` are
    white noise around a shared signal (full rank)."""
    from cfhref import bandpassed_pairs

    st = CohortStore.create(str(path), grid_shape=BANDED_GRID, affine=BANDED_AFFINE,
                            mask=np.ones(BANDED_GRID, bool), mask_info={"source": "test"},
                            voxel_chunk=voxel_chunk)
    for k, (t, const) in enumerate(zip(lengths, constant, strict=True)):
        if k in unfiltered:
            x = bold(rng, st.n_voxels, t, const)
        else:
            left, right = bandpassed_pairs(rng, st.n_left, st.n_right, t, 2.0, n_pairs=12)
            x = np.full((st.n_voxels, t), 100.0)
            x[st.left], x[st.right] = left, right
            x[st.midline] = rng.standard_normal((st.n_midline, t)) + 100
            x[list(const)] = 3.0
        st.write_subject(f"sub-{k + 1:02d}", x.astype(np.float32),
                         {"tr": 2.0, "n_volumes": t})
    return st
