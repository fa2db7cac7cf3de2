"""``cfhdask null-check``: false positives of the study's inference, measured on its own data.

Eklund et al. (2016, PNAS) split healthy participants at random into two
pseudo-groups, thousands of times, and counted how often each inference method
"found" a group difference that cannot exist.  :func:`null_check` does that on
a cohort store: the participants of one group (the controls, by default) are
split (:func:`cfhdask.stats.splits.make_splits`) into pseudo-groups of the
study's sizes when they fit in the group, half each otherwise, and each split
goes through the same group inference as the study — the same design
(covariates, categorical coding, sessions and runs combined per participant),
the same permutation scheme, cluster-forming threshold, connectivity, TFCE
(each map scored with its own step, as in the study) and metric
(:func:`cfhdask.stats.splits.split_null`).  The empirical FWER of voxel-FWE,
cluster-extent, cluster-mass and TFCE inference, with binomial 95 %
intervals, and the rate of an uncorrected parametric threshold are the
result (:mod:`cfhdask.stats.fwer`).

The splits x permutations are fanned out on Dask as independent tasks by the
machinery of ``cfhdask stats`` (:func:`cfhdask.stats.fanout.fan_out`): the
group's maps are scattered once, each task gets one split's labels and a
batch of its permutations and returns only counts and maxima; the whole
workload is in flight at once; lost workers cost only their unfinished
batches.  Splits and permutations are seeded by index, so the result is the
same whatever the number of workers.

Outputs (``out_dir``): ``null_check.tsv`` (one row per method),
``null_check_splits.tsv`` (one row per split and contrast: the pseudo-groups,
the observed maxima, the p-values, what each method found) and
``null_check.json`` (every parameter, versions).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Unpack

import numpy as np
import pandas as pd

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import ID_COLUMN, match_subjects
from cfhdask.settings import DesignSettings, NullCheckSettings, resolve
from cfhdask.stats.clusters import voxel_graph
from cfhdask.stats.design import Design
from cfhdask.stats.fanout import auto_batch_size, batch_bounds, fan_out
from cfhdask.stats.fwer import (
    attainable_levels,
    found_by_method,
    fwer_table,
    rule_level,
    split_p_values,
    split_tie_levels,
)
from cfhdask.stats.inference import (
    _load,
    _min_p_warning,
    _subject_names,
    analysis_mask,
    inference_design,
    participant_maps,
)
from cfhdask.stats.null import NULL_STATS, SIGNS
from cfhdask.stats.options import InferenceKeywords, InferenceOptions
from cfhdask.stats.splits import (
    SplitSpec,
    check_sizes,
    default_sizes,
    make_splits,
    split_n_perm,
    split_null,
    split_perm_seed,
)

__all__ = ["NullCheckPlan", "NullCheckResult", "null_check", "plan_null_check",
           "write_null_check"]

log = logging.getLogger(__name__)

#: Placeholder labels of the group's design (the split decides the real ones).
PSEUDO = ("A", "B")
#: Contrast names of a split, in the order of :data:`~cfhdask.stats.null.SIGNS`.
CONTRASTS = ("A_gt_B", "B_gt_A")
#: Output files.
SUMMARY_TSV, SPLITS_TSV, PARAMS_JSON = "null_check.tsv", "null_check_splits.tsv", \
    "null_check.json"


@dataclass
class NullCheckPlan:
    """What a null-check will run, checked before any map is read or cluster started.

    Attributes
    ----------
    group, level : str
        The group column and the group split.
    design : Design
        One row per participant of the group (intercept, a placeholder group
        column, the covariates encoded as the study encodes them).
    used : list of str
        The store maps of those participants.
    sizes : (int, int)
    splits : ndarray of int8 (n_splits, n)
        1 = pseudo-group A, 0 = B, -1 unused, over ``design.subjects``.
    n_distinct : int
        Distinct splits that exist.
    settings : NullCheckSettings
    """

    group: str
    level: str
    design: Design
    used: list[str]
    sizes: tuple[int, int]
    splits: np.ndarray
    n_distinct: int
    settings: NullCheckSettings

    @property
    def participants(self) -> list[str]:
        """Participants of the group, in the order of the split labels."""
        return list(self.design.subjects)


@dataclass
class NullCheckResult:
    """Everything :func:`null_check` computed.

    Attributes
    ----------
    summary : DataFrame
        :func:`cfhdask.stats.fwer.fwer_table` (``null_check.tsv``).
    splits : DataFrame
        One row per split and contrast (``null_check_splits.tsv``).
    p_values : ndarray (n_splits, 2, 4)
        FWE p of every split, contrast and statistic (:data:`NULL_STATS`).
    observed : ndarray (n_splits, 2, 4)
        Observed maxima.
    params : dict
    """

    summary: pd.DataFrame
    splits: pd.DataFrame
    p_values: np.ndarray
    observed: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)


def _study_sizes(data, participants, des, group, groups, subjects, sessions,
                 storage_options, metric) -> tuple[int, int] | None:
    """The study's group sizes (its design, from map names only), or None."""
    try:
        design, _ = inference_design(data, participants, des, group=group, groups=groups,
                                     subjects=subjects, sessions=sessions,
                                     storage_options=storage_options, metric=metric)
    except CfhdaskInputError as exc:
        log.info("null-check: the study's group sizes are unknown (%s); splitting in halves",
                 exc)
        return None
    return tuple(int(design.n_per_group[g]) for g in design.groups)


