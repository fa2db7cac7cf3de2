"""``cfhdask run``: the paper's whole analysis from one config file.

Stages (each timed, each reusing what an earlier run stored):

1. **ingest** — discover inputs, denoise, write the cohort store.  The store
   is keyed by a fingerprint of everything that changes its content (mask,
   denoising); a subject already complete in it is skipped.  A store given
   explicitly whose fingerprint differs is an error: results are never mixed.
2. **cfh** — CFH maps of every subject that lacks them.
3. **stats** — group GLM + permutations into ``OUTPUT/stats-<fingerprint>/``;
   skipped when that folder is complete for the same parameters and subjects.
4. **clinical** — Table 1 and partial correlations of significant clusters.
5. **report** — ``OUTPUT/report.html``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cfhdask._version import __version__
from cfhdask.errors import CfhdaskInputError
from cfhdask.io.atomic import write_json
from cfhdask.io.participants import read_participants
from cfhdask.settings import resolve
from cfhdask.study.config import StudyConfig, load_config, validate_config

log = logging.getLogger(__name__)

STAGES = ("ingest", "cfh", "stats", "clinical", "report")


@dataclass
class StudyResult:
    """What :func:`run_study` produced.

    Attributes
    ----------
    output : str
        Output folder.
    store : str
        The cohort store.
    stats_dir : str
    report : str
        ``report.html``.
    clusters, table1, correlations : pandas.DataFrame
    timings : dict of str -> float
        Seconds per stage.
    skipped : dict of str -> str
        Subjects or stages skipped, and why.
    """

    output: str
    store: str
    stats_dir: str
    report: str
    clusters: pd.DataFrame
    table1: pd.DataFrame
    correlations: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-able object."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def group_levels(cfg: StudyConfig, participants: pd.DataFrame) -> list[str]:
    """The two groups compared: ``groups.levels``, else the column's two values (sorted)."""
    col = cfg.groups.column
    present = sorted(set(participants[col].dropna().astype(str).str.strip()))
    if cfg.groups.levels is None:
        if len(present) != 2:
            raise CfhdaskInputError(
                f"config key 'groups.levels': column '{col}' of {cfg.participants} has "
                f"{len(present)} values {present}; name the two groups to compare")
        return present
    absent = [g for g in cfg.groups.levels if g not in present]
    if absent:
        raise CfhdaskInputError(
            f"config key 'groups.levels': group(s) {absent} not found in column '{col}' "
            f"of {cfg.participants} (values {present})")
    return list(cfg.groups.levels)


def check_columns(cfg: StudyConfig, participants: pd.DataFrame) -> None:
    """Every column the config names exists in the participants table."""
    named = {"groups.column": [cfg.groups.column], "covariates": list(cfg.covariates),
             "categorical": [c for c in cfg.categorical if c in cfg.covariates],
             "clinical.variables": list(cfg.clinical.variables),
             "clinical.table1": list(cfg.clinical.table1)}
    for key, cols in named.items():
        missing = [c for c in cols if c not in participants.columns]
        if missing:
            raise CfhdaskInputError(f"config key '{key}': column(s) {missing} not in "
                                    f"participants table {cfg.participants}")
    group_levels(cfg, participants)


def discover(cfg: StudyConfig):
    """The SubjectInputs a config names (and per-subject problems found)."""
    from cfhdask.prep.discover import discover_inputs

    inp = cfg.inputs
    files = None
    if inp.bold:
        files = []
        for pattern in inp.bold:
            hits = sorted(glob.glob(pattern)) if "://" not in pattern else [pattern]
            if not hits:
                raise CfhdaskInputError(f"config key 'inputs.bold': nothing matches {pattern}")
            files.extend(hits)
    pre = cfg.preprocessing
    needs_confounds = pre.denoise and pre.motion != "none" and (
        inp.bids_derivatives is not None or inp.dpabi is not None or bool(inp.confounds))
    return discover_inputs(
        bids_derivatives=inp.bids_derivatives, space=inp.space, task=inp.task,
        participant_label=inp.participant_label or None, dpabi=inp.dpabi,
        dpabi_dir=inp.dpabi_dir, files=files, confounds=inp.confounds or None, tr=inp.tr,
        require_confounds=needs_confounds)


