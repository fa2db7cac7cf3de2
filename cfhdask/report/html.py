"""The self-contained HTML report (``report.html``).

Every image is embedded as a base64 PNG data URI and the style sheet is
inline, so the file opens offline and can be mailed as it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape

from cfhdask._version import package_versions
from cfhdask.cfh.mirror import counterpart_displacement
from cfhdask.clinical.correlations import partial_residuals, significant_cluster_values
from cfhdask.clinical.table1 import format_p
from cfhdask.clinical.table1 import table1 as compute_table1
from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import match_subjects
from cfhdask.io.atomic import atomic_write
from cfhdask.io.store import METRIC_LABELS
from cfhdask.report import figures
from cfhdask.report.data import (
    StatsOutputs,
    load_img,
    observed_for_null,
    read_stats_dir,
)
from cfhdask.report.methods import collect_parameters, methods_paragraphs
from cfhdask.stats.outputs import clusters_to_show, contrast_order, summary_clusters

log = logging.getLogger(__name__)

CLUSTER_COLUMNS = ("contrast", "cluster", "size_voxels", "size_mm3", "peak_t", "peak_x",
                   "peak_y", "peak_z", "p_fwe", "mass_p_fwe", "tfce_p_fwe", "aal_peak",
                   "aal_regions", "harvard_oxford_peak")
P_COLUMNS = ("p", "p_fwe", "mass_p_fwe", "p_fdr", "tfce_p_fwe")


def _read_table(obj, what: str) -> pd.DataFrame | None:
    if obj is None or isinstance(obj, pd.DataFrame):
        return obj
    path = Path(obj)
    if not path.exists():
        raise CfhdaskInputError(f"{what}: file {str(path)!r} does not exist")
    return pd.read_csv(path, sep="\t" if path.suffix in (".tsv", ".txt") else ",")


def _html_table(df: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    if df is None or df.empty:
        return ""
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    df = df.copy()
    for c in df.columns:
        if c in P_COLUMNS or c.startswith("shapiro_p"):
            df[c] = [format_p(v) if isinstance(v, (int, float, np.floating)) else v
                     for v in df[c]]
        elif pd.api.types.is_float_dtype(df[c]):
            df[c] = [("" if not np.isfinite(v) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")
                     for v in df[c]]
    return df.to_html(index=False, na_rep="", escape=True, border=0, classes="tbl")


class _Figures:
    """Collects figures; a figure that fails leaves a visible note instead of the report."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}

    def add(self, section: str, caption: str, make: Callable[[], str | list[str]]) -> None:
        t0 = time.perf_counter()
        try:
            uris = make()
        except Exception as exc:  # a figure must not sink the report; it is shown as failed
            log.warning("report figure %r failed: %s", caption, exc, exc_info=True)
            self.items.append({"section": section, "caption": caption, "uris": [],
                               "note": f"figure failed: {type(exc).__name__}: {exc}"})
            return
        finally:
            self.timings[caption] = time.perf_counter() - t0
        uris = [uris] if isinstance(uris, str) else list(uris)
        self.items.append({"section": section, "caption": caption, "uris": uris, "note": ""})

    def note(self, section: str, caption: str, note: str) -> None:
        self.items.append({"section": section, "caption": caption, "uris": [], "note": note})

    def table(self, section: str, caption: str, html: str) -> None:
        self.items.append({"section": section, "caption": caption, "uris": [], "note": "",
                           "table": html})


def _cluster_t_threshold(p: Mapping[str, Any], outputs: StatsOutputs, contrast: str) -> float:
    if p.get("cluster_t") is not None:
        return float(p["cluster_t"])
    if p.get("cluster_p") is not None and p.get("df") is not None:
        from scipy import stats

        return float(stats.t.isf(float(p["cluster_p"]), float(p["df"])))
    if contrast in outputs.clusters_img:
        lab = np.asarray(load_img(outputs.clusters_img[contrast]).dataobj)
        t = np.asarray(load_img(outputs.tstat[contrast]).dataobj)
        if (lab > 0).any():
            return float(np.min(t[lab > 0]))
    return 3.0