def plan_null_check(data: Any, participants: pd.DataFrame, *, group: str,
                    level: str | None = None, groups: Sequence[str] | None = None,
                    sizes: Sequence[int] | None = None,
                    study_sizes: Sequence[int] | None = None, n_splits: int | None = None,
                    seed: int | None = None, design: DesignSettings | None = None,
                    sessions: pd.DataFrame | None = None,
                    subjects: Sequence[str] | None = None,
                    storage_options: dict | None = None, source: str | None = None,
                    metric: str | None = None) -> NullCheckPlan:
    """Check a null-check and draw its splits, from map names only (no map is read).

    Parameters
    ----------
    data : CohortStore, array or None
        As :func:`cfhdask.stats.inference.group_inference` (None with ``subjects``).
    participants : DataFrame
        The participants table.
    group : str
        Group column.
    level : str, optional
        The group split (default ``null_check.level``, else the second of ``groups``).
    groups : (str, str), optional
        The study's two groups (for the default level and sizes).
    sizes : (int, int), optional
        Pseudo-group sizes (default ``null_check.sizes``, else ``study_sizes``
        when they fit in the group, else half each).
    study_sizes : (int, int), optional
        The study's group sizes (default: from its design, when it has one).
    n_splits, seed : int, optional
        Default ``null_check.n_splits`` / ``null_check.seed``.
    design : DesignSettings, optional
        Covariates, categorical, drop_missing, combine_runs (default: the settings).
    sessions, subjects, storage_options
        As :func:`~cfhdask.stats.inference.inference_design`.
    source : str, optional
        Name of the participants table in messages.

    Raises
    ------
    CfhdaskInputError
        No group to split, an unknown level, a group too small for the sizes,
        fewer distinct splits than asked (naming how many exist).
    """
    nc = resolve("null_check", {"level": level, "sizes": None if sizes is None else list(sizes),
                                "n_splits": n_splits, "seed": seed})
    des = design if design is not None else resolve("design")
    level = nc.level or (str(groups[1]) if groups is not None else None)
    if level is None:
        raise CfhdaskInputError("null-check: name the group to split (--level, study.yaml "
                                "'null_check.level', or the two --groups)")
    if group not in participants.columns:
        raise CfhdaskInputError(f"participants table {source or ''}: no column {group!r} "
                                f"(columns {list(participants.columns)})".replace("  ", " "))
    values = participants[group].astype(str).str.strip()
    if not (values == level).any():
        raise CfhdaskInputError(
            f"--level {level}: no participant of group {level!r} in column {group!r} "
            f"(values {sorted(values.dropna().unique())})")
    names = _subject_names(data, subjects, metric)
    if sizes is None and nc.sizes is None and study_sizes is None:
        study_sizes = _study_sizes(data, participants, des, group, groups, names, sessions,
                                   storage_options, metric)
    table = participants[values == level].copy()
    table[group] = [PSEUDO[i % 2] for i in range(len(table))]
    owner = match_subjects(table[ID_COLUMN].astype(str).str.strip(), names)
    mine = [s for s in names if s in owner]
    if not mine:
        raise CfhdaskInputError(f"null-check: no map of a participant of group {level!r} in "
                                "the data")
    des_ = inference_design(data, table, des, group=group, groups=list(PSEUDO),
                            subjects=mine, sessions=sessions, storage_options=storage_options,
                            metric=metric)
    gdesign, used = des_
    n = gdesign.n
    chosen = tuple(nc.sizes) if nc.sizes is not None else default_sizes(n, study_sizes)
    what = f"group {level!r}" + (f" of {source}" if source else "")
    n_distinct = check_sizes(n, chosen, nc.n_splits, what=what,
                             n_nuisance=gdesign.Z.shape[1])
    splits = make_splits(n, chosen, nc.n_splits, nc.seed)
    log.info("null-check: %d participants of group %r, %d splits into pseudo-groups of %d "
             "and %d (%d distinct exist)", n, level, nc.n_splits, chosen[0], chosen[1],
             n_distinct)
    return NullCheckPlan(group=group, level=level, design=gdesign, used=list(used),
                         sizes=(int(chosen[0]), int(chosen[1])), splits=splits,
                         n_distinct=int(n_distinct), settings=nc)


