"""Fixtures of the cluster tests: a tiny simulated study, its reference results, the CLI."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from clusterhelpers import study_config


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory) -> Path:
    """4 patients and 4 controls, 6 mm grid, 60 volumes, fMRIPrep layout."""
    from cfhdask.sim.cohort import simulate_cohort

    folder = tmp_path_factory.mktemp("cohort")
    simulate_cohort(str(folder), n_patients=4, n_controls=4, n_volumes=60, grid="6mm",
                    layout="fmriprep", seed=3)
    return folder


@pytest.fixture(scope="module")
def reference(tiny_cohort, tmp_path_factory, local_client):
    """The whole study of :func:`tiny_cohort` on the 2-worker LocalCluster.

    ``store``, ``stats_dir``, ``participants`` and the :class:`StudyResult`.
    """
    from cfhdask.study.pipeline import run_study

    out = tmp_path_factory.mktemp("reference")
    res = run_study(study_config(tiny_cohort, out), client=local_client)
    return SimpleNamespace(store=res.store, stats_dir=res.stats_dir, result=res,
                           participants=str(tiny_cohort / "participants.tsv"))


@pytest.fixture(scope="module")
def tiny_store(tiny_cohort, tmp_path_factory, local_client):
    """The tiny cohort ingested as given (no denoising), its CFH and stats (API, LocalCluster).

    Cheaper than :func:`reference` (no report): ``store``, ``stats_dir``,
    ``participants``.  ``cfhdask stats --covariates age,sex --n-perm 40 --seed 1``
    gives the same outputs.
    """
    import glob

    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.prep.ingest import ingest
    from cfhdask.stats.inference import group_inference

    out = tmp_path_factory.mktemp("tiny_store")
    bolds = sorted(glob.glob(str(tiny_cohort / "sub-*" / "func" / "*_desc-preproc_bold.nii.gz")))
    store = ingest(bolds, str(out / "cohort.zarr"), drop_volumes=4, client=local_client)
    compute_cfh(store, client=local_client, show_progress=False)
    participants = str(tiny_cohort / "participants.tsv")
    group_inference(store, participants, group="group", covariates=["age", "sex"], n_perm=40,
                    seed=1, out_dir=str(out / "stats"), client=local_client)
    return SimpleNamespace(store=store.url, stats_dir=str(out / "stats"),
                           participants=participants)
