"""``cfhdask stats`` on a real (tiny) cohort store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cfhdask.cli import main
from cfhdask.grid import MNI_3MM_AFFINE, MNI_3MM_SHAPE, xyz_to_ijk


@pytest.fixture
def store_and_table(tmp_path, rng, dataset_factory):
    from cfhdask.io.store import CohortStore

    ds = dataset_factory(rng, n_per_group=8, box=(6, 6, 5), effect=4.0, sigma_mm=4.0)
    mask = np.zeros(MNI_3MM_SHAPE, bool)
    mask[tuple(ds["ijk"].T)] = True
    store = CohortStore.create(str(tmp_path / "store.zarr"), grid_shape=MNI_3MM_SHAPE,
                               affine=MNI_3MM_AFFINE, mask=mask, mask_info={"source": "test"})
    order = np.ravel_multi_index(tuple(store.ijk.T), MNI_3MM_SHAPE)
    col = {int(f): i for i, f in enumerate(np.ravel_multi_index(tuple(ds["ijk"].T),
                                                                MNI_3MM_SHAPE))}
    perm = np.array([col[int(f)] for f in order])
    for i, sub in enumerate(ds["table"].participant_id):
        store.write_subject(sub, rng.normal(size=(store.n_voxels, 5)).astype(np.float32),
                            {"tr": 2.0})
        cfh = ds["Y"][i, perm].astype(np.float32)
        store.write_cfh(sub, cfh, np.full(store.n_voxels, -1, np.int32), np.tanh(cfh), {})
    table = tmp_path / "participants.tsv"
    ds["table"].to_csv(table, sep="\t", index=False)
    return str(tmp_path / "store.zarr"), str(table)


def test_cli_stats_writes_outputs_and_prints_table(store_and_table, tmp_path, capsys,
                                                   local_client):
    store, table = store_and_table
    out = tmp_path / "out"
    rc = main(["stats", store, "--participants", table, "--group", "group",
               "--groups", "patient,control", "--covariates", "age,sex", "--n-perm", "48",
               "--batch-size", "16", "--scheduler", local_client.scheduler.address,
               "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "patient_gt_control" in text and "Putamen_L" in text
    tsv = pd.read_csv(out / "clusters.tsv", sep="\t")
    top = tsv[tsv.contrast == "patient_gt_control"].iloc[0]
    ijk = xyz_to_ijk([top.peak_x, top.peak_y, top.peak_z], MNI_3MM_AFFINE)[0]
    assert np.abs(ijk - xyz_to_ijk([-24, 6, 3], MNI_3MM_AFFINE)[0]).max() <= 1
    assert (out / "stats.json").exists()


def test_cli_stats_bad_column_exits_2(store_and_table, tmp_path, capsys, local_client):
    store, table = store_and_table
    rc = main(["stats", store, "--participants", table, "--group", "diagnosis",
               "--n-perm", "8", "--scheduler", local_client.scheduler.address,
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "diagnosis" in capsys.readouterr().err