def null_check(
    data: Any,
    participants: pd.DataFrame | str,
    *,
    group: str,
    level: str | None = None,
    groups: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    n_splits: int | None = None,
    n_perm: int | None = None,
    seed: int | None = None,
    uncorrected_p: float | None = None,
    interval: str | None = None,
    sessions: pd.DataFrame | None = None,
    storage_options: dict | None = None,
    subjects: Sequence[str] | None = None,
    ijk: np.ndarray | None = None,
    grid_shape: Sequence[int] | None = None,
    affine: np.ndarray | None = None,
    hemisphere: np.ndarray | None = None,
    client: Any = None,
    out_dir: str | None = None,
    compute: Literal["dask", "local"] = "dask",
    progress: Callable[[int, int], None] | None = None,
    **options: Unpack[InferenceKeywords],
) -> NullCheckResult:
    """Empirical FWER of the study's inference over random splits of one group.

    Parameters
    ----------
    data, participants, group, groups, sessions, storage_options, subjects, ijk,
    grid_shape, affine, hemisphere, client, compute
        As :func:`cfhdask.stats.inference.group_inference`.
    level : str, optional
        The group split (default ``null_check.level``, else the second of ``groups``).
    sizes : (int, int), optional
        Pseudo-group sizes (default: the study's when they fit, else half each).
    n_splits, n_perm, seed, uncorrected_p, interval
        Default from the ``null_check`` settings.
    out_dir : str, optional
        Write ``null_check.tsv``, ``null_check_splits.tsv``, ``null_check.json``.
    progress : callable, optional
        ``progress(done, total)`` permutations (all splits), as batches finish.
    **options
        The study's inference: :class:`~cfhdask.stats.options.InferenceKeywords`,
        as :func:`~cfhdask.stats.inference.group_inference` (``None``: the
        ``stats`` and ``design`` settings); ``batch_size`` is per task, default
        sized so that all splits together give at least 4 tasks per worker thread.

    Returns
    -------
    NullCheckResult
    """
    opts = InferenceOptions.resolve(options)
    st, des, tfce_dh = opts.stats, opts.design, opts.tfce_dh
    nc = resolve("null_check", dict(n_perm=n_perm, uncorrected_p=uncorrected_p,
                                    interval=interval))
    source = None
    if not isinstance(participants, pd.DataFrame):
        from cfhdask.io.participants import read_participants, read_sessions

        so = storage_options if storage_options is not None else \
            getattr(data, "storage_options", None)
        source = str(participants)
        if sessions is None:
            sessions = read_sessions(participants, so)
        participants = read_participants(participants, so)
    plan = plan_null_check(data, participants, group=group, level=level, groups=groups,
                           sizes=sizes, n_splits=n_splits, seed=seed, design=des,
                           sessions=sessions, subjects=subjects,
                           storage_options=storage_options, source=source, metric=st.metric)
    nc = nc.model_copy(update={k: getattr(plan.settings, k)
                               for k in ("level", "sizes", "n_splits", "seed")})
    Y, ijk, grid_shape, affine, hemi = _group_maps(data, plan, subjects, ijk, grid_shape,
                                                   affine, hemisphere, st.metric)
    keep, _, mask_info = analysis_mask(Y, hemi, plan.design.x, plan.design.Z)
    Y = np.ascontiguousarray(Y[:, keep])
    graph = voxel_graph(ijk[keep], grid_shape, st.connectivity)
    spec = SplitSpec(n_perm=nc.n_perm, scheme=st.scheme, cluster_p=st.cluster_p,
                     tfce=bool(st.tfce), mass_tfce_on=st.mass_tfce_on, tfce_dh=tfce_dh,
                     uncorrected_p=nc.uncorrected_p)
    acc = _run_splits(plan, spec, Y, plan.design.Z, graph, client=client, compute=compute,
                      batch_size=st.batch_size, progress=progress, alpha=st.alpha)
    p = split_p_values(acc["count"], acc["n_perm"])
    positive = found_by_method(p, acc["observed"], acc["t_uncorrected"], st.alpha,
                              bool(st.tfce))
    summary = fwer_table(positive, st.alpha, interval=nc.interval,
                         attainable=attainable_levels(acc["tie_level"], bool(st.tfce)))
    warnings = [w for w in (_min_p_warning(int(acc["n_perm"].min()), st.alpha),) if w]
    for w in warnings:
        log.warning("null-check: %s", w)
    params = {
        "group": plan.group, "level": plan.level, "participants": plan.participants,
        "n_participants": plan.design.n, "maps": plan.design.maps, "n_maps": len(plan.used),
        "sizes": list(plan.sizes), "n_splits": int(nc.n_splits),
        "n_distinct_splits": plan.n_distinct, "n_perm_requested": int(nc.n_perm),
        "n_perm_min": int(acc["n_perm"].min()), "seed": int(nc.seed),
        "scheme": st.scheme, "cluster_p": st.cluster_p, "connectivity": st.connectivity,
        "tfce": bool(st.tfce), "tfce_dh": tfce_dh, "mass_tfce_on": st.mass_tfce_on,
        "metric": st.metric, "alpha": st.alpha, "uncorrected_p": nc.uncorrected_p,
        "covariates": list(des.covariates),
        "categorical": [c for c in des.categorical if c in des.covariates],
        "design_columns": [c for j, c in enumerate(plan.design.columns)
                           if j != plan.design.x_index],
        "combine_runs": des.combine_runs, "drop_missing": des.drop_missing,
        "dropped_subjects": plan.design.dropped, "mask": mask_info,
        "interval": nc.interval, "confidence": 0.95,
        "rule": "a method finds something in a test (split x contrast) when its smallest "
                "FWE p < alpha; FWER = share of the 2 x n_splits tests",
        "exact_level": rule_level(st.alpha, int(acc["n_perm"].min())),
        "p_value": "#(null >= observed) / n_perm, identity permutation included",
        "batch_size": st.batch_size, "warnings": warnings,
    }
    result = NullCheckResult(summary=summary,
                             splits=_split_table(plan, acc, p, positive, bool(st.tfce)),
                             p_values=p, observed=acc["observed"], params=params)
    if out_dir is not None:
        write_null_check(result, out_dir)
    return result


