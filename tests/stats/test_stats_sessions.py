"""Sessions and runs in the design; per-contrast TFCE steps; PALM's z convention."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import group_maps, parse_combine
from cfhdask.stats.clusters import label_clusters, tfce, tfce_step, voxel_graph
from cfhdask.stats.design import build_design, encode_covariates, participant_values
from cfhdask.stats.inference import group_inference
from cfhdask.stats.null import t_to_z

TABLE = pd.DataFrame({"participant_id": ["sub-01", "sub-02", "sub-03", "sub-04"],
                      "group": ["a", "a", "b", "b"], "age": [20.0, 30.0, 40.0, 55.0],
                      "sex": ["F", "M", "F", "M"]})
RUNS = ["sub-01_ses-1", "sub-01_ses-2", "sub-02_run-1", "sub-02_run-2", "sub-03", "sub-04"]


def test_group_maps_and_selectors():
    maps, unmatched, unselected = group_maps(TABLE.participant_id, RUNS + ["sub-09"])
    assert maps == {"sub-01": ["sub-01_ses-1", "sub-01_ses-2"],
                    "sub-02": ["sub-02_run-1", "sub-02_run-2"],
                    "sub-03": ["sub-03"], "sub-04": ["sub-04"]}
    assert unmatched == ["sub-09"] and unselected == {}
    maps, _, unselected = group_maps(TABLE.participant_id, RUNS, "ses-2")
    assert maps == {"sub-01": ["sub-01_ses-2"]} and set(unselected) == {"sub-02", "sub-03",
                                                                        "sub-04"}
    maps, _, _ = group_maps(TABLE.participant_id, RUNS, "run-2")
    assert maps == {"sub-02": ["sub-02_run-2"]}
    assert parse_combine("ses-1_run-2") == {"ses": "1", "run": "2"}
    with pytest.raises(ValueError, match="neither 'mean'"):
        parse_combine("median")


def test_design_has_one_row_per_participant_never_one_per_run():
    d = build_design(TABLE, RUNS, group="group", covariates=["age"])
    assert d.subjects == ["sub-01", "sub-02", "sub-03", "sub-04"] and d.X.shape == (4, 3)
    assert d.maps["sub-01"] == ["sub-01_ses-1", "sub-01_ses-2"] and d.df == 1
    with pytest.raises(CfhdaskInputError, match="combine_runs 'ses-2'.*--drop-missing"):
        build_design(TABLE, RUNS, group="group", combine_runs="ses-2")


def test_session_level_variables():
    sessions = pd.DataFrame({"participant_id": ["sub-01", "sub-01"],
                             "session_id": ["ses-1", "ses-2"], "age": [21.0, 23.0],
                             "site": ["x", "y"]})
    table = TABLE.assign(site="x")
    d = build_design(table, RUNS, group="group", covariates=["age"], sessions=sessions)
    assert d.table.loc["sub-01", "age"] == 22.0  # the mean over the two sessions' maps
    rows = RUNS[1:]  # sub-01's second session only
    d2 = build_design(table, rows, group="group", covariates=["age"], sessions=sessions)
    assert d2.table.loc["sub-01", "age"] == 23.0
    with pytest.raises(CfhdaskInputError, match="'site' differs between the maps"):
        build_design(table, RUNS, group="group", covariates=["age", "site"],
                     categorical=["site"], sessions=sessions)


def test_participant_values_keep_numeric_columns_numeric_with_or_without_sessions():
    """The clinical stage tests dtypes: a table without sessions.tsv must stay numeric."""
    maps = {"sub-01": ["sub-01_ses-1", "sub-01_ses-2"], "sub-03": ["sub-03"]}
    sessions = pd.DataFrame({"participant_id": ["sub-01"], "session_id": ["ses-1"],
                             "age": [21.0]})
    for ses in (None, sessions):
        t = participant_values(TABLE, maps, ["group", "age", "sex"], categorical=["sex"],
                               sessions=ses)
        assert pd.api.types.is_numeric_dtype(t["age"]), ses
        assert not pd.api.types.is_numeric_dtype(t["sex"])


def test_one_encoder_for_glm_and_correlations():
    frame = TABLE.set_index("participant_id").assign(site=["u", "v", "w", "u"])
    X, cols = encode_covariates(frame, ["age", "site"], ["site"])
    assert cols == ["age", "site[v]", "site[w]"]
    np.testing.assert_allclose(X[:, 0], frame.age - frame.age.mean())
    np.testing.assert_array_equal(X[:, 1:], [[0, 0], [1, 0], [0, 1], [0, 0]])
    with pytest.raises(CfhdaskInputError, match="'site' is numeric but participant 'sub-01'"):
        encode_covariates(frame, ["site"], [])
    with pytest.raises(CfhdaskInputError, match="'age' is constant"):
        encode_covariates(frame.assign(age=3.0), ["age"], [])


def _maps(rng, n_vox=300, shape=(10, 10, 3)):
    ijk = np.argwhere(np.ones(shape, bool))[:n_vox]
    return ijk, shape


def test_two_maps_of_a_participant_are_one_observation(rng):
    """Inference on runs equals inference on each participant's mean map: same t, same df."""
    ijk, shape = _maps(rng)
    n = 12
    table = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(n)],
                          "group": ["a"] * 6 + ["b"] * 6})
    runs, rows = [], []
    mean = rng.standard_normal((n, len(ijk)))
    for i in range(n):
        if i % 3 == 0:  # every third participant has two runs
            d = rng.standard_normal(len(ijk))
            rows += [mean[i] - d, mean[i] + d]
            runs += [f"sub-{i:02d}_run-1", f"sub-{i:02d}_run-2"]
        else:
            rows.append(mean[i])
            runs.append(f"sub-{i:02d}")
    kw = dict(group="group", n_perm=20, seed=3, ijk=ijk, grid_shape=shape, compute="local",
              atlases=[])
    by_runs = group_inference(np.array(rows), table, subjects=runs, **kw)
    by_mean = group_inference(mean, table, subjects=list(table.participant_id), **kw)
    assert by_runs.params["df"] == by_mean.params["df"] == n - 2
    assert by_runs.params["n_maps"] == len(runs) == 16 and len(by_runs.design.subjects) == n
    for name in by_mean.contrasts:
        np.testing.assert_allclose(by_runs.contrasts[name].t, by_mean.contrasts[name].t,
                                   rtol=1e-10, atol=1e-12)