def _stats_figures(figs: _Figures, outputs: StatsOutputs, p: Mapping[str, Any], *,
                   max_clusters: int, alpha: float, label: str = "",
                   only_significant: bool = False) -> None:
    table = outputs.clusters
    group_section = "Group difference" + (f": {label}" if label else "")
    null_section = "Permutation inference" + (f": {label}" if label else "")
    for contrast in contrast_order(outputs.contrasts, table):
        timg = load_img(outputs.tstat[contrast])
        thr = _cluster_t_threshold(p, outputs, contrast)
        figs.add(group_section, f"{contrast}: glass brain of the t-map (|t| > {thr:.2f})",
                 lambda timg=timg, thr=thr, c=contrast: figures.glass_brain(
                     timg, threshold=thr, title=f"{c}: t"))
        if contrast not in outputs.clusters_img or "contrast" not in table.columns:
            continue
        rows = clusters_to_show(table[table["contrast"] == contrast], alpha, max_clusters)
        if only_significant and "p_fwe" in rows.columns:
            rows = rows[rows["p_fwe"] < alpha]
        if rows.empty:
            continue
        peaks = [tuple(float(r[k]) for k in ("peak_x", "peak_y", "peak_z"))
                 for _, r in rows.iterrows()]
        titles = []
        for _, r in rows.iterrows():
            label = r.get("harvard_oxford_peak", r.get("aal_peak", ""))
            label = "" if pd.isna(label) else str(label)
            pf = r.get("p_fwe", np.nan)
            sig = "" if pd.isna(pf) else (f"p_FWE={format_p(float(pf))}"
                                          + (" *" if float(pf) < alpha else ""))
            titles.append(f"{contrast} #{int(r['cluster'])} {label} peak t={r['peak_t']:.2f} "
                          f"({int(r['peak_x'])},{int(r['peak_y'])},{int(r['peak_z'])}) {sig}")
        cimg = load_img(outputs.clusters_img[contrast])
        figs.add(group_section, f"{contrast}: clusters over the MNI152 template, cut at "
                 "each peak (t-values inside the clusters)",
                 lambda timg=timg, cimg=cimg, peaks=peaks, titles=titles:
                 figures.cluster_slices(timg, cimg, peaks, titles))
    if outputs.nulls and only_significant:
        figs.note(null_section, "Null distributions",
                  f"permutation null maxima of {label or 'this metric'}: *_null_*.npy in "
                  f"{outputs.directory}")
    elif outputs.nulls:
        observed = {n: observed_for_null(n, outputs.null_contrast(n), outputs)
                    for n in outputs.nulls}
        figs.add(null_section, "Permutation null distributions of the maximum "
                 "statistics (dashed: FWE critical value; red: observed)",
                 lambda: figures.null_distributions(outputs.nulls, observed, alpha=alpha))
    else:
        figs.note(null_section, "Null distributions",
                  "no null distribution (*.npy) in the statistics directory")


def _store_figures(figs: _Figures, store, participants: pd.DataFrame | None, *, group: str,
                   groups: Sequence[str], subject_column: str, metric: str = "cfh",
                   section: str = "Maps", displacement: bool = True) -> None:
    label = METRIC_LABELS.get(metric, metric)
    subjects = store.subjects(metric)
    if not subjects:
        figs.note(section, f"Group-mean {label}",
                  f"the store holds no subject with {label} maps")
        return
    cfh = store.cfh_maps(subjects, var=metric).data.compute()
    by_group: dict[str, list[int]] = {}
    if participants is not None and group in participants.columns:
        ids = participants.set_index(participants[subject_column].astype(str)) \
            if subject_column in participants.columns else participants
        owner = match_subjects(ids.index, subjects)  # sessions/runs -> their participant
        for g in groups:
            members = set(ids.index[ids[group].astype(str) == g])
            by_group[g] = [i for i, s in enumerate(subjects) if owner.get(s) in members]
    else:
        by_group["all subjects"] = list(range(len(subjects)))

    def mean_maps() -> str:
        imgs = {}
        for g, idx in by_group.items():
            if not idx:
                continue
            with np.errstate(invalid="ignore"), _quiet():
                m = np.nanmean(cfh[idx], axis=0)
            vol = store.to_volume(np.nan_to_num(m).astype(np.float32))
            imgs[f"{g} (n={len(idx)})"] = nib.Nifti1Image(vol, store.affine)
        if not imgs:
            raise CfhdaskInputError("no store subject belongs to the groups "
                                    f"{list(groups)} of the participants table")
        return figures.group_mean_maps(imgs)

    unit = "" if metric == "ai" else " (Fisher z)"
    figs.add(section, f"Group-mean {label} maps{unit}", mean_maps)
    if not displacement:
        return
    group_cp = store.group_counterpart()
    if group_cp is None and not store.subjects("cfh_subject"):
        return

    def displacement_map() -> str:
        if group_cp is not None:
            d = counterpart_displacement(store.xyz, group_cp["index"])
            med = d
        else:
            cp = store.cfh_maps(store.subjects("cfh_subject"),
                                var="cfh_subject_counterpart").data.compute()
            d = counterpart_displacement(store.xyz, cp)
            with _quiet():
                med = np.nanmedian(d, axis=0)
        img = nib.Nifti1Image(store.to_volume(np.nan_to_num(med).astype(np.float32)),
                              store.affine)
        return figures.displacement_figure(d, img)

    which = ("the group counterpart (one for the cohort)" if group_cp is not None else
             "the per-subject counterparts (median over subjects)")
    figs.add(section, "Counterpart displacement: distance between each voxel's mirror "
             f"position (-x, y, z) and {which} (0 mm = the anatomical mirror, as VMHC "
             "assumes)", displacement_map)


