"""A study of several metrics: one group analysis, stats folder and report section each."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from cfhdask.errors import CfhdaskInputError
from cfhdask.sim.cohort import simulate_cohort
from cfhdask.study.config import validate_config
from cfhdask.study.pipeline import run_study


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    simulate_cohort(str(d), n_patients=5, n_controls=5, n_volumes=50, grid="6mm",
                    layout="fmriprep", seed=4)
    return d


def _study(cohort, out, **extra):
    return {"name": "metrics", "output": str(out), "inputs": {"bids_derivatives": str(cohort)},
            "participants": str(cohort / "participants.tsv"),
            "groups": {"column": "group", "levels": ["patient", "control"]},
            "preprocessing": {"drop_volumes": 2}, "covariates": ["age"],
            "clinical": {"variables": ["illness_duration"]},
            "stats": {"n_perm": 20, "seed": 2},
            "report": {"dpi": 60, "max_cluster_figures": 1, "vector_format": "svg"}, **extra}


def _check_run(res, metrics):
    assert list(res.metrics) == metrics
    dirs = {m: os.path.basename(r["stats_dir"]) for m, r in res.metrics.items()}
    assert all(d.startswith(f"stats-{m}-") for m, d in dirs.items())
    assert res.stats_dir == res.metrics[metrics[0]]["stats_dir"]
    for m, r in res.metrics.items():
        meta = pd.read_json(os.path.join(r["stats_dir"], "stats.json"), typ="series")
        assert meta["metric"] == m
    if len(res.correlations):
        assert set(res.correlations["metric"]) <= set(metrics)
    return open(res.report).read()


def test_two_metrics_get_their_analyses_and_report_sections(cohort, tmp_path, local_client):
    res = run_study(_study(cohort, tmp_path / "out", metrics=["cfh", "ai"],
                           autonomy={"threshold": 0.3}), client=local_client)
    html = _check_run(res, ["cfh", "ai"])
    for text in ("autonomy index: patient &gt; control: clusters",
                 "CFH (group-defined counterpart): patient &gt; control: clusters",
                 "ai_permutation_null_distributions", "group_mean_ai", "group_mean_cfh",
                 "group counterpart (one for the cohort",
                 "over all 10 subjects of the cohort store (no group label is used",
                 "exceeds r = 0.3", "each metric in its own analysis"):
        assert text in html, text
    from cfhdask.io.store import open_store

    store = open_store(res.store)
    assert store.metric_params("sub-P01", "ai")["threshold"] == 0.3
    assert store.group_counterpart()["reference"]["kind"] == "all"


@pytest.mark.slow
def test_three_metrics_and_reuse(cohort, tmp_path, local_client):
    cfg = _study(cohort, tmp_path / "out", metrics=["cfh", "vmhc", "ai"])
    res = run_study(cfg, client=local_client)
    assert "VMHC: patient &gt; control: clusters" in _check_run(res, ["cfh", "vmhc", "ai"])
    # a rerun reuses the analyses whose maps did not change, and redoes the others
    other = run_study(_study(cohort, tmp_path / "out", metrics=["cfh", "vmhc", "ai"],
                             autonomy={"threshold": 0.2}), client=local_client)
    assert {k for k in other.skipped if k.startswith("stats")} == {"stats", "stats vmhc"}
    assert other.metrics["ai"]["stats_dir"] != res.metrics["ai"]["stats_dir"]
    assert other.metrics["vmhc"]["stats_dir"] == res.metrics["vmhc"]["stats_dir"]


def test_metrics_config_is_checked_before_compute(cohort, tmp_path):
    with pytest.raises(CfhdaskInputError, match="metrics"):
        validate_config(_study(cohort, tmp_path / "o", metrics=["cfh", "alff"]))
    with pytest.raises(CfhdaskInputError, match="metrics"):
        validate_config(_study(cohort, tmp_path / "o", metrics=[]))
    cfg = validate_config(_study(cohort, tmp_path / "o", cfh={"counterpart": "subject"}))
    assert cfg.analysed_metrics() == ["cfh_subject"]
    bad = _study(cohort, tmp_path / "o", cfh={"reference_subjects": ["site==A"]})
    with pytest.raises(CfhdaskInputError, match="cfh.reference_subjects.*site"):
        run_study(bad)
    assert not (tmp_path / "o").exists()