def _group_maps(data, plan: NullCheckPlan, subjects, ijk, grid_shape, affine, hemisphere,
                metric):
    """The group's maps (one row per participant) and the geometry."""
    if hasattr(data, "cfh_maps"):
        Y, ijk, grid_shape, affine, hemi = _load(data, plan.used, ijk, grid_shape, affine,
                                                 hemisphere, metric)
    else:
        names = _subject_names(data, subjects, metric)
        Y, ijk, grid_shape, affine, hemi = _load(data, names, ijk, grid_shape, affine,
                                                 hemisphere, metric)
        Y = Y[[names.index(s) for s in plan.used]]
    return participant_maps(plan.design, plan.used, Y), ijk, grid_shape, affine, hemi


def _run_splits(plan: NullCheckPlan, spec: SplitSpec, Y: np.ndarray, Z: np.ndarray, graph,
                *, client, compute: str, batch_size: int | None, progress,
                alpha: float) -> dict:
    """Fan the splits x permutations out; per split: counts, observed maxima, thresholds,
    and the level attainable with its ties (its null is kept only until it is whole)."""
    splits = plan.splits
    n_splits = splits.shape[0]
    seeds = [split_perm_seed(plan.settings.seed, k) for k in range(n_splits)]
    n_perm = np.array([split_n_perm(lab, spec.n_perm, spec.scheme) for lab in splits])
    shape = (n_splits, len(SIGNS), len(NULL_STATS))
    acc = {"count": np.zeros(shape, dtype=np.int64), "observed": np.zeros(shape),
           "n_perm": n_perm, "df": np.zeros(n_splits, dtype=np.int64),
           "t_threshold": np.zeros(n_splits), "t_uncorrected": np.zeros(n_splits),
           "tie_level": np.zeros(shape)}
    nulls: dict[int, np.ndarray] = {}
    left = n_perm.copy()

    def run(cl) -> None:
        bsize = batch_size or auto_batch_size(
            spec.n_perm, sum(cl.nthreads().values()) if cl is not None else 1, n_splits)
        items, owner = [], []
        for k in range(n_splits):
            for a, b in batch_bounds(int(n_perm[k]), bsize):
                items.append((splits[k], seeds[k], a, b))
                owner.append(k)

        def consume(i: int, res) -> None:
            k = owner[i]
            if res.n_perm != n_perm[k]:  # pragma: no cover - a broken invariant
                raise RuntimeError(f"split {k}: {res.n_perm} permutations, expected {n_perm[k]}")
            acc["count"][k] += res.count
            acc["observed"][k] = res.observed
            acc["df"][k], acc["t_threshold"][k] = res.df, res.t_threshold
            acc["t_uncorrected"][k] = res.t_uncorrected
            null = nulls.setdefault(k, np.zeros((int(n_perm[k]), *shape[1:])))
            start = items[i][2]
            null[start:start + res.null.shape[0]] = res.null
            left[k] -= res.null.shape[0]
            if left[k] == 0:
                acc["tie_level"][k] = split_tie_levels(nulls.pop(k), alpha)

        log.info("null-check: %d splits x %d permutations in %d task(s) of up to %d",
                 n_splits, spec.n_perm, len(items), bsize)
        if cl is None:
            done = 0
            for i, item in enumerate(items):
                consume(i, split_null(Y, Z, graph, spec, *item))
                done += item[3] - item[2]
                if progress is not None:
                    progress(done, int(n_perm.sum()))
            return
        fan_out(cl, split_null, [Y, Z, graph, spec], items, consume,
                what="null-check permutations", sizes=[b - a for _, _, a, b in items],
                result_nbytes=2048 + 64 * bsize, progress=progress)

    if compute == "local":
        run(None)
    elif client is not None:
        run(client)
    else:
        from cfhdask.cluster import dask_client

        with dask_client() as cl:
            run(cl)
    return acc