class _quiet:
    """Silence 'mean of empty slice' warnings of all-NaN voxels (midline)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _scatter_figures(figs: _Figures, correlations: pd.DataFrame, values: pd.DataFrame,
                     participants: pd.DataFrame, p: Mapping[str, Any], *, group: str,
                     group_value: str, subject_column: str, label: str = "") -> None:
    covs = list(p.get("clinical_covariates") or p.get("covariates") or [])
    for method, rows in correlations.groupby("method", sort=False):
        panels = []
        for r in rows.itertuples():
            if r.cluster not in values.columns:
                continue
            res = partial_residuals(values, participants, cluster=r.cluster, variable=r.variable,
                                    method=method, group=group, group_value=group_value,
                                    covariates=covs, subject_column=subject_column)
            panels.append((f"{r.cluster} ~ {r.variable}", res,
                           {"r": r.r, "p": r.p, "p_fdr": r.p_fdr}))
        if not panels:
            figs.note("Clinical correlations", f"{method} partial correlations",
                      "cluster values for the correlation table are not available")
            continue
        suffix = " (ranks)" if method == "spearman" else ""
        figs.add("Clinical correlations",
                 (f"{label}: " if label else "") +
                 f"Partial {method.capitalize()} correlations in the {group_value} group: "
                 f"residuals after regressing out {', '.join(covs) or 'nothing'}{suffix}",
                 lambda panels=panels, s=suffix: figures.partial_scatter(
                     panels, xlabel="clinical variable | covariates" + s,
                     ylabel=f"cluster {label or 'CFH'} | covariates" + s))


def build_report(
    out_html: str | Path,
    *,
    stats_dir: str | Path,
    store=None,
    participants: pd.DataFrame | str | Path | None = None,
    table1: pd.DataFrame | str | Path | None = None,
    correlations: pd.DataFrame | str | Path | None = None,
    cluster_values: pd.DataFrame | str | Path | None = None,
    params: Mapping[str, Any] | None = None,
    title: str = "CFH group analysis",
    versions: Mapping[str, str] | None = None,
    group: str = "group",
    groups: Sequence[str] = ("patient", "control"),
    subject_column: str = "participant_id",
    alpha: float = 0.05,
    max_cluster_figures: int = 8,
) -> Path:
    """Write a self-contained HTML report of a CFH study.

    Parameters
    ----------
    out_html : str or Path
        Destination (written to ``<name>.part`` then renamed).
    stats_dir : str, Path or mapping metric -> str or Path
        Output directory of the group statistics (t-maps, cluster maps,
        ``clusters.tsv``, null ``*.npy``, ``stats.json``), or one per metric
        (``cfh``, ``cfh_subject``, ``vmhc``, ``ai``), the main one first: each
        further metric gets its own section with its cluster table.
    store : CohortStore or str, optional
        The cohort store (object or URL); gives the group-mean CFH maps, the
        counterpart displacement and the cluster values.  Without it those
        figures are replaced by a note.
    participants : DataFrame or path, optional
        Participants table (``subject_column``, ``group``, clinical columns).
    table1 : DataFrame or path, optional
        :func:`cfhdask.clinical.table1.table1` output; computed from
        ``participants`` when omitted.
    correlations : DataFrame or path, optional
        :func:`cfhdask.clinical.correlations.cluster_correlations` output.
    cluster_values : DataFrame, path or mapping metric -> DataFrame, optional
        Subject x cluster values used by ``correlations`` (index: participant
        ids; one per metric when ``correlations`` has a ``metric`` column);
        computed from the store with
        :func:`~cfhdask.clinical.correlations.significant_cluster_values` when omitted.
    params : dict, optional
        Parameters actually used (see :mod:`cfhdask.report.methods`); override
        what the store attributes and ``stats.json`` record.
    title : str
        Report title.
    versions : dict, optional
        Package versions (default: ``stats.json``'s ``versions`` merged over
        the installed ones).
    group, groups, subject_column : str
        Participants-table columns and the two groups (first = patients).
    alpha : float
        Significance level for clusters.
    max_cluster_figures : int
        At most this many cluster slice figures per contrast.

    Returns
    -------
    Path of the written report.
    """
    t_start = time.perf_counter()
    out_html = Path(out_html)
    dirs = dict(stats_dir) if isinstance(stats_dir, Mapping) else {None: stats_dir}
    all_outputs = {m: read_stats_dir(d) for m, d in dirs.items()}
    metric, outputs = next(iter(all_outputs.items()))
    metric = metric or outputs.params.get("metric") or "cfh"
    extra = {m: o for m, o in list(all_outputs.items())[1:]}
    if isinstance(store, (str, Path)):
        from cfhdask.io.store import open_store

        store = open_store(str(store))
    participants = _read_table(participants, "participants table")
    table1 = _read_table(table1, "table 1")
    correlations = _read_table(correlations, "correlation table")
    if isinstance(cluster_values, (str, Path)):
        cluster_values = pd.read_csv(cluster_values, sep="\t", index_col=0)
    groups = [str(g) for g in groups]

    store_sources: list[Mapping] = []
    if store is not None:
        subs = store.subjects(metric) or store.subjects("ingested")
        if subs:
            store_sources.append(store.subject_attrs(subs[0]))
        group_cp = store.group_counterpart() if metric == "cfh" else None
        if group_cp is not None:
            ref = group_cp.get("reference") or {}
            store_sources.append({"reference_kind": ref.get("kind"),
                                  "n_reference": ref.get("n_subjects")})
        root = dict(store.attrs) if hasattr(store, "attrs") else {}
        mask = root.get("mask") or {}
        store_sources.append({**root, "mask_source": mask.get("source"),
                              "gm_threshold": mask.get("gm_threshold"),
                              "n_voxels": store.n_voxels})
    p = collect_parameters(*store_sources, outputs.params, dict(params or {}))
    if "n_per_group" not in p and participants is not None and group in participants.columns:
        ids = participants[subject_column].astype(str) if subject_column in participants \
            else participants.index.astype(str)
        in_study = ids.isin(store.subjects(metric)) if store is not None else \
            np.ones(len(ids), bool)
        counts = participants.loc[np.asarray(in_study), group].astype(str).value_counts()
        p["n_per_group"] = {g: int(counts.get(g, 0)) for g in groups}
    p.setdefault("metric", metric)
    if p.get("contrasts") is None and outputs.contrasts:
        p["contrasts"] = outputs.contrasts
    if versions is None:
        versions = {**package_versions(), **(outputs.params.get("versions") or {})}

    if table1 is None and participants is not None:
        variables = p.get("table1_variables")
        table1 = compute_table1(participants, group=group, groups=groups, variables=variables,
                                normality_alpha=float(p.get("normality_alpha", 0.05)))

    figs = _Figures()
    _stats_figures(figs, outputs, p, max_clusters=max_cluster_figures, alpha=alpha,
                   label=METRIC_LABELS.get(metric, "") if extra else "")
    if store is not None:
        _store_figures(figs, store, participants, group=group, groups=groups,
                       subject_column=subject_column, metric=metric,
                       section="CFH maps" if metric in ("cfh", "cfh_subject") else "Maps")
    else:
        figs.note("CFH maps", "Group-mean CFH and counterpart displacement",
                  "no cohort store given: group-mean CFH maps and counterpart displacement "
                  "are not shown")
    for m, o in extra.items():
        label = METRIC_LABELS.get(m, m)
        sec = f"Group difference: {label}"
        shown = _html_table(summary_clusters(o.clusters, alpha), CLUSTER_COLUMNS)
        n_sig_m = int((o.clusters["p_fwe"] < alpha).sum()) if "p_fwe" in o.clusters else 0
        figs.table(sec, f"{label}: {n_sig_m} of {len(o.clusters)} cluster(s) significant at "
                   f"cluster-level FWE p < {alpha} (statistics in {o.directory})", shown)
        _stats_figures(figs, o, {**p, **o.params}, max_clusters=max_cluster_figures,
                       alpha=alpha, label=label, only_significant=True)
        if store is not None:
            _store_figures(figs, store, participants, group=group, groups=groups,
                           subject_column=subject_column, metric=m, section=sec,
                           displacement=False)
    if correlations is not None and not correlations.empty and participants is not None:
        by_metric = {m: c for m, c in correlations.groupby("metric", sort=False)} \
            if "metric" in correlations.columns else {metric: correlations}
        for m, corr_m in by_metric.items():
            values = cluster_values.get(m) if isinstance(cluster_values, Mapping) else \
                cluster_values
            o = all_outputs.get(m) or all_outputs.get(None) or outputs
            if values is None and store is not None and o.clusters_img:
                values = significant_cluster_values(
                    store.cfh_maps(store.subjects(m), var=m), store.ijk, o.clusters_img,
                    o.clusters if not o.clusters.empty else None, alpha=alpha)
            if values is not None:
                _scatter_figures(figs, corr_m, values, participants, p, group=group,
                                 group_value=groups[0], subject_column=subject_column,
                                 label=METRIC_LABELS.get(m, m) if extra else "")
            else:
                figs.note("Clinical correlations", "Partial correlation scatter plots",
                          "no cluster values (give cluster_values or a store)")

    sections: dict[str, list[dict[str, Any]]] = {}
    for item in figs.items:
        sections.setdefault(item["section"], []).append(item)
    env = Environment(loader=PackageLoader("cfhdask.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    tables = {
        "table1": _html_table(_table1_display(table1, groups)) if table1 is not None else "",
        "clusters": _html_table(summary_clusters(outputs.clusters, alpha), CLUSTER_COLUMNS),
        "correlations": _html_table(correlations, ("metric", "cluster", "variable", "method",
                                                   "n", "r", "ci_low", "ci_high", "p",
                                                   "p_fdr"))
        if correlations is not None else "",
    }
    n_sig = int((outputs.clusters["p_fwe"] < alpha).sum()) if "p_fwe" in outputs.clusters else None
    html = env.get_template("report.html.j2").render(
        title=title, methods=methods_paragraphs(p, versions), tables=tables,
        sections=sections, n_clusters=len(outputs.clusters), n_significant=n_sig, alpha=alpha,
        contrasts=outputs.contrasts, stats_dir=str(outputs.directory),
        primary_label=METRIC_LABELS.get(metric, metric) if extra else "",
        generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        build_seconds=f"{time.perf_counter() - t_start:.1f}",
    )
    atomic_write(out_html, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    log.info("report written to %s in %.1f s (figures: %s)", out_html,
             time.perf_counter() - t_start,
             ", ".join(f"{k[:30]} {v:.1f}s" for k, v in figs.timings.items()))
    return out_html


def _table1_display(t1: pd.DataFrame, groups: Sequence[str]) -> pd.DataFrame:
    """Table 1 in the paper's layout: variable, group summaries (N), test, statistic, p."""
    if not {"variable", "test"}.issubset(t1.columns):
        return t1
    rows = []
    for _, r in t1.iterrows():
        name = str(r["variable"])
        levels = r.get("levels")
        if isinstance(levels, str) and levels:
            name += f" ({levels})"
        summary = r.get("summary")
        if isinstance(summary, str) and summary and summary != "counts":
            name += f", {summary}"
        row = {"variable": name}
        for g in groups:
            val = r.get(g, "")
            n = r.get(f"n_{g}")
            row[g] = "\u2013" if (not isinstance(val, str) or not val) else (
                f"{val} [n={int(n)}]" if pd.notna(n) else val)
        row["test"] = r["test"] if isinstance(r["test"], str) and r["test"] else "\u2013"
        stat = r.get("statistic")
        row["statistic"] = "" if pd.isna(stat) else f"{float(stat):.3g}"
        row["p"] = format_p(float(r["p"])) if pd.notna(r.get("p")) else "\u2013"
        rows.append(row)
    return pd.DataFrame(rows)
