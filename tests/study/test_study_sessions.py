"""A real cohort end to end: sessions, runs and a participant without confounds.

An fMRIPrep layout (6 mm grid) where sub-P01 has two sessions (with a
``sessions.tsv`` giving a session-level SAS), sub-C01 two runs, and sub-P03 no
confounds table.  ``cfhdask run`` must list the skip, ingest the others, give
one design row per participant (never one per run) and exit 1.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cfhdask.cli import main
from cfhdask.sim.cohort import simulate_cohort

SPACE = "space-MNI152NLin2009cAsym"
#: a port nobody listens on: a command that tried to reach its cluster would say so
DEAD = "tcp://127.0.0.1:9"


def _move_run(root: Path, src: str, dst: str, folder: str) -> None:
    """Rename every file of subject ``src`` to the entities ``dst`` under ``folder``."""
    moved = root / f"moving-{src}"
    (root / src).rename(moved)
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    for f in (moved / "func").iterdir():
        f.rename(out / f.name.replace(f"{src}_task-rest", dst))
    shutil.rmtree(moved)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sessions") / "deriv"
    simulate_cohort(str(root), n_patients=7, n_controls=7, n_volumes=48, grid="6mm",
                    layout="fmriprep", seed=5, effect_size=2.0)
    # sub-P01: two sessions (sub-P05's run becomes its second session)
    _move_run(root, "sub-P01", "sub-P01_ses-1_task-rest", "sub-P01/ses-1/func")
    _move_run(root, "sub-P05", "sub-P01_ses-2_task-rest", "sub-P01/ses-2/func")
    # sub-C01: two runs of one session (sub-C05's run becomes its run 2)
    _move_run(root, "sub-C01", "sub-C01_task-rest_run-1", "sub-C01/func")
    _move_run(root, "sub-C05", "sub-C01_task-rest_run-2", "sub-C01/func")
    # sub-P03 lacks its confounds table
    (root / "sub-P03" / "func" / "sub-P03_task-rest_desc-confounds_timeseries.tsv").unlink()
    table = pd.read_csv(root / "participants.tsv", sep="\t")
    table = table[~table.participant_id.isin(["sub-P05", "sub-C05"])]
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    (root / "sub-P01" / "sub-P01_sessions.tsv").write_text(
        "session_id\tSAS\nses-1\t30\nses-2\t50\n")
    return root


def study(cohort: Path, out: Path, **extra) -> dict:
    cfg = {"name": "sessions", "output": str(out),
           "inputs": {"bids_derivatives": str(cohort)},
           "participants": str(cohort / "participants.tsv"),
           "groups": {"column": "group", "levels": ["patient", "control"]},
           "preprocessing": {"drop_volumes": 4},
           "covariates": ["age", "sex", "SAS"],
           "clinical": {"variables": ["JRS_total"]},
           "stats": {"n_perm": 30, "seed": 2, "cluster_p": 0.01},
           "report": {"dpi": 60, "max_cluster_figures": 1, "vector_format": "svg"}}
    cfg.update(extra)
    return cfg


def _write(tmp_path: Path, cfg: dict) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_check_lists_the_skip_and_the_design(cohort, tmp_path, capsys):
    path = _write(tmp_path, study(cohort, tmp_path / "out"))
    assert main(["run", path, "--check"]) == 1
    out = capsys.readouterr().out
    runs = [ln.split("\t")[0] for ln in out.splitlines() if ln.startswith("sub-")]
    assert "sub-P01_ses-1" in runs and "sub-P01_ses-2" in runs
    assert "sub-C01_run-1" in runs and "sub-C01_run-2" in runs and len(runs) == 13
    assert "SKIP sub-P03\t" in out and "no confounds table" in out
    assert "design: 11 participants" in out and "2 with several, combined by mean" in out
    assert not (tmp_path / "out").exists()


def test_clinical_scores_absent_in_the_first_group_is_an_error(cohort, tmp_path, capsys):
    """Levels not set: sorted, 'control' comes first, and controls have no JRS scores."""
    cfg = study(cohort, tmp_path / "out", groups={"column": "group"})
    assert main(["run", _write(tmp_path, cfg), "--check"]) == 2
    err = capsys.readouterr().err
    assert "clinical.variables" in err and "JRS_total" in err and "'control'" in err
    assert "groups.levels" in err and "[patient, control]" in err
    assert not (tmp_path / "out").exists()


def test_run_end_to_end_one_row_per_participant(cohort, tmp_path, capsys, local_client):
    out = tmp_path / "out"
    cfg = study(cohort, out)
    cfg["stats"]["alpha"] = 0.99  # every cluster counts: the clinical stage runs on them
    path = _write(tmp_path, cfg)
    old = os.umask(0o022)
    try:
        assert main(["run", path, "--scheduler", local_client.scheduler.address]) == 1
    finally:
        os.umask(old)
    text = capsys.readouterr().out
    assert "Skipped: sub-P03:" in text and "Report:" in text
    stats_dir = next(out.glob("stats-*"))
    meta = json.loads((stats_dir / "stats.json").read_text())
    assert meta["n_maps"] == 13 and len(meta["subjects"]) == 11
    assert meta["maps"]["sub-P01"] == ["sub-P01_ses-1", "sub-P01_ses-2"]
    assert meta["maps"]["sub-C01"] == ["sub-C01_run-1", "sub-C01_run-2"]
    assert "sub-P03" not in meta["subjects"] and meta["combine_runs"] == "mean"
    # intercept, group, age, sex, SAS: 11 participants leave 6 degrees of freedom
    assert meta["design_columns"] == ["intercept", "group[patient]", "age", "sex[M]", "SAS"]
    assert meta["df"] == 11 - 5
    html = (out / "report.html").read_text()
    assert ("2 participant(s) with several sessions or runs entered with the mean of their "
            "maps (13 maps in all)") in html
    values = pd.read_csv(out / "clinical" / "cluster_values.tsv", sep="\t", index_col=0)
    assert sorted(values.index) == sorted(meta["subjects"])  # one row per participant
    corr = pd.read_csv(out / "clinical" / "correlations.tsv", sep="\t")
    assert len(corr) and (corr["n"] <= 5).all()  # the 5 patients analysed, never 6 maps
    # results are written with the umask's permissions: lab mates can read them
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any("cohort-" in str(p) and p.name == "zarr.json" for p in files)
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}


def test_a_named_session_without_maps_is_an_error_before_compute(cohort, tmp_path, capsys):
    # only sub-P01 has a ses-2: every other participant would be left without a map
    path = _write(tmp_path, study(cohort, tmp_path / "out", combine_runs="ses-2"))
    assert main(["run", path, "--check"]) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("cfhdask run: error:")]
    assert len(errors) == 1 and "no map for combine_runs 'ses-2'" in errors[0]
    path = _write(tmp_path, study(cohort, tmp_path / "out", combine_runs="session-2"))
    assert main(["run", path, "--check"]) == 2
    assert "'combine_runs'" in capsys.readouterr().err


def test_images_of_no_participant_fail_before_ingest(cohort, tmp_path, capsys):
    table = pd.read_csv(cohort / "participants.tsv", sep="\t")
    other = tmp_path / "participants.tsv"
    table[table.participant_id != "sub-C02"].to_csv(other, sep="\t", index=False)
    cfg = study(cohort, tmp_path / "out", participants=str(other))
    cfg["cluster"] = {"scheduler": DEAD}
    t0 = time.perf_counter()
    assert main(["run", _write(tmp_path, cfg)]) == 2
    err = capsys.readouterr().err
    assert "sub-C02" in err and "match no participant_id" in err and DEAD not in err
    assert not (tmp_path / "out").exists() and time.perf_counter() - t0 < 15


@pytest.mark.parametrize("edit, key, words", [
    ({"age": "fifty"}, "covariates", ["'age'", "fifty", "sub-P02"]),
    ({"education": 12}, "covariates", ["'education'", "constant"]),
])
def test_bad_covariates_fail_before_any_cluster(cohort, tmp_path, capsys, edit, key, words):
    table = pd.read_csv(cohort / "participants.tsv", sep="\t")
    for col, value in edit.items():
        table[col] = table[col].astype(object)
        table.loc[table.participant_id == "sub-P02", col] = value
        if col == "education":
            table[col] = value
    bad = tmp_path / "participants.tsv"
    table.to_csv(bad, sep="\t", index=False)
    cfg = study(cohort, tmp_path / "out", participants=str(bad),
                covariates=["age", "sex", "education"])
    cfg["cluster"] = {"scheduler": DEAD}
    assert main(["run", _write(tmp_path, cfg)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and DEAD not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stats, key", [({"n_perm": -3}, "stats.n_perm"),
                                        ({"mass_tfce_on": "p"}, "stats.mass_tfce_on")])
def test_bad_yaml_values_fail_at_check(cohort, tmp_path, capsys, stats, key):
    cfg = study(cohort, tmp_path / "out")
    cfg["stats"].update(stats)
    assert main(["run", _write(tmp_path, cfg), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"'{key}'" in err and "--n-perm" not in err and len(err.strip().splitlines()) == 1