def _split_table(plan: NullCheckPlan, acc: dict, p: np.ndarray, positive: dict,
                 tfce: bool) -> pd.DataFrame:
    """One row per split and contrast."""
    ids = np.array(plan.participants, dtype=object)
    rows = []
    for k, lab in enumerate(plan.splits):
        a, b = ",".join(ids[lab == 1]), ",".join(ids[lab == 0])
        for i, contrast in enumerate(CONTRASTS):
            row = {"split": k, "contrast": contrast, "n_a": int((lab == 1).sum()),
                   "n_b": int((lab == 0).sum()), "df": int(acc["df"][k]),
                   "n_perm": int(acc["n_perm"][k]), "t_threshold": acc["t_threshold"][k],
                   "t_uncorrected": acc["t_uncorrected"][k]}
            for j, stat in enumerate(NULL_STATS):
                if stat == "max_tfce" and not tfce:
                    continue
                row[stat] = acc["observed"][k, i, j]
                row["p_" + stat.removeprefix("max_")] = p[k, i, j]
            for m, hit in positive.items():
                row[f"found_{m}"] = bool(hit[k, i])
            row["pseudo_a"], row["pseudo_b"] = a, b
            rows.append(row)
    return pd.DataFrame(rows)


def write_null_check(result: NullCheckResult, out_dir: str) -> list[str]:
    """Write ``null_check.tsv``, ``null_check_splits.tsv`` and (last) ``null_check.json``."""
    from cfhdask._version import package_versions
    from cfhdask.io.atomic import atomic_write, write_json

    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise CfhdaskInputError(f"--out {out_dir}: cannot create the directory: {exc}") from exc
    written = []
    for name, table in ((SUMMARY_TSV, result.summary), (SPLITS_TSV, result.splits)):
        path = os.path.join(out_dir, name)
        atomic_write(path, lambda tmp, t=table: t.to_csv(tmp, sep="\t", index=False,
                                                         float_format="%.6g"))
        written.append(path)
    path = os.path.join(out_dir, PARAMS_JSON)
    write_json(path, {**result.params, "versions": package_versions(),
                      "outputs": [SUMMARY_TSV, SPLITS_TSV]})
    written.append(path)
    log.info("null-check: wrote %s", ", ".join(written))
    return written