def test_tfce_step_never_loses_the_top_level():
    bad = [p for p in np.random.default_rng(0).uniform(1, 10, 2000)
           if np.floor(p / (p / 100)) < 100]
    assert bad, "some peaks lose their top level with dh = peak / 100"
    for p in bad:
        dh = tfce_step(p, 100)
        assert np.floor(p / dh) == 100 and dh <= p / 100


@pytest.mark.parametrize("on", ["t", "z"])
def test_each_contrast_has_its_own_tfce_step(dataset, on):
    res = group_inference(dataset["Y"], dataset["table"], group="group",
                          groups=["patient", "control"], n_perm=16, seed=1, tfce=True,
                          mass_tfce_on=on, ijk=dataset["ijk"], grid_shape=dataset["grid_shape"],
                          affine=dataset["affine"], compute="local", atlases=[])
    dhs = res.params["tfce_dh"]
    assert res.params["mass_tfce_on"] == on and dhs["patient_gt_control"] != \
        dhs["control_gt_patient"]
    graph = voxel_graph(res.ijk, res.grid_shape, 18)
    df = res.params["df"]
    for name, c in res.contrasts.items():
        e = t_to_z(c.t, df) if on == "z" else c.t
        assert np.floor(e.max() / dhs[name]) == 100  # 100 levels up to its own peak
        np.testing.assert_allclose(c.tfce, tfce(graph, e, dhs[name]), rtol=1e-12)
        # the identity permutation scored with the same step: its maximum is the observed one
        assert c.null["max_tfce"][0] == pytest.approx(c.tfce.max(), rel=1e-6)
        if on == "z":
            thr_t, thr_z = res.params["t_threshold"], sstats.norm.isf(res.params["cluster_p"])
            labels = label_clusters(graph, c.t > thr_t)
            for _, row in c.clusters.iterrows():
                sel = labels == row["cluster"]
                want = float(np.sum(sstats.norm.isf(sstats.t.sf(c.t[sel], df)) - thr_z))
                assert row["mass"] == pytest.approx(want, rel=1e-9)
            top = c.clusters["mass"].max() if len(c.clusters) else 0.0
            assert c.null["max_mass"][0] == pytest.approx(top, rel=1e-6)
    assert res.params["tfce_step"] == "peak" and res.params["tfce_steps"] == 100


def test_t_to_z_matches_scipy_and_stays_finite():
    t = np.array([-4.0, -0.5, 0.0, 1.2, 3.0, 40.0])
    z = t_to_z(t, 20)
    np.testing.assert_allclose(z[:5], np.sign(t[:5]) * sstats.norm.isf(
        sstats.t.sf(np.abs(t[:5]), 20)), rtol=1e-10, atol=1e-12)
    assert np.isfinite(z[5]) and z[5] > 8


def test_too_few_permutations_warn_and_are_recorded(dataset, caplog):
    res = group_inference(dataset["Y"], dataset["table"], group="group", n_perm=1,
                          ijk=dataset["ijk"], grid_shape=dataset["grid_shape"],
                          affine=dataset["affine"], compute="local", atlases=[])
    (w,) = res.params["warnings"]
    assert "only 1 permutation(s)" in w and "no voxel or cluster can be significant" in w
    assert any("only 1 permutation" in r.getMessage() for r in caplog.records)
    ok = group_inference(dataset["Y"], dataset["table"], group="group", n_perm=40,
                         ijk=dataset["ijk"], grid_shape=dataset["grid_shape"],
                         affine=dataset["affine"], compute="local", atlases=[])
    assert ok.params["warnings"] == []
