"""Simulate a whole cohort and write it as BIDS, fMRIPrep-like or DPABI files.

Generative model (details in :mod:`cfhdask.sim.anatomy` and
:mod:`cfhdask.sim.signals`): on an MNI grid (default the paper's 3 mm grid,
61 x 73 x 61), inside the MNI152 brain, every voxel's series is a baseline
(~1000) plus ~1.2 % fluctuations made of a bilateral homotopic parcel-pair
signal (band-limited 0.008-0.1 Hz, pairs grouped into networks), a global
signal, a small motion artefact, spatially smooth AR(1) noise (shared smooth
maps mixed by subject time courses: one GEMM) and white noise.  Outside the
brain the images are 0.  In the effect group (patients by default) voxels of
the planted spheres couple more strongly to their bilateral pair signal, which
raises their CFH; the contralateral voxels already have stronger partners, so
the difference is lateralised (left putamen and left precentral gyrus by
default, as in the paper).

Layouts (``participants.tsv``, ``dataset_description.json`` and
``simulation.json`` with the ground truth are written at the top in all):

``bids``
    ``sub-P01/func/sub-P01_task-rest_bold.nii.gz`` (+ ``.json`` with RepetitionTime).
``fmriprep``
    ``sub-P01/func/sub-P01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz``,
    its ``.json`` sidecar and ``sub-P01_task-rest_desc-confounds_timeseries.tsv``
    (global_signal, white_matter, csf, the 24 motion columns).
``dpabi``
    ``FunImgARCW/sub-P01/wrasub-P01_4DVolume.nii`` (always uncompressed) and
    ``RealignParameter/sub-P01/rp_asub-P01_4DVolume.txt``.

Patients are ``sub-P01``.., controls ``sub-C01``..; the ``group`` column says
which.  Subject *k* of a group draws from ``SeedSequence([seed, 2, g, k])``
(g = 0 patient, 1 control): results are identical whatever ``n_jobs`` or
client, and adding subjects does not change the existing ones.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from cfhdask._version import __version__
from cfhdask.cluster import available_cores
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.atomic import write_json
from cfhdask.settings import settings
from cfhdask.sim.anatomy import DEFAULT_EFFECTS, Effect, build_anatomy, resolve_grid
from cfhdask.sim.participants import participant_ids, simulate_participants, write_participants
from cfhdask.sim.signals import simulate_subject_series
from cfhdask.sim.writers import (
    FMRIPREP_SPACE,
    LAYOUTS,
    subject_paths,
    write_confounds,
    write_realign,
    write_volume_series,
)

log = logging.getLogger(__name__)

GROUP_CODES = {"patient": 0, "control": 1}


def subject_rng(seed: int, group: str, index: int) -> np.random.Generator:
    """The generator of subject ``index`` (0-based) of ``group``."""
    return np.random.default_rng(np.random.SeedSequence([seed, 2, GROUP_CODES[group], index]))


def _simulate_one(task: dict[str, Any]) -> dict[str, Any]:
    """Simulate and write one subject (runs in a thread or on a Dask worker)."""
    t0 = time.perf_counter()
    anatomy = build_anatomy(task["grid"], task["effects"], task["seed"])
    rng = subject_rng(task["seed"], task["group"], task["index"])
    ss = simulate_subject_series(anatomy, rng, task["group"], task["n_volumes"], task["tr"],
                                 task["effect_size"])
    t1 = time.perf_counter()
    paths = subject_paths(Path(task["out_dir"]), task["subject"], task["layout"],
                          task["compress"])
    write_volume_series(paths["bold"], anatomy, ss.data, task["tr"], task["dtype"])
    if "sidecar" in paths:
        side = {"RepetitionTime": task["tr"], "TaskName": "rest",
                "SkullStripped": False, "GeneratedBy": f"cfhdask {__version__} simulate"}
        if task["layout"] == "fmriprep":
            side["SpatialReference"] = FMRIPREP_SPACE
        write_json(paths["sidecar"], side)
    if "confounds" in paths:
        write_confounds(paths["confounds"], anatomy, ss.data, ss.motion)
    if "realign" in paths:
        write_realign(paths["realign"], ss.motion)
    t2 = time.perf_counter()
    return {"subject": task["subject"], "files": {k: str(v) for k, v in paths.items()},
            "simulate_s": t1 - t0, "write_s": t2 - t1}


def _validate(n_patients, n_controls, n_volumes, tr, layout, effect_size, dtype) -> None:
    if int(n_patients) < 0 or int(n_controls) < 0 or int(n_patients) + int(n_controls) == 0:
        raise CfhdaskInputError("n_patients/n_controls: need >= 0 each and at least one subject")
    if int(n_volumes) < 2:
        raise CfhdaskInputError(f"n_volumes: need at least 2 volumes, got {n_volumes}")
    if not (np.isfinite(tr) and tr > 0):
        raise CfhdaskInputError(f"tr: must be a positive number of seconds, got {tr}")
    if layout not in LAYOUTS:
        raise CfhdaskInputError(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
    if not (np.isfinite(effect_size) and effect_size >= 0):
        raise CfhdaskInputError(f"effect_size: must be >= 0, got {effect_size}")
    if dtype not in ("int16", "float32"):
        raise CfhdaskInputError(f"dtype: {dtype!r} is not int16 or float32")


def simulate_cohort(
    out_dir: str | Path,
    *,
    n_patients: int | None = None,
    n_controls: int | None = None,
    n_volumes: int | None = None,
    tr: float | None = None,
    grid: str | tuple | None = None,
    effects: tuple[Effect, ...] = DEFAULT_EFFECTS,
    effect_size: float | None = None,
    seed: int | None = None,
    layout: str | None = None,
    n_jobs: int | None = None,
    client: Any = None,
    compress: bool = True,
    dtype: str = "int16",
) -> pd.DataFrame:
    """Simulate a patient/control cohort and write it under ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created; existing subject files are overwritten).

    Every parameter left ``None`` takes the ``simulate`` settings
    (:class:`cfhdask.settings.SimulateSettings`).

    n_patients, n_controls : int
        Group sizes (ids ``sub-P01``.. and ``sub-C01``..).
    n_volumes : int
        Volumes per run (the paper: 230, first 10 discarded later).
    tr : float
        Repetition time in seconds (header pixdim[4] and JSON sidecars).
    grid : str or (shape, affine)
        ``"3mm"`` (61 x 73 x 61, the paper's), ``"2mm"``, ``"<N>mm"`` (e.g.
        ``"6mm"`` for fast tests) or an explicit ``(shape, affine)``.
    effects : tuple of Effect
        Planted CFH increases (default: left putamen and left precentral gyrus
        in patients); ``()`` for none.
    effect_size : float
        Scale of the planted loading increases; 0 gives a null cohort.  At 1
        the CFH (Fisher z) difference at the sphere centres is about 2 SD
        (Cohen's d ~ 2 before smoothing).
    seed : int
        Cohort seed: anatomy, table and every subject derive from it.
    layout : {"bids", "fmriprep", "dpabi"}
        File layout (see the module docstring).
    n_jobs : int, optional
        Threads (default: the available cores).  Ignored when ``client`` is given.
    client : distributed.Client, optional
        Simulate and write subjects as Dask tasks on this client (the folder
        must be visible to the workers).
    compress : bool
        ``.nii.gz`` (gzip level 1) or ``.nii``; dpabi is always ``.nii``.
    dtype : {"int16", "float32"}
        Stored data type (int16 with ``scl_slope`` halves size and I/O time).

    Returns
    -------
    pandas.DataFrame
        The participants table (also ``out_dir/participants.tsv``).  ``attrs``
        holds ``files`` (per subject: bold, sidecar, confounds, realign) and
        ``seconds_per_subject``.
    """
    d = settings().simulate
    n_patients = d.n_patients if n_patients is None else n_patients
    n_controls = d.n_controls if n_controls is None else n_controls
    n_volumes = d.n_volumes if n_volumes is None else n_volumes
    tr = d.tr if tr is None else tr
    grid = d.grid if grid is None else grid
    effect_size = d.effect_size if effect_size is None else effect_size
    seed = d.seed if seed is None else seed
    layout = d.layout if layout is None else layout
    _validate(n_patients, n_controls, n_volumes, tr, layout, effect_size, dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shape, affine = resolve_grid(grid)
    grid_key = (tuple(shape), affine)
    effects = tuple(effects)
    t0 = time.perf_counter()
    anatomy = build_anatomy(grid_key, effects, seed)  # validates effects, warms the cache
    t_anat = time.perf_counter() - t0
    table = simulate_participants(n_patients, n_controls, seed)
    counters = {"patient": 0, "control": 0}
    tasks = []
    for subject, group in participant_ids(n_patients, n_controls):
        tasks.append({"subject": subject, "group": group, "index": counters[group],
                      "grid": grid_key, "effects": effects, "seed": int(seed),
                      "n_volumes": int(n_volumes), "tr": float(tr),
                      "effect_size": float(effect_size), "out_dir": str(out),
                      "layout": layout, "compress": bool(compress) and layout != "dpabi",
                      "dtype": dtype})
        counters[group] += 1
    t1 = time.perf_counter()
    if client is not None:
        from distributed import as_completed

        futures = client.map(_simulate_one, tasks, pure=False)
        for k, fut in enumerate(as_completed(futures), 1):
            if fut.status == "finished" and (k % 10 == 0 or k == len(tasks)):
                log.info("Simulated %d/%d subjects", k, len(tasks))
        results = client.gather(futures)
    else:
        n_jobs = max(1, int(n_jobs or available_cores()))
        # one BLAS thread whatever n_jobs: the bytes written must not depend on it
        with threadpool_limits(limits=1):
            if n_jobs == 1:
                results = [_simulate_one(t) for t in tasks]
            else:
                with ThreadPoolExecutor(n_jobs) as pool:
                    results = list(pool.map(_simulate_one, tasks))
    wall = time.perf_counter() - t1
    per_subject = wall / len(tasks)
    write_participants(table, out / "participants.tsv")
    write_json(out / "dataset_description.json", {
        "Name": "cfhdask simulated cohort", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative" if layout == "fmriprep" else "raw",
        "GeneratedBy": [{"Name": "cfhdask", "Version": __version__}]})
    write_json(out / "simulation.json", {
        "cfhdask_version": __version__, "seed": int(seed), "layout": layout,
        "grid_shape": list(shape), "affine": np.asarray(affine).tolist(),
        "n_volumes": int(n_volumes), "tr": float(tr), "effect_size": float(effect_size),
        "effects": [{"name": e.name, "center": list(e.center), "radius": e.radius,
                     "group": e.group, "baseline_loading": e.baseline_loading,
                     "target_loading": e.target_loading} for e in effects],
        "n_brain_voxels": anatomy.n_voxels, "n_parcel_pairs": anatomy.n_pairs,
        "seconds": {"anatomy": t_anat, "subjects_wall": wall, "per_subject": per_subject},
    })
    log.info("Simulated %d subjects (%s layout) in %.1f s: %.2f s per subject (anatomy %.1f s)",
             len(tasks), layout, wall, per_subject, t_anat)
    table.attrs["files"] = {r["subject"]: r["files"] for r in results}
    table.attrs["seconds_per_subject"] = per_subject
    return table
