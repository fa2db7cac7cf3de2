"""`cfhdask run` end to end on a tiny simulated cohort, on a real LocalCluster."""

from __future__ import annotations

import os

import pandas as pd
import pytest
import yaml

from cfhdask.cli import main
from cfhdask.sim.cohort import simulate_cohort
from cfhdask.study.pipeline import run_study


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    simulate_cohort(str(d), n_patients=6, n_controls=6, n_volumes=60, grid="6mm",
                    layout="fmriprep", seed=3)
    return d


def study(cohort, out, **stats):
    return {"name": "tiny", "output": str(out),
            "inputs": {"bids_derivatives": str(cohort)},
            "participants": str(cohort / "participants.tsv"),
            "preprocessing": {"drop_volumes": 4},
            "covariates": ["age", "sex", "education", "SDS", "SAS"],
            "stats": {"n_perm": 40, "seed": 1, **stats},
            # the pipeline is tested here, the figure rendering in tests/report: small figures
            "report": {"dpi": 60, "max_cluster_figures": 1, "vector_format": "svg"}}


def _atlas_tasks(dask_scheduler=None) -> dict:
    return {k: ts.state for k, ts in dask_scheduler.tasks.items()
            if str(k).startswith("grid_atlas-")}


def test_run_study_end_to_end_and_reuse(cohort, tmp_path, local_client):
    cfg = study(cohort, tmp_path / "out")
    atlas_tasks = {}

    def on_stage(name, event):  # the atlases' tasks as the scheduler has them
        if event == "start":
            atlas_tasks[name] = local_client.run_on_scheduler(_atlas_tasks)

    res = run_study(cfg, client=local_client, on_stage=on_stage)
    assert set(res.timings) == {"ingest", "cfh", "stats", "clinical", "report"}
    # both atlases were sampled by workers during the cfh stage, not after the permutations
    assert atlas_tasks["ingest"] == {} and len(atlas_tasks["stats"]) == 2
    assert set(atlas_tasks["stats"].values()) <= {"processing", "memory"}
    assert os.path.exists(res.report) and os.path.getsize(res.report) > 10_000
    assert os.path.exists(os.path.join(res.stats_dir, "clusters.tsv"))
    t1 = pd.read_csv(tmp_path / "out" / "clinical" / "table1.tsv", sep="\t")
    assert {"age", "sex", "SAS", "SDS"} <= set(t1["variable"])
    from cfhdask.io.store import open_store

    store = open_store(res.store)
    assert len(store.subjects("cfh")) == 12
    assert store.subject_attrs("sub-P01")["n_volumes"] == 56  # 60 - 4 dropped

    # same parameters: the stats stage is reused, nothing recomputed
    again = run_study(cfg, client=local_client)
    assert again.stats_dir == res.stats_dir and "stats" in again.skipped
    # another parameter: a new stats folder, the old one untouched
    other = run_study(study(cohort, tmp_path / "out", n_perm=30), client=local_client)
    assert other.stats_dir != res.stats_dir and "stats" not in other.skipped
    assert os.path.exists(os.path.join(res.stats_dir, "stage.json"))


def test_run_study_with_null_check_stage(cohort, tmp_path, local_client):
    cfg = {**study(cohort, tmp_path / "out"), "covariates": ["age"],
           "null_check": {"enabled": True, "n_splits": 4, "n_perm": 20}}
    res = run_study(cfg, client=local_client)
    assert "null_check" in res.timings
    (folder,) = [d for d in os.listdir(tmp_path / "out") if d.startswith("null-check-")]
    summary = pd.read_csv(tmp_path / "out" / folder / "null_check.tsv", sep="\t")
    assert (summary.n_tests == 8).all()  # 6 controls: pseudo-groups of 3 (6 + 6 do not fit)
    again = run_study(cfg, client=local_client)
    assert again.skipped["null_check"].startswith("reused ")
    page = (tmp_path / "out" / "report.html").read_text()
    assert 'id="null-check"' in page and "Cluster mass FWE" in page
    assert (tmp_path / "out" / "figures" / "null_check_fwer.png").exists()


def test_cli_run_rejects_unknown_column_before_compute(cohort, tmp_path, capsys):
    cfg = study(cohort, tmp_path / "out")
    cfg["covariates"] = ["age", "shoe_size"]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "shoe_size" in err and "covariates" in err
    assert not (tmp_path / "out").exists()


def test_cli_run_check_lists_inputs(cohort, tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study(cohort, tmp_path / "out")))
    assert main(["run", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("sub-")]
    assert len(lines) == 12 and all(ln.endswith("_bold.nii.gz") for ln in lines)
