"""The demo study: a simulated 30 vs 30 cohort run end to end (``cfhdask demo``)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import yaml

log = logging.getLogger(__name__)

#: The paper's covariates (section 2.5) and clinical variables (section 2.6).
PAPER_COVARIATES = ("age", "sex", "education", "SDS", "SAS")
PAPER_CLINICAL = ("illness_duration", "JRS_total", "JRS_severity", "JRS_frequency")

#: Planted effects and the atlas labels the demo expects to find at them.
EXPECTED = {
    "left putamen": ((-30, -2, 10), "Putamen_L", "Left Putamen"),
    "left precentral gyrus": ((-42, 0, 54), "Precentral_L", "Left Precentral Gyrus"),
}


def demo_config(sim_dir: str, out_dir: str, *, n_perm: int | None = None,
                seed: int | None = None) -> dict:
    """The study config of the demo (also written as ``OUT/study.yaml``).

    It names the paper's covariates and clinical variables; everything else
    takes the current settings.
    """
    stats: dict[str, Any] = {}
    if n_perm is not None:
        stats["n_perm"] = int(n_perm)
    if seed is not None:
        stats["seed"] = int(seed)
    return {
        "name": "Simulated blepharospasm cohort: CFH (cfhdask demo)",
        "output": os.path.join(out_dir, "results"),
        "inputs": {"bids_derivatives": sim_dir},
        "participants": os.path.join(sim_dir, "participants.tsv"),
        "groups": {"column": "group", "levels": ["patient", "control"]},
        "covariates": list(PAPER_COVARIATES),
        "categorical": ["sex"],
        "stats": stats,
        "clinical": {"variables": list(PAPER_CLINICAL),
                     "table1": ["age", "sex", "education", *PAPER_CLINICAL, "SAS", "SDS"]},
    }


def run_demo(out_dir: str, *, n_patients: int | None = None, n_controls: int | None = None,
             n_volumes: int | None = None, n_perm: int | None = None,
             seed: int | None = None, effect_size: float | None = None,
             grid: str | None = None, client: Any = None, on_stage: Any = None):
    """Simulate the paper-like cohort and run the whole study on it.

    Parameters
    ----------
    out_dir : str
        Everything goes here: ``sim/`` (fMRIPrep-like derivatives), ``study.yaml``,
        ``results/`` (store, stats, clinical tables, ``report.html``).
    n_patients, n_controls, n_volumes : int, optional
        Cohort size and run length (default: the ``simulate`` settings, 30 vs
        30 with 230 volumes of which the first 10 are dropped).
    n_perm : int, optional
        Permutations of the group inference (default: the ``stats`` settings).
    seed : int, optional
        Seed of the simulation and of the permutations.
    effect_size : float, optional
        Scale of the planted CFH increases (0: a null cohort).
    grid : str, optional
        "3mm" (the paper's 61x73x61) or a coarser grid for quick runs.
    client : distributed.Client, optional
    on_stage : callable, optional
        Passed to :func:`cfhdask.study.run_study` (called around each stage).

    Returns
    -------
    (StudyResult, dict)
        The study result and the timings of every stage including simulation.
    """
    from cfhdask.sim.cohort import simulate_cohort
    from cfhdask.study.pipeline import run_study

    out_dir = os.path.abspath(out_dir)  # study.yaml resolves relative paths against its folder
    os.makedirs(out_dir, exist_ok=True)
    sim_dir = os.path.join(out_dir, "sim")
    t0 = time.perf_counter()
    if os.path.exists(os.path.join(sim_dir, "participants.tsv")):
        log.info("demo: reusing the simulated cohort in %s", sim_dir)
    else:
        simulate_cohort(sim_dir, n_patients=n_patients, n_controls=n_controls,
                        n_volumes=n_volumes, grid=grid, layout="fmriprep", seed=seed,
                        effect_size=effect_size, client=client)
    t_sim = time.perf_counter() - t0
    cfg = demo_config(sim_dir, out_dir, n_perm=n_perm, seed=seed)
    with open(os.path.join(out_dir, "study.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    res = run_study(os.path.join(out_dir, "study.yaml"), client=client, on_stage=on_stage)
    timings = {"simulate": t_sim, **res.timings}
    return res, timings


def planted_findings(clusters, alpha: float = 0.05) -> dict[str, dict]:
    """For each planted effect: the significant cluster whose peak is nearest, and its labels."""
    import numpy as np

    out = {}
    sig = clusters[(clusters["p_fwe"] < alpha)] if len(clusters) else clusters
    for name, (centre, aal, ho) in EXPECTED.items():
        if not len(sig):
            out[name] = {"found": False}
            continue
        d = np.linalg.norm(sig[["peak_x", "peak_y", "peak_z"]].to_numpy(float)
                           - np.asarray(centre, float), axis=1)
        row = sig.iloc[int(np.argmin(d))]
        labels = " ".join(str(row.get(c, "")) for c in
                          ("aal_peak", "harvard_oxford_peak", "aal_regions",
                           "harvard_oxford_regions"))
        out[name] = {"found": bool(d.min() <= 12.0), "distance_mm": float(d.min()),
                     "peak": tuple(int(row[k]) for k in ("peak_x", "peak_y", "peak_z")),
                     "peak_t": float(row["peak_t"]), "size": int(row["size_voxels"]),
                     "p_fwe": float(row["p_fwe"]),
                     "label_ok": aal in labels or ho in labels}
    return out
