"""``cfhdask stats --metric``: every per-subject map of a store, and clear errors."""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest

from cfhdask.cli import main
from cfhdask.errors import CfhdaskInputError
from cfhdask.grid import MNI_3MM_AFFINE, MNI_3MM_SHAPE
from cfhdask.io.store import CohortStore, open_store
from cfhdask.stats.inference import group_inference


@pytest.fixture
def store_and_table(tmp_path, rng, dataset_factory):
    """The planted maps written as AI, and a VMHC map with the effect elsewhere removed."""
    ds = dataset_factory(rng, n_per_group=6, box=(5, 5, 4), effect=4.0, sigma_mm=4.0)
    mask = np.zeros(MNI_3MM_SHAPE, bool)
    mask[tuple(ds["ijk"].T)] = True
    store = CohortStore.create(str(tmp_path / "store.zarr"), grid_shape=MNI_3MM_SHAPE,
                               affine=MNI_3MM_AFFINE, mask=mask, mask_info={"source": "test"})
    col = {tuple(v): i for i, v in enumerate(ds["ijk"])}
    perm = np.array([col[tuple(v)] for v in store.ijk])
    for i, sub in enumerate(ds["table"].participant_id):
        store.write_subject(sub, rng.normal(size=(store.n_voxels, 5)).astype(np.float32), {})
        ai = ds["Y"][i, perm].astype(np.float32)
        store.write_metric(sub, "ai", {"ai": ai}, {"ai_params": {"threshold": 0.25}})
    table = tmp_path / "participants.tsv"
    ds["table"].to_csv(table, sep="\t", index=False)
    return store.url, str(table), ds


def test_stats_on_each_metric_and_errors(store_and_table, tmp_path, capsys, local_client):
    url, table, ds = store_and_table
    base = ["stats", url, "--participants", table, "--group", "group", "--groups",
            "patient,control", "--n-perm", "20", "--scheduler",
            local_client.scheduler.address]
    assert main([*base, "--metric", "ai", "--out", str(tmp_path / "ai")]) == 0
    out = capsys.readouterr().out
    assert "metric ai:" in out and "patient_gt_control" in out
    meta = json.loads((tmp_path / "ai" / "stats.json").read_text())
    assert meta["metric"] == "ai" and meta["metric_params"] == {"threshold": 0.25}
    # maps that were never computed: one line naming the option and the command to run
    for metric, command in (("vmhc", "cfhdask vmhc"), ("cfh", "cfhdask cfh")):
        assert main([*base, "--metric", metric, "--out", str(tmp_path / metric)]) == 2
        err = capsys.readouterr().err
        assert f"--metric {metric}" in err and command in err and len(err.splitlines()) == 1
        assert not (tmp_path / metric).exists()
    with pytest.raises(SystemExit):
        main([*base, "--metric", "r_max", "--out", str(tmp_path / "x")])
    assert "--metric" in capsys.readouterr().err
    st = open_store(url)
    with pytest.raises(CfhdaskInputError, match="metric"):
        group_inference(st, table, group="group", metric="alff", compute="local")
    with pytest.raises(CfhdaskInputError, match="no ai maps .* for sub-99"):
        group_inference(st, table, group="group", metric="ai", subjects=["sub-99"],
                        compute="local")


def test_default_metric_follows_the_counterpart_setting(store_and_table, tmp_path):
    url, table, _ = store_and_table
    st = open_store(url, mode="r+")
    for s in st.subjects():
        z = st.cfh_maps([s], var="ai").values[0]
        st.write_cfh(s, z, np.full(st.n_voxels, -1, np.int32), np.tanh(z), {},
                     metric="cfh_subject")
    with pytest.raises(CfhdaskInputError, match="--metric cfh: no subject"):
        group_inference(st, table, group="group", n_perm=10, compute="local", atlases=[])
    with dask.config.set({"cfhdask.cfh.counterpart": "subject"}):
        res = group_inference(st, table, group="group", n_perm=10, compute="local",
                              atlases=[])
    assert res.params["metric"] == "cfh_subject"