def check_study(cfg: StudyConfig) -> tuple[list, list]:
    """Everything checkable before compute: participants, columns, groups, inputs.

    Returns
    -------
    (inputs, skipped)
        The runs found and those skipped (with the reason).
    """
    participants = read_participants(cfg.participants)
    check_columns(cfg, participants)
    return discover(cfg)


def denoise_params(cfg: StudyConfig):
    """The :class:`DenoiseParams` of a config, or None when denoising is off."""
    from cfhdask.prep.pipeline import DenoiseParams

    if not cfg.preprocessing.denoise:
        return None
    return DenoiseParams.from_settings(cfg.preprocessing, tr=cfg.inputs.tr)


def _store_url(cfg: StudyConfig, store_fp: str) -> str:
    if cfg.store is not None:
        return cfg.store
    return os.path.join(cfg.output, f"cohort-{store_fp}.zarr")


def _stage_done(folder: str, fp: str) -> bool:
    try:
        with open(os.path.join(folder, "stage.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return False
    return info.get("fingerprint") == fp and info.get("complete") is True


def _mark_stage(folder: str, fp: str, params: dict) -> None:
    write_json(os.path.join(folder, "stage.json"),
               {"fingerprint": fp, "complete": True, "parameters": params,
                "cfhdask_version": __version__})


class _Timer:
    def __init__(self, timings: dict[str, float], name: str, on_stage: Callable | None):
        self.timings, self.name, self.on_stage = timings, name, on_stage

    def __enter__(self):
        log.info("== stage %s", self.name)
        if self.on_stage:
            self.on_stage(self.name, "start")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.timings[self.name] = time.perf_counter() - self.t0
        log.info("== stage %s done in %.1f s", self.name, self.timings[self.name])
        if self.on_stage:
            self.on_stage(self.name, "end")
        return False


def run_study(config: str | Mapping | StudyConfig, *, client: Any = None, base_dir: str = ".",
              scheduler: str | None = None, scheduler_file: str | None = None,
              on_stage: Callable[[str, str], None] | None = None) -> StudyResult:
    """Run the whole study: ingest → CFH → group inference → clinical → report.

    Parameters
    ----------
    config : str, mapping or StudyConfig
        Path of a ``study.yaml``, an already parsed mapping (validated by
        :func:`cfhdask.study.config.validate_config` before any compute) or a
        validated :class:`~cfhdask.study.config.StudyConfig`.
    client : distributed.Client, optional
        Run on this client; otherwise the config's ``cluster`` section (or
        ``scheduler``/``scheduler_file``) decides.
    base_dir : str
        Folder for relative paths when ``config`` is a mapping.
    scheduler, scheduler_file : str, optional
        Override the config's cluster section.
    on_stage : callable, optional
        Called as ``on_stage(name, "start"|"end")`` around each stage.

    Returns
    -------
    StudyResult
    """
    if isinstance(config, StudyConfig):
        cfg = config
    elif isinstance(config, str):
        cfg = load_config(config)
    else:
        cfg = validate_config(config, base_dir)
    if scheduler or scheduler_file:
        cfg.cluster = resolve("cluster", {"scheduler": scheduler,
                                          "scheduler_file": scheduler_file}, base=cfg.cluster)
    participants = read_participants(cfg.participants)
    check_columns(cfg, participants)
    levels = group_levels(cfg, participants)
    inputs, skips = discover(cfg)
    if not inputs:
        raise CfhdaskInputError("no input runs found: " + "; ".join(
            f"{s.subject}: {s.reason}" for s in skips) if skips else "no input runs found")
    ids = set(participants["participant_id"].astype(str))
    unknown = sorted({i.subject.split("_")[0] for i in inputs} - ids)
    if unknown:
        raise CfhdaskInputError(
            f"subjects {unknown} have images but no row in {cfg.participants}")
    os.makedirs(cfg.output, exist_ok=True)

    from cfhdask.cluster import dask_client

    if client is not None:
        return _run(cfg, levels, participants, inputs, skips, client, on_stage)
    cl = cfg.cluster
    with dask_client(scheduler=cl.scheduler, scheduler_file=cl.scheduler_file,
                     cluster=cl.kind, n_workers=cl.n_workers,
                     threads_per_worker=cl.threads_per_worker) as c:
        log.info("Dask dashboard: %s", c.dashboard_link)
        return _run(cfg, levels, participants, inputs, skips, c, on_stage)


def _run(cfg: StudyConfig, levels, participants, inputs, skips, client,
         on_stage) -> StudyResult:
    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.io.store import CohortStore
    from cfhdask.prep.ingest import SubjectsFailed, ingest
    from cfhdask.prep.pipeline import make_prepare

    timings: dict[str, float] = {}
    skipped = {s.subject: s.reason for s in skips}
    params = denoise_params(cfg)
    drop = cfg.preprocessing.drop_volumes
    store_params = {"mask": cfg.mask.model_dump(),
                    "denoise": params.to_dict() if params else None, "drop_volumes": drop}
    store_fp = fingerprint(store_params)
    url = _store_url(cfg, store_fp)
    so = cfg.storage_options

    with _Timer(timings, "ingest", on_stage):
        try:
            existing = CohortStore.open(url, storage_options=so)
        except CfhdaskInputError:
            existing = None
        if existing is not None:
            old = existing.attrs.get("study_fingerprint")
            if old is not None and old != store_fp:
                raise CfhdaskInputError(
                    f"config key 'store': {url} was built with other mask/denoising "
                    f"parameters (fingerprint {old} != {store_fp}); choose a new store")
        try:
            store = ingest(
                inputs, url, mask=cfg.mask.source, gm_threshold=cfg.mask.gm_threshold,
                drop_volumes=drop, client=client, storage_options=so,
                prepare=make_prepare(params) if params else None)
        except SubjectsFailed as exc:
            # subjects that failed are reported; the study goes on with the others
            if exc.store is None or not exc.store.subjects():
                raise
            log.warning("%s — continuing with the %d complete subjects", exc,
                        len(exc.store.subjects()))
            skipped["ingest"] = str(exc)
        store = CohortStore.open(url, mode="r+", storage_options=so)
        if store.attrs.get("study_fingerprint") is None:
            store.set_attrs(study_fingerprint=store_fp, study_parameters=store_params)

    with _Timer(timings, "cfh", on_stage):
        compute_cfh(store, client=client, block=cfg.cfh.block,
                    split_every=cfg.cfh.split_every, backend=cfg.cfh.backend)

    ids = set(participants["participant_id"].astype(str))
    subjects = sorted(s for s in store.subjects("cfh") if s.split("_")[0] in ids)
    st = cfg.stats
    design = {"covariates": cfg.covariates, "categorical": cfg.categorical,
              "drop_missing": cfg.drop_missing}
    stats_params = {"store": store_fp, "subjects": subjects,
                    "group": {"column": cfg.groups.column, "levels": levels}, **design,
                    **st.model_dump(exclude={"batch_size"})}
    stats_fp = fingerprint(stats_params)
    stats_dir = os.path.join(cfg.output, f"stats-{stats_fp}")
    with _Timer(timings, "stats", on_stage):
        if _stage_done(stats_dir, stats_fp):
            log.info("stats: %s is complete for these parameters; reusing it", stats_dir)
            skipped["stats"] = "reused " + stats_dir
        else:
            from cfhdask.stats.inference import group_inference

            group_inference(
                store, participants, group=cfg.groups.column, groups=levels,
                covariates=cfg.covariates, categorical=cfg.categorical, n_perm=st.n_perm,
                scheme=st.scheme, cluster_p=st.cluster_p, connectivity=st.connectivity,
                tfce=st.tfce, seed=st.seed, metric=st.metric, atlases=st.atlases,
                out_dir=stats_dir, client=client, subjects=subjects,
                drop_missing=cfg.drop_missing, batch_size=st.batch_size)
            _mark_stage(stats_dir, stats_fp, stats_params)
    clusters = pd.read_csv(os.path.join(stats_dir, "clusters.tsv"), sep="\t")

    with _Timer(timings, "clinical", on_stage):
        t1, corr = _clinical(cfg, levels, participants, store, stats_dir, clusters, subjects)

    with _Timer(timings, "report", on_stage):
        from cfhdask.report.html import build_report

        report = build_report(
            os.path.join(cfg.output, "report.html"), stats_dir=stats_dir, store=store,
            participants=participants, table1=t1, correlations=corr,
            params=_report_params(cfg), title=cfg.name,
            group=cfg.groups.column, groups=tuple(levels), alpha=st.alpha,
            **cfg.report.model_dump())
    write_json(os.path.join(cfg.output, "timings.json"), timings)
    return StudyResult(output=cfg.output, store=url, stats_dir=stats_dir,
                       report=str(report), clusters=clusters, table1=t1,
                       correlations=corr, timings=timings, skipped=skipped)


def _clinical(cfg: StudyConfig, levels, participants, store, stats_dir, clusters, subjects):
    from cfhdask.clinical.correlations import (
        cluster_correlations,
        significant_cluster_values,
        write_correlations,
    )
    from cfhdask.clinical.table1 import table1, write_table1

    ids = {s.split("_")[0] for s in subjects}
    part = participants[participants["participant_id"].astype(str).isin(ids)]
    variables = list(cfg.clinical.table1) or list(dict.fromkeys(
        [*cfg.covariates, *cfg.clinical.variables]))
    t1 = table1(part, group=cfg.groups.column, groups=tuple(levels),
                variables=[v for v in variables if v in part.columns],
                normality_alpha=cfg.clinical.normality_alpha)
    clin_dir = os.path.join(cfg.output, "clinical")
    os.makedirs(clin_dir, exist_ok=True)
    write_table1(t1, os.path.join(clin_dir, "table1.tsv"))
    contrasts = sorted(set(clusters["contrast"])) if len(clusters) else []
    imgs = {c: os.path.join(stats_dir, f"{c}_clusters.nii.gz") for c in contrasts}
    corr = pd.DataFrame()
    if imgs and cfg.clinical.variables:
        values = significant_cluster_values(
            store.cfh_maps(subjects), store.ijk, imgs, clusters, alpha=cfg.stats.alpha)
        if values.shape[1]:
            values.index = [s.split("_")[0] for s in values.index]
            values.to_csv(os.path.join(clin_dir, "cluster_values.tsv"), sep="\t")
            corr = cluster_correlations(
                values, participants, group=cfg.groups.column, group_value=levels[0],
                variables=cfg.clinical.variables, covariates=cfg.covariates,
                methods=tuple(cfg.clinical.methods), drop_missing=True)
            write_correlations(corr, os.path.join(clin_dir, "correlations.tsv"))
    return t1, corr


def _report_params(cfg: StudyConfig) -> dict:
    """What the report's methods text needs beyond the recorded provenance.

    Everything that ran (denoising, mask, permutations, thresholds) is read by
    the report from the store and ``stats.json``; only the clinical analysis
    is described from the config.
    """
    return {"clinical_covariates": list(cfg.covariates),
            "normality_alpha": cfg.clinical.normality_alpha}
