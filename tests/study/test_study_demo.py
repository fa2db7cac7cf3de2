"""The demo's check of the planted effects against a cluster table."""

from __future__ import annotations

import pandas as pd

from cfhdask.study.config import validate_config
from cfhdask.study.demo import demo_config, planted_findings


def table(rows):
    cols = ["contrast", "cluster", "size_voxels", "peak_t", "peak_x", "peak_y", "peak_z",
            "p_fwe", "aal_peak", "harvard_oxford_peak", "aal_regions", "harvard_oxford_regions"]
    return pd.DataFrame(rows, columns=cols)


def test_planted_effects_found_with_labels():
    t = table([
        ["patient_gt_control", 1, 53, 5.1, -30, 0, 12, 0.01, "no_label",
         "no_label", "Putamen_L 52%; Insula_L 24%", "Left_Putamen 55%"],
        ["patient_gt_control", 2, 27, 4.9, -42, 0, 54, 0.03, "Precentral_L",
         "Left_Precentral_Gyrus", "Precentral_L 79%", "Left_Precentral_Gyrus 42%"],
        ["control_gt_patient", 1, 2, 3.7, 30, 0, 12, 0.9, "Putamen_R", "Right_Putamen",
         "", ""],
    ])
    f = planted_findings(t)
    assert f["left putamen"]["found"] and f["left putamen"]["label_ok"]
    assert f["left precentral gyrus"]["found"] and f["left precentral gyrus"]["size"] == 27


def test_not_significant_or_far_is_not_found():
    t = table([
        ["patient_gt_control", 1, 53, 5.1, -30, 0, 12, 0.2, "Putamen_L", "", "", ""],
        ["patient_gt_control", 2, 27, 4.9, 42, 0, 54, 0.01, "Precentral_R", "", "", ""],
    ])
    f = planted_findings(t)
    assert not f["left putamen"]["found"]          # p_FWE 0.2
    assert not f["left precentral gyrus"]["found"]  # right hemisphere, 84 mm away
    assert not planted_findings(t.iloc[:0])["left putamen"]["found"]


def test_demo_config_is_valid(tmp_path):
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "participants.tsv").write_text("participant_id\tgroup\n")
    cfg = validate_config(demo_config(str(sim), str(tmp_path), n_perm=100, seed=1))
    assert cfg.stats.scheme == "draper-stoneman" and cfg.stats.n_perm == 100
    assert cfg.preprocessing.drop_volumes == 10
    assert cfg.covariates == ["age", "sex", "education", "SDS", "SAS"]


def test_run_demo_with_a_relative_output_folder(tmp_path, monkeypatch, local_client):
    from cfhdask.study.demo import run_demo

    monkeypatch.chdir(tmp_path)
    res, timings = run_demo("demo_out", n_patients=4, n_controls=4, n_volumes=60, n_perm=20,
                            grid="6mm", client=local_client)
    assert res.report.startswith(str(tmp_path / "demo_out"))
    assert set(timings) == {"simulate", "ingest", "cfh", "stats", "clinical", "report"}
