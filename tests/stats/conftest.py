"""Fixtures of the group-inference tests: tiny CFH-like data on the 3 mm grid."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cfhdask.grid import MNI_3MM_AFFINE, MNI_3MM_SHAPE, ijk_to_xyz, xyz_to_ijk

#: Planted centre: left putamen (AAL Putamen_L, Harvard-Oxford Left_Putamen).
PLANTED_XYZ = np.array([-24.0, 6.0, 3.0])


def make_dataset(rng, n_per_group=12, box=(9, 10, 8), effect=1.5, sigma_mm=5.0,
                 centre_xyz=PLANTED_XYZ, nan_voxels=0):
    """Maps (n, V) on a box of the 3 mm grid around ``centre_xyz``, with a table."""
    c = xyz_to_ijk(centre_xyz, MNI_3MM_AFFINE)[0]
    lo = c - np.array(box) // 2
    ijk = np.argwhere(np.ones(box, bool)) + lo
    xyz = ijk_to_xyz(ijk, MNI_3MM_AFFINE)
    n = 2 * n_per_group
    group = np.array(["patient"] * n_per_group + ["control"] * n_per_group)
    age = rng.normal(40, 10, n)
    sex = rng.choice(["F", "M"], n)
    Y = rng.standard_normal((n, len(ijk))) + 0.02 * (age[:, None] - 40)
    d2 = ((xyz - centre_xyz) ** 2).sum(axis=1)
    Y[group == "patient"] += effect * np.exp(-d2 / (2 * sigma_mm**2))
    if nan_voxels:
        Y[rng.integers(0, n, nan_voxels), rng.choice(len(ijk), nan_voxels, replace=False)] = np.nan
    table = pd.DataFrame({
        "participant_id": [f"sub-{i + 1:02d}" for i in range(n)],
        "group": group, "age": age, "sex": sex,
    })
    return {"Y": Y, "ijk": ijk, "table": table, "grid_shape": MNI_3MM_SHAPE,
            "affine": MNI_3MM_AFFINE, "centre_ijk": c}


def write_store(path, Y, ijk, subjects, rng):
    """A cohort store at ``path`` holding the maps ``Y`` (n, V over ``ijk``) as CFH maps."""
    from cfhdask.io.store import CohortStore

    mask = np.zeros(MNI_3MM_SHAPE, bool)
    mask[tuple(ijk.T)] = True
    store = CohortStore.create(str(path), grid_shape=MNI_3MM_SHAPE, affine=MNI_3MM_AFFINE,
                               mask=mask, mask_info={"source": "test"})
    order = np.ravel_multi_index(tuple(store.ijk.T), MNI_3MM_SHAPE)
    col = {int(f): i for i, f in enumerate(np.ravel_multi_index(tuple(ijk.T), MNI_3MM_SHAPE))}
    perm = np.array([col[int(f)] for f in order])
    for i, sub in enumerate(subjects):
        store.write_subject(sub, rng.normal(size=(store.n_voxels, 3)).astype(np.float32),
                            {"tr": 2.0})
        cfh = Y[i, perm].astype(np.float32)
        store.write_cfh(sub, cfh, np.full(store.n_voxels, -1, np.int32), np.tanh(cfh), {})
    return store


@pytest.fixture(scope="session")
def store_writer():
    """:func:`write_store`, for tests that build a cohort store from maps."""
    return write_store


@pytest.fixture
def dataset(rng):
    """A planted patient > control effect in the left putamen."""
    return make_dataset(rng, effect=2.5, sigma_mm=6.0)


@pytest.fixture
def dataset_factory():
    """:func:`make_dataset`, for tests that need other sizes or effects."""
    return make_dataset


#: The null cohort of the null-check tests: controls only, no effect, a coarse grid.
NULL_COHORT = {"n_controls": 20, "n_volumes": 40, "grid": "9mm", "seed": 3}


@pytest.fixture(scope="session")
def null_cohort(tmp_path_factory):
    """CFH maps of a null cohort made by the real pipeline: simulate (effect 0), ingest, cfh.

    Returns ``(store, participants_path)``.
    """
    from distributed import Client, LocalCluster

    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.prep.ingest import ingest
    from cfhdask.sim.cohort import simulate_cohort

    root = tmp_path_factory.mktemp("null_cohort")
    table = simulate_cohort(root / "sim", n_patients=0, effect_size=0.0, n_jobs=1,
                            layout="bids", **NULL_COHORT)
    files = table.attrs["files"]
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        store = ingest([files[s]["bold"] for s in sorted(files)], str(root / "null.zarr"),
                       client=client)
        compute_cfh(store, client=client, show_progress=False)
    return store, str(root / "sim" / "participants.tsv")
