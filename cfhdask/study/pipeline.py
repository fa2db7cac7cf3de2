"""``cfhdask run``: the paper's whole analysis from one config file.

Stages (each timed, each reusing what an earlier run stored):

1. **ingest** — discover inputs, denoise, write the cohort store.  The store
   is keyed by a fingerprint of everything that changes its content (mask,
   denoising); a subject already complete in it is skipped.  A store given
   explicitly whose fingerprint differs is an error: results are never mixed.
2. **cfh** — the maps of every metric of the study (``metrics``: CFH with the
   group or the per-subject counterpart, VMHC, autonomy index) for every
   subject that lacks them.
3. **stats** — per metric, group GLM + permutations into
   ``OUTPUT/stats-<metric>-<fingerprint>/``; skipped when that folder is
   complete for the same parameters, subjects and maps (for group-mode CFH
   the fingerprint of the group counterpart).
4. **clinical** — Table 1 and, per metric, partial correlations of its
   significant clusters.
5. **report** — ``OUTPUT/report.html``, a section per metric.

With ``null_check.enabled``, the null-check (:mod:`cfhdask.stats.nullcheck`)
runs after the stats, on the main metric, into ``OUTPUT/null-check-<fingerprint>/``, reused the
same way; the report shows it in its own section.
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
from cfhdask.inputs import ID_COLUMN, match_subjects
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
        ``stats_dir`` and ``clusters`` are the main (first) metric's;
        ``correlations`` holds every metric's (column ``metric``).
    metrics : dict of str -> dict
        Per metric: ``stats_dir``, ``clusters``, ``correlations``.
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
    metrics: dict[str, dict] = field(default_factory=dict)


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


def check_columns(cfg: StudyConfig, participants: pd.DataFrame,
                  sessions: pd.DataFrame | None = None) -> None:
    """Every column the config names exists in the participants (or sessions) table."""
    from cfhdask.cfh.group import filter_columns

    columns = set(participants.columns) | (set(sessions.columns) if sessions is not None
                                           else set())
    named = {"groups.column": [cfg.groups.column], "covariates": list(cfg.covariates),
             "cfh.reference_subjects": filter_columns(cfg.cfh.reference_subjects),
             "categorical": [c for c in cfg.categorical if c in cfg.covariates],
             "clinical.variables": list(cfg.clinical.variables),
             "clinical.table1": list(cfg.clinical.table1)}
    for key, cols in named.items():
        missing = [c for c in cols if c not in columns]
        if missing:
            raise CfhdaskInputError(f"config key '{key}': column(s) {missing} not in "
                                    f"participants table {cfg.participants}")
    group_levels(cfg, participants)


def _expand_bold(patterns: list[str], so: dict) -> list[str]:
    """``inputs.bold`` patterns -> files (local globs, or globs on a remote filesystem)."""
    from cfhdask.io.urls import full_url, url_to_fs

    files: list[str] = []
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            files.append(pattern)
            continue
        if "://" in pattern:
            fs, path = url_to_fs(pattern, so, what="config key 'inputs.bold'")
            hits = [full_url(fs, h) for h in sorted(fs.glob(path))]
        else:
            hits = sorted(glob.glob(pattern))
        if not hits:
            raise CfhdaskInputError(f"config key 'inputs.bold': nothing matches {pattern}")
        files.extend(hits)
    return files


def discover(cfg: StudyConfig):
    """The SubjectInputs a config names (and per-subject problems found)."""
    from cfhdask.prep.discover import discover_inputs

    inp = cfg.inputs
    files = _expand_bold(inp.bold, cfg.storage_options) if inp.bold else None
    pre = cfg.preprocessing
    needs_confounds = pre.denoise and pre.motion != "none" and (
        inp.bids_derivatives is not None or inp.dpabi is not None or bool(inp.confounds))
    return discover_inputs(
        bids_derivatives=inp.bids_derivatives, space=inp.space, task=inp.task,
        participant_label=inp.participant_label or None, dpabi=inp.dpabi,
        dpabi_dir=inp.dpabi_dir, files=files, confounds=inp.confounds or None, tr=inp.tr,
        require_confounds=needs_confounds, storage_options=cfg.storage_options)


@dataclass
class StudyPlan:
    """What :func:`check_study` found: everything checked before any cluster starts.

    Attributes
    ----------
    participants : pandas.DataFrame
        The participants table, without the participants whose every run is
        skipped (they are listed in ``skipped``).
    sessions : pandas.DataFrame or None
        Session-level variables (``sessions.tsv``).
    levels : list of str
        The two groups compared.
    inputs : list of SubjectInput
        The runs to ingest.
    skipped : list of Skip
        Runs left out, with the reason.
    design : Design
        The design these runs would give (one row per participant).
    """

    participants: pd.DataFrame
    sessions: pd.DataFrame | None
    levels: list[str]
    inputs: list
    skipped: list
    design: Any


def _without_skipped(participants: pd.DataFrame, runs: list[str],
                     skipped: list[str]) -> pd.DataFrame:
    """Drop the participants whose every run was skipped (they are reported, not errors)."""
    have = set(match_subjects(participants[ID_COLUMN], runs).values())
    lost = set(match_subjects(participants[ID_COLUMN], skipped).values()) - have
    return participants[~participants[ID_COLUMN].isin(lost)]


def _design(cfg: StudyConfig, participants, sessions, levels, runs):
    from cfhdask.stats.design import build_design

    return build_design(participants, runs, group=cfg.groups.column, groups=levels,
                        covariates=cfg.covariates, categorical=cfg.categorical,
                        drop_missing=cfg.drop_missing, combine_runs=cfg.combine_runs,
                        sessions=sessions, source=cfg.participants)


def _check_clinical(cfg: StudyConfig, participants, sessions, design) -> None:
    """Clinical variables are numeric and the covariates encode in the first group
    (the partial correlations' data), before any compute."""
    from cfhdask.stats.design import encode_covariates, participant_values

    if not cfg.clinical.variables:
        return
    first = [p for p, g in zip(design.subjects, design.x, strict=True) if g == 1.0]
    maps = {p: design.maps[p] for p in first}
    table = participant_values(participants, maps, [*cfg.clinical.variables, *cfg.covariates],
                               categorical=cfg.categorical, sessions=sessions,
                               source=cfg.participants)
    empty = [v for v in cfg.clinical.variables if not table[v].notna().any()]
    if empty:
        key = "groups.levels" if cfg.groups.levels is not None else \
            "groups.levels (not set: the column's values, sorted)"
        raise CfhdaskInputError(
            f"config key 'clinical.variables': {empty} have no value in group "
            f"{design.groups[0]!r}, the first of {key}, where the clinical correlations are "
            f"computed; put the group with clinical scores first, e.g. groups: {{levels: "
            f"[{design.groups[1]}, {design.groups[0]}]}}")
    for var in cfg.clinical.variables:
        num = pd.to_numeric(table[var], errors="coerce")
        bad = table.index[num.isna() & table[var].notna()]
        if len(bad):
            raise CfhdaskInputError(
                f"config key 'clinical.variables': {var!r} must be numeric but participant "
                f"{bad[0]!r} of {cfg.participants} has {table.at[bad[0], var]!r}")
    if cfg.covariates:
        encode_covariates(table.dropna(subset=list(cfg.covariates)), cfg.covariates,
                          cfg.categorical, source=f"participants table {cfg.participants} "
                          f"(group {design.groups[0]!r}, clinical correlations)")


def check_study(cfg: StudyConfig) -> StudyPlan:
    """Everything checkable before compute: participants, sessions, columns, groups, inputs,
    the match of every run to a participant, and the design they give.

    Raises
    ------
    CfhdaskInputError
        Naming the config key, the column or the runs at fault.
    """
    from cfhdask.io.participants import read_sessions

    so = cfg.storage_options
    participants = read_participants(cfg.participants, so)
    sessions = read_sessions(cfg.participants, so)
    check_columns(cfg, participants, sessions)
    levels = group_levels(cfg, participants)
    inputs, skips = discover(cfg)
    inputs, skips = _plan_denoising(cfg, inputs, list(skips))
    runs = [i.subject for i in inputs]
    matched = match_subjects(participants[ID_COLUMN], runs)
    unknown = [r for r in runs if r not in matched]
    if unknown:
        raise CfhdaskInputError(
            f"config key 'participants': run(s) {unknown} match no participant_id of "
            f"{cfg.participants} (participant_id sub-<label> pairs with "
            "sub-<label>[_ses-..][_run-..])")
    participants = _without_skipped(participants, runs, [s.subject for s in skips])
    design = _design(cfg, participants, sessions, levels, runs) if runs else None
    if design is not None:
        _check_clinical(cfg, participants, sessions, design)
    return StudyPlan(participants, sessions, levels, inputs, skips, design)


def _plan_denoising(cfg: StudyConfig, inputs: list, skips: list) -> tuple[list, list]:
    """Check every run's headers, tables and sidecars against the denoising settings.

    A run that cannot be denoised (no TR, too few volumes, a filter band without
    frequency bins...) is skipped with its reason, before anything is computed.
    """
    params = denoise_params(cfg)
    if params is None or not inputs:
        return inputs, skips
    from cfhdask.prep.discover import Skip
    from cfhdask.prep.summary import plan_inputs

    rows = plan_inputs(inputs, params, (), cfg.storage_options)
    bad = {r.subject: r.problem for r in rows if not r.ok}
    skips += [Skip(sub, why) for sub, why in bad.items()]
    return [i for i in inputs if i.subject not in bad], skips


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
    plan = check_study(cfg)
    if not plan.inputs:
        raise CfhdaskInputError("no input runs found: " + "; ".join(
            f"{s.subject}: {s.reason}" for s in plan.skipped) if plan.skipped
            else "no input runs found")
    os.makedirs(cfg.output, exist_ok=True)

    from cfhdask.cluster import dask_client

    if client is not None:
        return _run(cfg, plan, client, on_stage)
    with dask_client(config=cfg.cluster) as c:  # one cluster for every stage
        log.info("Dask dashboard: %s", c.dashboard_link)
        return _run(cfg, plan, c, on_stage)


def _run(cfg: StudyConfig, plan: StudyPlan, client, on_stage) -> StudyResult:
    from cfhdask.io.store import CohortStore
    from cfhdask.prep.ingest import SubjectsFailed, ingest
    from cfhdask.prep.pipeline import make_prepare

    timings: dict[str, float] = {}
    levels, inputs = plan.levels, plan.inputs
    skipped = {s.subject: s.reason for s in plan.skipped}
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

    from cfhdask.stats.inference import atlases_on

    # the stats stage's atlases are sampled on the grid by a worker while the maps are
    # computed (held until that stage, which finds them done under the same task keys)
    atlases = atlases_on(client, cfg.stats.atlases, store.grid_shape, store.affine)
    metrics = cfg.analysed_metrics()
    with _Timer(timings, "cfh", on_stage):
        for metric in metrics:
            _compute_metric(cfg, store, metric, client)

    runs = [i.subject for i in inputs]
    per_metric: dict[str, dict] = {}
    with _Timer(timings, "stats", on_stage):
        for metric in metrics:
            per_metric[metric] = _stats(cfg, store, store_fp, metric, plan, runs, client,
                                        skipped)
    del atlases
    main = per_metric[metrics[0]]
    null_dir = None
    if cfg.null_check.enabled:
        with _Timer(timings, "null_check", on_stage):
            null_dir, reused = _null_check_stage(
                cfg, store, main["participants"], levels, main["subjects"], plan.sessions,
                client, main["stats_params"], metrics[0])
            skipped.update(reused)
    table = _participant_table(cfg, main["participants"], plan.sessions, main["maps"])

    with _Timer(timings, "clinical", on_stage):
        t1, corr = _clinical(cfg, levels, table, store, per_metric)

    with _Timer(timings, "report", on_stage):
        from cfhdask.report.html import build_report

        report = build_report(
            os.path.join(cfg.output, "report.html"),
            stats_dir={m: r["stats_dir"] for m, r in per_metric.items()}, store=store,
            participants=table, table1=t1, correlations=corr,
            cluster_values={m: r["values"] for m, r in per_metric.items()},
            params=_report_params(cfg), title=cfg.name,
            group=cfg.groups.column, groups=tuple(levels), alpha=cfg.stats.alpha,
            null_check_dir=null_dir, **cfg.report.model_dump())
    write_json(os.path.join(cfg.output, "timings.json"), timings)
    main = per_metric[metrics[0]]
    return StudyResult(output=cfg.output, store=url, stats_dir=main["stats_dir"],
                       report=str(report), clusters=main["clusters"], table1=t1,
                       correlations=corr, timings=timings, skipped=skipped,
                       metrics={m: {k: r[k] for k in ("stats_dir", "clusters", "correlations")}
                                for m, r in per_metric.items()})


def _participant_table(cfg: StudyConfig, participants: pd.DataFrame, sessions, maps: dict
                       ) -> pd.DataFrame:
    """The participants analysed, one row each, session-level values combined over their maps."""
    from cfhdask.stats.design import participant_values

    columns = list(dict.fromkeys([cfg.groups.column, *cfg.covariates, *cfg.clinical.variables,
                                  *cfg.clinical.table1]))
    table = participant_values(participants, maps, columns,
                               categorical=[*cfg.categorical, cfg.groups.column],
                               sessions=sessions, source=cfg.participants)
    others = participants.set_index(ID_COLUMN).drop(columns=columns, errors="ignore")
    table = table.join(others.loc[~others.index.duplicated()], how="left")
    table.index.name = ID_COLUMN
    return table.reset_index()


def _compute_metric(cfg: StudyConfig, store, metric: str, client) -> None:
    """The maps of one metric for every subject that lacks them."""
    c = cfg.cfh
    engine = {"block": c.block, "backend": c.backend, "client": client}
    if metric in ("cfh", "cfh_subject"):
        from cfhdask.cfh.compute import compute_cfh

        compute_cfh(store, counterpart="group" if metric == "cfh" else "subject",
                    reference_subjects=c.reference_subjects, participants=cfg.participants,
                    split_every=c.split_every, subject_batch=c.subject_batch,
                    kernel=c.kernel, **engine)
    elif metric == "vmhc":
        from cfhdask.cfh.vmhc import compute_vmhc

        compute_vmhc(store, **engine)
    else:
        from cfhdask.cfh.autonomy import compute_autonomy

        compute_autonomy(store, threshold=cfg.autonomy.threshold, split_every=c.split_every,
                         **engine)


def _maps_key(store, metric: str, subjects: list[str]) -> dict:
    """What the maps of ``metric`` depend on beyond the series (for the stats fingerprint)."""
    if not subjects:
        return {}
    p = store.metric_params(subjects[0], metric)
    keys = {"cfh": ("counterpart_fingerprint",), "ai": ("threshold",), "vmhc": ("mirror",)}
    return {k: p.get(k) for k in keys.get(metric, ())}


def _stats(cfg: StudyConfig, store, store_fp: str, metric: str, plan: StudyPlan,
           runs: list[str], client, skipped: dict) -> dict:
    """Group inference of one metric into its own folder (reused when complete)."""
    done = store.subjects(metric)
    failed = sorted(set(runs) - set(done))
    participants = _without_skipped(plan.participants, done, failed)
    matched = match_subjects(participants[ID_COLUMN], done)
    subjects = sorted(s for s in done if s in matched and s in set(runs))
    st = cfg.stats
    design = {"covariates": cfg.covariates, "categorical": cfg.categorical,
              "drop_missing": cfg.drop_missing, "combine_runs": cfg.combine_runs}
    stats_params = {"store": store_fp, "subjects": subjects,
                    "group": {"column": cfg.groups.column, "levels": plan.levels}, **design,
                    **st.model_dump(exclude={"batch_size"}), "metric": metric,
                    "maps": _maps_key(store, metric, subjects)}
    stats_fp = fingerprint(stats_params)
    stats_dir = os.path.join(cfg.output, f"stats-{metric}-{stats_fp}")
    if _stage_done(stats_dir, stats_fp):
        log.info("stats %s: %s is complete for these parameters; reusing it", metric,
                 stats_dir)
        skipped[f"stats {metric}" if metric != cfg.analysed_metrics()[0] else "stats"] = \
            "reused " + stats_dir
    else:
        from cfhdask.stats.inference import group_inference

        group_inference(
            store, participants, group=cfg.groups.column, groups=plan.levels,
            n_perm=st.n_perm, seed=st.seed, atlases=st.atlases, out_dir=stats_dir,
            client=client, subjects=subjects, sessions=plan.sessions,
            **_inference_options(cfg, metric).keywords())
        _mark_stage(stats_dir, stats_fp, stats_params)
    clusters = pd.read_csv(os.path.join(stats_dir, "clusters.tsv"), sep="\t")
    with open(os.path.join(stats_dir, "stats.json")) as f:
        maps = json.load(f)["maps"]
    return {"stats_dir": stats_dir, "clusters": clusters, "subjects": subjects,
            "participants": participants, "maps": maps, "stats_params": stats_params,
            "values": None,
            "correlations": pd.DataFrame()}


def _clinical(cfg: StudyConfig, levels, table: pd.DataFrame, store, per_metric: dict):
    """Table 1 of the study's subjects, and per metric the clinical correlations.

    The main metric's tables are ``clinical/cluster_values.tsv`` and
    ``clinical/correlations.tsv``; another metric ``m`` writes
    ``cluster_values_<m>.tsv`` and ``correlations_<m>.tsv``.  The returned
    correlations hold every metric's rows (column ``metric``).
    """
    from cfhdask.clinical.correlations import (
        cluster_correlations,
        significant_cluster_values,
        write_correlations,
    )
    from cfhdask.clinical.table1 import table1, write_table1

    variables = list(cfg.clinical.table1) or list(dict.fromkeys(
        [*cfg.covariates, *cfg.clinical.variables]))
    t1 = table1(table, group=cfg.groups.column, groups=tuple(levels),
                variables=[v for v in variables if v in table.columns],
                normality_alpha=cfg.clinical.normality_alpha)
    clin_dir = os.path.join(cfg.output, "clinical")
    os.makedirs(clin_dir, exist_ok=True)
    write_table1(t1, os.path.join(clin_dir, "table1.tsv"))
    frames = []
    for k, (metric, res) in enumerate(per_metric.items()):
        suffix = "" if k == 0 else f"_{metric}"
        clusters = res["clusters"]
        contrasts = sorted(set(clusters["contrast"])) if len(clusters) else []
        imgs = {c: os.path.join(res["stats_dir"], f"{c}_clusters.nii.gz") for c in contrasts}
        if not (imgs and cfg.clinical.variables):
            continue
        maps = res["maps"]
        runs = [s for subs in maps.values() for s in subs]
        per_map = significant_cluster_values(
            store.cfh_maps(runs, var=metric), store.ijk, imgs, clusters, alpha=cfg.stats.alpha)
        if not per_map.shape[1]:
            continue
        owner = {s: pid for pid, subs in maps.items() for s in subs}
        values = per_map.groupby(per_map.index.map(owner), sort=False).mean()
        values.index.name = "subject"
        values.to_csv(os.path.join(clin_dir, f"cluster_values{suffix}.tsv"), sep="\t")
        corr = cluster_correlations(
            values, table, group=cfg.groups.column, group_value=levels[0],
            variables=cfg.clinical.variables, covariates=cfg.covariates,
            categorical=cfg.categorical, methods=tuple(cfg.clinical.methods),
            drop_missing=True)
        corr.insert(0, "metric", metric)
        write_correlations(corr, os.path.join(clin_dir, f"correlations{suffix}.tsv"))
        res["values"], res["correlations"] = values, corr
        frames.append(corr)
    corr = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return t1, corr


def _report_params(cfg: StudyConfig) -> dict:
    """What the report's methods text needs beyond the recorded provenance.

    Everything that ran (denoising, mask, permutations, thresholds) is read by
    the report from the store and ``stats.json``; only the clinical analysis
    is described from the config.
    """
    return {"clinical_covariates": list(cfg.covariates),
            "normality_alpha": cfg.clinical.normality_alpha}


def _inference_options(cfg: StudyConfig, metric: str):
    """The study's inference options (its ``stats`` section and design) for ``metric``."""
    from cfhdask.settings import DesignSettings
    from cfhdask.stats.options import InferenceOptions

    design = DesignSettings(**{k: getattr(cfg, k) for k in DesignSettings.model_fields})
    return InferenceOptions(stats=cfg.stats.model_copy(update={"metric": metric}),
                            design=design)


def _null_check_stage(cfg: StudyConfig, store, participants: pd.DataFrame, levels,
                      subjects: list[str], sessions, client, stats_params: dict,
                      metric: str) -> tuple[str, dict[str, str]]:
    """The optional null-check stage, with the study's design and ``stats`` settings.

    Returns its output folder and what was reused (for ``skipped``).
    """
    nc = cfg.null_check
    params = {**stats_params, "null_check": nc.model_dump(exclude={"enabled"})}
    fp = fingerprint(params)
    out = os.path.join(cfg.output, f"null-check-{fp}")
    if _stage_done(out, fp):
        log.info("null-check: %s is complete for these parameters; reusing it", out)
        return out, {"null_check": "reused " + out}
    from cfhdask.stats.nullcheck import null_check

    null_check(store, participants, group=cfg.groups.column, groups=levels, level=nc.level,
               sizes=nc.sizes, n_splits=nc.n_splits, n_perm=nc.n_perm, seed=nc.seed,
               uncorrected_p=nc.uncorrected_p, interval=nc.interval, sessions=sessions,
               subjects=subjects, client=client, out_dir=out,
               **_inference_options(cfg, metric).keywords())
    _mark_stage(out, fp, params)
    return out, {}
