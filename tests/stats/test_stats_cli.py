"""``cfhdask stats`` on a real (tiny) cohort store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cfhdask.cli import main
from cfhdask.grid import MNI_3MM_AFFINE, xyz_to_ijk


@pytest.fixture
def store_and_table(tmp_path, rng, dataset_factory, store_writer):
    ds = dataset_factory(rng, n_per_group=8, box=(6, 6, 5), effect=4.0, sigma_mm=4.0)
    store_writer(tmp_path / "store.zarr", ds["Y"], ds["ijk"], ds["table"].participant_id, rng)
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


DEAD = "tcp://127.0.0.1:9"  # nobody listens: a command that reached for its cluster would say so


def _stats(store, table, out, *extra):
    return ["stats", store, "--participants", table, "--group", "group", "--groups",
            "patient,control", "--out", str(out), *extra]


@pytest.mark.parametrize("edit, options, words", [
    ({"age": "fifty"}, ["--covariates", "age"], ["'age'", "sub-01", "'fifty'", "categorical"]),
    ({"site": "lab"}, ["--covariates", "site", "--categorical", "site"],
     ["'site'", "single value"]),
    ({"dose": 3.0}, ["--covariates", "dose"], ["'dose'", "constant"]),
    ({}, ["--covariates", "shoe_size"], ["shoe_size"]),
    ({}, ["--groups", "patient,nobody"], ["nobody"]),
    ({}, ["--combine-runs", "ses-9"], ["ses-9"]),
    ({}, ["--combine-runs", "median"], ["--combine-runs", "median"]),
])
def test_bad_design_is_one_line_before_any_cluster(store_and_table, tmp_path, capsys, edit,
                                                   options, words):
    """The design is checked before the cluster: the dead scheduler is never contacted and
    --out is never created."""
    store, table = store_and_table
    frame = pd.read_csv(table, sep="\t")
    for col, value in edit.items():
        frame[col] = frame.get(col, value)
        frame[col] = frame[col].astype(object)
        frame.loc[0, col] = value
    frame.to_csv(table, sep="\t", index=False)
    out = tmp_path / "o"
    argv = _stats(store, table, out, "--scheduler", DEAD, "--n-perm", "8")
    if "--groups" in options:
        argv = [a for a in argv if a != "patient,control"]
        argv.remove("--groups")
    assert main(argv + options) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and DEAD not in err, err
    assert all(w in err for w in words), err
    assert not out.exists()


def test_categorical_covariate_and_palm_z(store_and_table, tmp_path, capsys, local_client):
    store, table = store_and_table
    frame = pd.read_csv(table, sep="\t")
    frame["site"] = ["A", "B", "C"] * (len(frame) // 3) + ["A"] * (len(frame) % 3)
    frame.to_csv(table, sep="\t", index=False)
    out = tmp_path / "o"
    assert main(_stats(store, table, out, "--covariates", "age,sex,site", "--categorical",
                       "sex,site", "--n-perm", "16", "--tfce", "--mass-tfce-on", "z",
                       "--scheduler", local_client.scheduler.address)) == 0
    meta = json.loads((out / "stats.json").read_text())
    assert meta["design_columns"][2:] == ["age", "sex[M]", "site[B]", "site[C]"]
    assert meta["categorical"] == ["sex", "site"] and meta["mass_tfce_on"] == "z"
    assert set(meta["tfce_dh"]) == {"patient_gt_control", "control_gt_patient"}


def test_too_few_permutations_and_rerun_into_the_same_out(store_and_table, tmp_path, capsys,
                                                          local_client):
    store, table = store_and_table
    out = tmp_path / "o"
    sched = ["--scheduler", local_client.scheduler.address]
    assert main(_stats(store, table, out, "--n-perm", "12", "--tfce", *sched)) == 0
    assert list(out.glob("*_tfce.nii.gz")) and list(out.glob("*_null_max_tfce.npy"))
    (out / "my_notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(_stats(store, table, out, "--n-perm", "1", "--no-tfce", *sched, "-q")) == 0
    text = capsys.readouterr()
    assert "WARNING: only 1 permutation(s)" in text.out
    assert "INFO" not in text.err  # -q after the sub-command
    meta = json.loads((out / "stats.json").read_text())
    assert meta["n_perm"] == 1 and "only 1 permutation" in meta["warnings"][0]
    # nothing of the first run is left to mix with the second; the user's file is kept
    assert not list(out.glob("*tfce*")) and (out / "my_notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        meta["outputs"] + ["my_notes.txt", "stats.json"])


def test_scheduler_not_an_address_is_one_line(store_and_table, tmp_path, capsys):
    store, table = store_and_table
    assert main(_stats(store, table, tmp_path / "o", "--scheduler", "not-an-address",
                       "-v")) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert errors == [ln for ln in errors if "not-an-address" in ln] and len(errors) == 1
    assert "Traceback" not in err  # -v accepted after the sub-command
