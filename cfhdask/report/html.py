"""The report: ``report.html`` and its figure files (``figures/`` next to it).

The HTML is self-contained (inline style sheet, every figure embedded as a
PNG ``data:`` URI), so it opens offline and can be mailed as it is.  Each
figure is also written to ``figures/<name>.png`` (``report.dpi``, 300 by
default) and ``figures/<name>.pdf`` (or ``.svg``), named by contrast and
cluster, ready for a paper; the HTML links both.  The figure folder is built
under a temporary name and swapped in whole, so it never mixes two runs.

The page is a list of sections generated from data: for every analysis (a
statistics directory; one per metric -- ``cfh``, ``cfh_subject``, ``vmhc``,
``ai`` -- when ``stats_dir`` is a mapping) and every contrast, the same blocks
(Figure 1, the SPM-style cluster table, glass brain, cluster slices, null
distributions), then the cohort-store maps (group means of every metric, the
counterpart displacement) and the clinical results (per metric).  A figure that fails leaves a visible note, never a
broken report.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from cfhdask.cfh.mirror import counterpart_displacement
from cfhdask.clinical.correlations import partial_residuals, significant_cluster_values
from cfhdask.clinical.table1 import table1 as compute_table1
from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import match_subjects
from cfhdask.io.atomic import atomic_write
from cfhdask.io.store import METRIC_LABELS
from cfhdask.report import figures
from cfhdask.report.data import (
    StatsOutputs,
    cluster_t_map,
    load_img,
    observed_for_null,
    read_stats_dir,
)
from cfhdask.report.methods import contrast_label, gather_provenance, methods_paragraphs
from cfhdask.report.nullcheck import (
    null_check_intro,
    null_check_plot,
    null_check_rows,
    read_null_check,
)
from cfhdask.report.tables import cluster_name, cluster_table, frame_table, table1_display
from cfhdask.settings import resolve
from cfhdask.stats.outputs import clusters_to_show, contrast_order, summary_clusters

log = logging.getLogger(__name__)

__all__ = ["FIGURES_DIR", "build_report", "design_order"]

#: Folder of the figure files, next to the report.
FIGURES_DIR = "figures"
#: Short names of the metrics, for axis labels and figure titles.
SHORT_NAMES = {"cfh": "CFH", "cfh_subject": "CFH", "vmhc": "VMHC", "ai": "AI"}


@dataclass
class Section:
    """One section of the page: an anchor, a heading and its blocks, in order."""

    id: str
    title: str
    blocks: list[dict[str, Any]] = field(default_factory=list)


class _Figures:
    """Draws, saves and collects figures; a figure that fails leaves a note instead."""

    def __init__(self, folder: Path, *, dpi: int, vector_format: str) -> None:
        self.folder, self.dpi, self.vector_format = folder, dpi, vector_format
        self.timings: dict[str, float] = {}
        self.stems: list[str] = []

    def block(self, stem: str, caption: str, make: Callable[[], Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            fig = make()
            files = figures.save_figure(fig, self.folder, stem, dpi=self.dpi,
                                        vector_format=self.vector_format)
        except Exception as exc:  # a figure must not sink the report; it is shown as failed
            log.warning("report figure %r failed: %s", stem, exc, exc_info=True)
            return {"kind": "note", "caption": caption,
                    "note": f"figure failed: {type(exc).__name__}: {exc}"}
        finally:
            self.timings[stem] = time.perf_counter() - t0
        self.stems.append(stem)
        return {"kind": "figure", "caption": caption, "uri": files.uri, "stem": stem,
                "png": f"{FIGURES_DIR}/{files.png.name}",
                "vector": f"{FIGURES_DIR}/{files.vector.name}",
                "vector_format": self.vector_format.upper(), "dpi": self.dpi}


def _note(caption: str, note: str) -> dict[str, Any]:
    return {"kind": "note", "caption": caption, "note": note}


def _read_table(obj, what: str) -> pd.DataFrame | None:
    if obj is None or isinstance(obj, pd.DataFrame):
        return obj
    path = Path(obj)
    if not path.exists():
        raise CfhdaskInputError(f"{what}: file {str(path)!r} does not exist")
    return pd.read_csv(path, sep="\t" if path.suffix in (".tsv", ".txt") else ",")


# ----------------------------------------------------------------------------- analyses
@dataclass
class _Analysis:
    """One statistics directory and what the report shows of it.

    ``name`` prefixes the figure files and titles when the report shows
    several analyses (None for one); ``metric`` is the map it analysed.
    """

    name: str | None
    outputs: StatsOutputs
    metric: str = "cfh"
    threshold: float = 3.0
    vmax: float = 5.0
    shown: dict[str, pd.DataFrame] = field(default_factory=dict)  # contrast -> table rows
    significant: dict[str, pd.DataFrame] = field(default_factory=dict)
    hidden: dict[str, int] = field(default_factory=dict)

    @property
    def order(self) -> list[str]:
        """Contrasts in design order (picks the colours)."""
        return design_order(self.outputs)

    def stem(self, *parts: str) -> str:
        return "_".join(([self.name] if self.name else []) + list(parts))

    @property
    def label(self) -> str:
        """The metric in words (``"VMHC"``)."""
        return metric_label(self.metric)

    @property
    def short(self) -> str:
        """The metric's short name for axis labels (CFH, VMHC, AI)."""
        return SHORT_NAMES.get(self.metric, "CFH")

    def title(self, text: str) -> str:
        return f"{metric_label(self.name)}: {text}" if self.name else text

    @property
    def contrasts(self) -> list[str]:
        return contrast_order(self.outputs.contrasts, self.outputs.clusters)


def metric_label(metric: str | None) -> str:
    """A metric (or analysis name) in words: ``"vmhc"`` -> ``"VMHC"``."""
    return METRIC_LABELS.get(str(metric), str(metric))


def design_order(outputs: StatsOutputs) -> list[str]:
    """Contrasts in design order: first group > second, then the reverse, then others."""
    g = list(outputs.params.get("groups") or [])
    first = [f"{g[0]}_gt_{g[1]}", f"{g[1]}_gt_{g[0]}"] if len(g) == 2 else []
    known = [c for c in first if c in outputs.contrasts]
    return known + [c for c in outputs.contrasts if c not in known]


def _cluster_threshold(outputs: StatsOutputs) -> float:
    p = outputs.params
    if p.get("t_threshold") is not None:
        return float(p["t_threshold"])
    if p.get("cluster_p") is not None and p.get("df") is not None:
        from scipy import stats

        return float(stats.t.isf(float(p["cluster_p"]), float(p["df"])))
    vals = []
    for c, path in outputs.clusters_img.items():
        lab = np.asarray(load_img(path).dataobj)
        if (lab > 0).any():
            vals.append(float(np.min(np.asarray(load_img(outputs.tstat[c]).dataobj)[lab > 0])))
    return min(vals) if vals else 3.0


def _prepare(name: str | None, outputs: StatsOutputs, *, alpha: float, min_voxels: int,
             metric: str) -> _Analysis:
    an = _Analysis(name=name, outputs=outputs, metric=metric,
                   threshold=_cluster_threshold(outputs))
    table = outputs.clusters
    tmax = []
    for c in outputs.contrasts:
        rows = table[table["contrast"] == c] if "contrast" in table.columns else table.iloc[:0]
        big = rows[rows["size_voxels"] >= min_voxels] if "size_voxels" in rows else rows
        an.hidden[c] = len(rows) - len(big)
        an.shown[c] = summary_clusters(big, alpha) if len(big) else big
        an.significant[c] = big[big["p_fwe"] < alpha] if "p_fwe" in big else big.iloc[:0]
        if len(an.significant[c]):
            tmax.append(float(an.significant[c]["peak_t"].max()))
        elif c in outputs.tstat:
            tmax.append(float(np.nanmax(np.asarray(load_img(outputs.tstat[c]).dataobj))))
    an.vmax = max([an.threshold + 0.5, *tmax])
    return an


def _peak(r) -> tuple[float, float, float]:
    return tuple(float(r[k]) for k in ("peak_x", "peak_y", "peak_z"))


def _figure1(an: _Analysis, figs: _Figures, alpha: float) -> dict[str, Any]:
    contrasts = [c for c in an.order if c in an.outputs.tstat]
    maps, peaks = [], []
    for c in contrasts:
        sig = an.significant.get(c, pd.DataFrame())
        keep = list(sig["cluster"]) if len(sig) else []
        maps.append((contrast_label(c), cluster_t_map(an.outputs, c, an.threshold, keep)))
        peaks += [float(z) for z in sig.sort_values("peak_t", ascending=False)["peak_z"]] \
            if len(sig) else []
    n_sig = sum(len(an.significant.get(c, ())) for c in contrasts)
    what = an.title("Figure 1")
    if not n_sig:
        return _note(what, f"no cluster reached cluster-level FWE p < {alpha:g} in any "
                           "contrast; see the cluster tables and glass brains below.")
    colours = ["red\u2013yellow", "blue\u2013cyan"]
    legend = "; ".join(f"{colours[i % 2]}: {lab}" for i, (lab, _) in enumerate(maps))
    cuts = figures.axial_cuts([m for _, m in maps], peaks)
    caption = (f"Figure 1. Clusters with a significant group difference (cluster-level FWE "
               f"p < {alpha:g}; clusters formed at t > {an.threshold:.2f}), t-values on axial "
               f"slices of the MNI152 template (z in mm; L = left). {legend}.")
    return figs.block(an.stem("figure1_significant_clusters"), caption, lambda: (
        figures.figure1_axial(maps, threshold=an.threshold, vmax=an.vmax, cuts=cuts,
                              title=an.title("Significant clusters (axial slices)"))))


def _contrast_blocks(an: _Analysis, c: str, figs: _Figures, *, alpha: float,
                     glass: str, max_figures: int, min_voxels: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    cmap = figures.contrast_cmap(an.order.index(c))
    label = contrast_label(c)
    sig = an.significant.get(c, pd.DataFrame())
    if glass == "thresholded" or not len(sig):
        img = cluster_t_map(an.outputs, c, an.threshold, None)
        why = "" if glass == "thresholded" else (
            f" No cluster reached FWE p < {alpha:g}, so the map is shown thresholded.")
        caption = (f"{label}: glass brain of the t-map thresholded at the cluster-forming "
                   f"threshold (t > {an.threshold:.2f}), this direction only.{why}")
        title = f"{label}: t > {an.threshold:.2f}"
    else:
        img = cluster_t_map(an.outputs, c, an.threshold, list(sig["cluster"]))
        caption = (f"{label}: glass brain of the {len(sig)} significant cluster(s) "
                   f"(cluster-level FWE p < {alpha:g}), this direction only.")
        title = f"{label}: significant clusters"
    if np.any(np.asarray(img.dataobj)):
        blocks.append(figs.block(an.stem(c, "glass_brain"), caption, lambda: (
            figures.glass_brain(img, threshold=an.threshold, vmax=an.vmax,
                                title=an.title(title), cmap=cmap))))
    else:
        blocks.append(_note(f"{label}: glass brain", f"no voxel above t = {an.threshold:.2f}"))
    rows = an.outputs.clusters
    rows = rows[(rows["contrast"] == c) & (rows["size_voxels"] >= min_voxels)] \
        if "contrast" in rows.columns else rows.iloc[:0]
    rows = clusters_to_show(rows, alpha, max_figures) if len(rows) and max_figures else \
        rows.iloc[:0]
    for _, r in rows.iterrows():
        k = int(r["cluster"])
        name = _peak_name(r)
        p = r.get("p_fwe", np.nan)
        sig_txt = "" if pd.isna(p) else figures.p_text(float(p), "cluster p FWE")
        x, y, z = (int(round(v)) for v in _peak(r))
        title = (f"{label}, cluster {k}: {figures.display_name(name)}, peak t = "
                 f"{float(r['peak_t']):.2f} at "
                 f"({x}, {y}, {z}), {int(r['size_voxels'])} voxels, {sig_txt}")
        caption = (f"{label}, cluster {k} ({name}): only this cluster's t-values over the "
                   f"MNI152 template, cut at its peak ({x}, {y}, {z}) mm.")
        cimg = cluster_t_map(an.outputs, c, an.threshold, [k])
        blocks.append(figs.block(an.stem(c, f"cluster{k:02d}"), caption, lambda cimg=cimg,
                                 r=r, title=title: figures.cluster_slices(
            cimg, _peak(r), threshold=an.threshold, vmax=an.vmax, title=an.title(title),
            cmap=cmap)))
    return blocks


def _peak_name(r) -> str:
    for col in ("harvard_oxford_peak", "aal_peak"):
        v = r.get(col)
        if isinstance(v, str) and v and v != "no_label":
            return v
    v = r.get("harvard_oxford_peak_prob")
    return v.split("; ")[0] if isinstance(v, str) and v != "no_label" else "unlabelled"


#: Null-distribution files by statistic, in display order, with their labels.
NULL_LABELS = {"max_t": "maximum t", "max_size": "maximum cluster size",
               "max_cluster_size": "maximum cluster size", "max_mass": "maximum cluster mass",
               "max_tfce": "maximum TFCE"}


def _null_block(an: _Analysis, figs: _Figures, alpha: float) -> dict[str, Any]:
    outputs = an.outputs
    if not outputs.nulls:
        return _note(an.title("Null distributions"),
                     "no null distribution (*.npy) in the statistics directory")
    rows = []
    for c in an.order:
        names = [n for n in outputs.nulls if outputs.null_contrast(n) == c]
        stat = {n: n[len(c):].removeprefix("_null_") for n in names}
        names.sort(key=lambda n: list(NULL_LABELS).index(stat[n]) if stat[n] in NULL_LABELS
                   else len(NULL_LABELS))
        panels = []
        for n in names:
            obs = observed_for_null(n, c, outputs)
            panels.append((NULL_LABELS.get(stat[n], stat[n].replace("_", " ")),
                           outputs.nulls[n], max(obs) if obs else None))
        if panels:
            rows.append((contrast_label(c), panels))
    other = [n for n in outputs.nulls if outputs.null_contrast(n) is None]
    if other:
        rows.append(("other", [(n.replace("_", " "), outputs.nulls[n], None) for n in other]))
    return figs.block(an.stem("permutation_null_distributions"), an.title(
        "Permutation null distributions of the maximum statistics, per contrast (dashed: "
        f"FWE critical value at {1 - alpha:.0%}; red: the observed maximum, with its FWE "
        "p-value)."), lambda: figures.null_distributions(rows, alpha=alpha))


# ----------------------------------------------------------------------------- store
class _quiet:
    """Silence 'mean of empty slice' warnings of all-NaN voxels (midline)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def _owners(participants: pd.DataFrame | None, subject_column: str,
            subjects: Sequence[str], maps: Mapping[str, Sequence[str]] | None) -> dict[str, str]:
    """Store subject (session/run map) -> its participant id.

    From ``maps`` of ``stats.json`` (participant -> the maps the analysis
    combined) when given, else by matching names to the participants table.
    """
    if maps:
        return {s: str(pid) for pid, subs in maps.items() for s in subs}
    if participants is None:
        return {s: s for s in subjects}
    ids = participants[subject_column] if subject_column in participants.columns \
        else participants.index
    return match_subjects(ids.astype(str), subjects)


def _store_blocks(figs: _Figures, store, participants: pd.DataFrame | None,
                  analyses: Sequence[_Analysis], *, group: str, groups: Sequence[str],
                  subject_column: str) -> list[dict[str, Any]]:
    """Group-mean maps of every metric analysed, then the counterpart displacement."""
    blocks = [_mean_maps_block(figs, store, participants, an, group=group, groups=groups,
                               subject_column=subject_column)
              for an in {a.metric: a for a in analyses}.values()]
    group_cp = store.group_counterpart()
    per_subject = store.subjects("cfh_subject")
    if group_cp is None and not per_subject:
        return blocks

    def displacement():
        if group_cp is not None:
            d = counterpart_displacement(store.xyz, group_cp["index"])
            med = d
        else:
            cp = store.cfh_maps(per_subject, var="cfh_subject_counterpart").data.compute()
            d = counterpart_displacement(store.xyz, cp)
            with _quiet():
                med = np.nanmedian(d, axis=0)
        img = nib.Nifti1Image(store.to_volume(np.nan_to_num(med).astype(np.float32)),
                              store.affine)
        return figures.displacement_figure(d, img)

    which = ("the group counterpart (one for the cohort, from the summed correlations of "
             "its reference subjects); left: all voxels, right: the map" if group_cp is not None
             else "its counterpart in each subject (per-subject maximum); left: all voxels "
                  "and subjects, right: median over subjects")
    blocks.append(figs.block("counterpart_displacement", "Counterpart displacement: distance "
                             "between each voxel's mirror position (\u2212x, y, z) and "
                             f"{which} (0 mm = the anatomical mirror, as VMHC assumes).",
                             displacement))
    return blocks


def _mean_maps_block(figs: _Figures, store, participants: pd.DataFrame | None,
                     an: _Analysis, *, group: str, groups: Sequence[str],
                     subject_column: str) -> dict[str, Any]:
    metric, label = an.metric, an.label
    subjects = store.subjects(metric)
    if not subjects:
        return _note(f"Group-mean {label}", f"the store holds no subject with {label} maps")
    owner = _owners(participants, subject_column, subjects, an.outputs.params.get("maps"))
    by_group: dict[str, list[int]] = {}
    if participants is not None and group in participants.columns:
        ids = participants.set_index(participants[subject_column].astype(str)) \
            if subject_column in participants.columns else participants
        for g in groups:
            members = set(ids.index[ids[group].astype(str) == g])
            by_group[g] = [i for i, s in enumerate(subjects) if owner.get(s) in members]
    else:
        by_group["all subjects"] = list(range(len(subjects)))
    short = an.short

    def mean_maps():
        values = store.cfh_maps(subjects, var=metric).data.compute()
        imgs = {}
        for g, idx in by_group.items():
            if not idx:
                continue
            # one value per participant: its maps (sessions, runs) averaged first
            per_pid: dict[str, list[int]] = {}
            for i in idx:
                per_pid.setdefault(owner.get(subjects[i], subjects[i]), []).append(i)
            with np.errstate(invalid="ignore"), _quiet():
                rows = np.stack([np.nanmean(values[k], axis=0) for k in per_pid.values()])
                m = np.nanmean(rows, axis=0)
            vol = store.to_volume(np.nan_to_num(m).astype(np.float32))
            imgs[f"{g} (n = {len(per_pid)}): mean {short}"] = nib.Nifti1Image(vol, store.affine)
        if not imgs:
            raise CfhdaskInputError("no store subject belongs to the groups "
                                    f"{list(groups)} of the participants table")
        return figures.group_mean_maps(imgs, label=short + unit)

    unit = "" if metric == "ai" else " (Fisher z)"
    return figs.block(f"group_mean_{metric}", f"Group-mean {label} maps{unit} on axial "
                      "slices of the MNI152 template, one colour scale for both groups.",
                      mean_maps)


def _scatter_blocks(figs: _Figures, correlations: pd.DataFrame, values: pd.DataFrame,
                    participants: pd.DataFrame, covariates: Sequence[str], *, group: str,
                    group_value: str, subject_column: str,
                    an: _Analysis) -> list[dict[str, Any]]:
    """Partial-correlation scatter plots of one analysis (metric), one figure per method."""
    blocks = []
    short = an.short
    for method, rows in correlations.groupby("method", sort=False):
        panels = []
        for r in rows.itertuples():
            if r.cluster not in values.columns:
                continue
            res = partial_residuals(values, participants, cluster=r.cluster, variable=r.variable,
                                    method=method, group=group, group_value=group_value,
                                    covariates=list(covariates), subject_column=subject_column)
            panels.append((f"{cluster_name(r.cluster)}\nvs {r.variable}", res,
                           {"r": r.r, "p": r.p, "p_fdr": r.p_fdr}))
        caption = an.title(
                   f"Partial {str(method).capitalize()} correlations in the {group_value} group: "
                   f"residuals after regressing out {', '.join(covariates) or 'nothing'}"
                   + (" (ranks)" if method == "spearman" else "") + ".")
        if not panels:
            blocks.append(_note(caption, "cluster values for the correlation table are not "
                                         "available"))
            continue
        suffix = " (ranks)" if method == "spearman" else ""
        blocks.append(figs.block(an.stem(f"clinical_{method}_partial_correlations"), caption,
                                 lambda panels=panels, s=suffix: figures.partial_scatter(
                                     panels, xlabel="clinical variable | covariates" + s,
                                     ylabel=f"cluster {short} | covariates" + s)))
    return blocks


# ----------------------------------------------------------------------------- files
def _break_opportunities(text: Any) -> Markup:
    """Escaped text with ``<wbr>`` after underscores, so long atlas names wrap at them."""
    return Markup(str(escape(text)).replace("_", "_<wbr>"))



def _swap_in(tmp: Path, final: Path) -> None:
    """Replace the folder ``final`` by ``tmp`` (the old one removed after the rename)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}-old-{os.getpid()}-{time.time_ns()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_report(
    out_html: str | Path,
    *,
    stats_dir: str | Path | Mapping[str, str | Path],
    store=None,
    participants: pd.DataFrame | str | Path | None = None,
    table1: pd.DataFrame | str | Path | None = None,
    correlations: pd.DataFrame | str | Path | None = None,
    cluster_values: pd.DataFrame | str | Path | Mapping[str, pd.DataFrame | None] | None = None,
    params: Mapping[str, Any] | None = None,
    title: str = "CFH group analysis",
    versions: Mapping[str, str] | None = None,
    group: str = "group",
    groups: Sequence[str] = ("patient", "control"),
    subject_column: str = "participant_id",
    alpha: float = 0.05,
    min_cluster_voxels: int | None = None,
    max_cluster_figures: int | None = None,
    glass_brain: str | None = None,
    dpi: int | None = None,
    vector_format: str | None = None,
    null_check_dir: str | Path | None = None,
) -> Path:
    """Write the report of a CFH study: ``report.html`` and ``figures/``.

    Parameters
    ----------
    out_html : str or Path
        Destination; the figure files go to ``figures/`` in the same folder.
    stats_dir : str, Path or mapping
        Output directory of the group statistics (t-maps, cluster maps,
        ``clusters.tsv``, null ``*.npy``, ``stats.json``); a mapping
        ``{metric: directory}`` (``cfh``, ``cfh_subject``, ``vmhc``, ``ai``; the
        main one first) gives one set of sections and cluster tables each,
        titled and file-named by metric when there are several.
    store : CohortStore or str, optional
        The cohort store (object or URL); gives the provenance of the methods
        text, the group-mean map of each metric, the counterpart displacement
        (the group counterpart when the store has one) and the cluster values.  Without it those are left out (with a note).
    participants : DataFrame or path, optional
        Participants table (``subject_column``, ``group``, clinical columns).
    table1 : DataFrame or path, optional
        :func:`cfhdask.clinical.table1.table1` output; computed from
        ``participants`` when omitted.
    correlations : DataFrame or path, optional
        :func:`cfhdask.clinical.correlations.cluster_correlations` output.
    cluster_values : DataFrame, path or mapping metric -> DataFrame, optional
        Participant x cluster values used by ``correlations`` (index:
        participant ids; one per metric when ``correlations`` has a ``metric``
        column); computed from the store when omitted (each participant's
        maps averaged, as ``stats.json`` records them).
    params : dict, optional
        Facts of the analysis that the provenance does not record, for the
        methods text: ``clinical_covariates``, ``fdr_family``,
        ``normality_alpha``, ``table1_variables``... (see
        :func:`cfhdask.report.methods.gather_provenance`; a value that
        contradicts the recorded provenance is ignored with a warning).
    title : str
        Report title.
    versions : dict, optional
        Package versions (default: those ``stats.json`` recorded).
    group, groups, subject_column : str
        Participants-table columns and the two groups (first = patients).
    alpha : float
        Significance level for clusters.
    min_cluster_voxels, max_cluster_figures, glass_brain, dpi, vector_format
        Display settings (default: the ``report`` settings): clusters smaller
        than ``min_cluster_voxels`` are left out of the tables and figures
        (``clusters.tsv`` keeps them); at most ``max_cluster_figures`` cluster
        figures per contrast; glass brains of the ``"clusters"`` or the
        ``"thresholded"`` map; PNG resolution and vector format of the files.
    null_check_dir : str or Path, optional
        Output folder of :func:`cfhdask.stats.nullcheck.null_check`: a section with
        the empirical FWER per method, its interval and the nominal line.

    Returns
    -------
    Path of the written report.
    """
    t_start = time.perf_counter()
    rs = resolve("report", {"min_cluster_voxels": min_cluster_voxels,
                            "max_cluster_figures": max_cluster_figures,
                            "glass_brain": glass_brain, "dpi": dpi,
                            "vector_format": vector_format})
    out_html = Path(out_html)
    dirs = dict(stats_dir) if isinstance(stats_dir, Mapping) else {None: stats_dir}
    if not dirs:
        raise CfhdaskInputError("stats_dir: no statistics directory given")
    outputs = {name: read_stats_dir(d) for name, d in dirs.items()}
    if isinstance(store, (str, Path)):
        from cfhdask.io.store import open_store

        store = open_store(str(store))
    participants = _read_table(participants, "participants table")
    table1 = _read_table(table1, "table 1")
    correlations = _read_table(correlations, "correlation table")
    if isinstance(cluster_values, (str, Path)):
        cluster_values = pd.read_csv(cluster_values, sep="\t", index_col=0)
    groups = [str(g) for g in groups]
    params = dict(params or {})
    first = next(iter(outputs.values()))

    if table1 is None and participants is not None:
        table1 = compute_table1(participants, group=group, groups=groups,
                                variables=params.get("table1_variables"),
                                normality_alpha=float(params.get("normality_alpha", 0.05)))
    extra = {"fwe_alpha": alpha, **params}
    if table1 is not None and "test" in table1.columns:
        extra["table1_tests"] = [str(t) for t in dict.fromkeys(table1["test"].dropna())
                                 if str(t).strip() and str(t) not in ("\u2013", "-")]
    if correlations is not None and not correlations.empty:
        extra.update(correlation_methods=list(dict.fromkeys(correlations["method"])),
                     clinical_variables=list(dict.fromkeys(correlations["variable"])),
                     clinical_group=groups[0])
    else:
        for k in ("correlation_methods", "clinical_variables", "clinical_covariates"):
            extra.pop(k, None)
    facts = gather_provenance(store, first.params, extra,
                              analyses=[o.params for o in outputs.values()])
    if "n_per_group" not in facts and participants is not None and group in participants:
        ids = participants[subject_column].astype(str) if subject_column in participants \
            else participants.index.astype(str)
        main = _metric_of(next(iter(outputs)), first)
        in_study = ids.isin(set(_owners(participants, subject_column,
                                        store.subjects(main), first.params.get("maps"))
                                .values())) \
            if store is not None else np.ones(len(ids), bool)
        counts = participants.loc[np.asarray(in_study), group].astype(str).value_counts()
        facts["n_per_group"] = {g: int(counts.get(g, 0)) for g in groups}
        facts.setdefault("groups", groups)

    parent = out_html.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{FIGURES_DIR}-", dir=parent))
    try:
        figs = _Figures(tmp_dir, dpi=rs.dpi, vector_format=rs.vector_format)
        sections = _sections(outputs, figs, facts, versions, store=store,
                             participants=participants, table1=table1,
                             correlations=correlations, cluster_values=cluster_values,
                             params=params, group=group, groups=groups,
                             subject_column=subject_column, alpha=alpha, rs=rs,
                             null_check_dir=null_check_dir)
        n_sig = sum(int((o.clusters["p_fwe"] < alpha).sum()) for o in outputs.values()
                    if "p_fwe" in o.clusters)
        n_all = sum(len(o.clusters) for o in outputs.values())
        env = Environment(loader=PackageLoader("cfhdask.report", "templates"),
                          autoescape=select_autoescape(["html", "j2"]))
        env.filters["wbr"] = _break_opportunities
        html = env.get_template("report.html.j2").render(
            title=title, sections=sections, n_clusters=n_all, n_significant=n_sig,
            alpha=alpha, contrasts=[contrast_label(c) for c in design_order(first)],
            stats_dirs=[str(o.directory) for o in outputs.values()],
            figures_dir=FIGURES_DIR, generated=time.strftime("%Y-%m-%d %H:%M:%S"),
            build_seconds=f"{time.perf_counter() - t_start:.1f}")
        _swap_in(tmp_dir, parent / FIGURES_DIR)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    atomic_write(out_html, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
    log.info("report written to %s (%d figure files in %s) in %.1f s; slowest figures: %s",
             out_html, 2 * len(figs.stems), parent / FIGURES_DIR,
             time.perf_counter() - t_start,
             ", ".join(f"{k} {v:.1f}s" for k, v in sorted(
                 figs.timings.items(), key=lambda kv: -kv[1])[:4]))
    return out_html


def _metric_of(name: str | None, outputs: StatsOutputs) -> str:
    """The metric an analysis read: its name when that is a metric, else from its
    ``stats.json``, else cfh."""
    if name in METRIC_LABELS:
        return str(name)
    return str(outputs.params.get("metric") or name or "cfh")


def _sections(outputs: Mapping[str | None, StatsOutputs], figs: _Figures, facts, versions, *,
              store, participants, table1, correlations, cluster_values, params, group,
              groups, subject_column, alpha, rs, null_check_dir=None) -> list[Section]:
    several = len(outputs) > 1
    analyses = [_prepare(name if several else None, o, alpha=alpha,
                         min_voxels=rs.min_cluster_voxels, metric=_metric_of(name, o))
                for name, o in outputs.items()]
    sections: list[Section] = []
    fig1 = Section("figure1", "Figure 1")
    tables = Section("clusters", "Clusters")
    for an in analyses:
        fig1.blocks.append(_figure1(an, figs, alpha))
        for c in an.contrasts:
            tables.blocks.append(cluster_table(
                an.shown.get(c, pd.DataFrame()), caption=an.title(
                    f"{contrast_label(c)}: clusters (t > {an.threshold:.2f})"),
                alpha=alpha, hidden=an.hidden.get(c, 0), min_voxels=rs.min_cluster_voxels,
                n_total=int((an.outputs.clusters.get("contrast") == c).sum())
                if "contrast" in an.outputs.clusters else 0))
        tables.blocks.append(_note("clusters.tsv", (
            f"Per contrast: every cluster with cluster-level FWE p < {alpha:g}, then the five "
            "largest others; up to three local maxima more than 8 mm apart per cluster. "
            f"{an.outputs.directory / 'clusters.tsv'} lists all "
            f"{len(an.outputs.clusters)} clusters with every column.")))
    sections += [fig1, tables]
    sections.append(Section("methods", "Methods", [{
        "kind": "paragraphs", "paragraphs": methods_paragraphs(facts, versions)}]))
    if table1 is not None:
        shown = table1_display(table1, groups)
        paper = {"variable", "test"} <= set(shown.columns)
        t1 = [frame_table(shown, caption="Demographic and clinical characteristics",
                          columns={"variable": "Variable", **{g: g for g in groups},
                                   "test": "Test", "statistic": "Statistic", "p": "p"}
                          if paper else None)]
        t1.append(_note("Table 1", "numeric variables: mean (SD) when Shapiro\u2013Wilk does "
                        "not reject normality in either group, otherwise median (min\u2013max); "
                        "categorical: counts per level."))
    else:
        t1 = [_note("Table 1", "no participants table was given")]
    sections.append(Section("table1", "Table 1", t1))
    for an in analyses:
        for c in an.contrasts:
            sections.append(Section(
                f"contrast-{an.stem(c)}", an.title(contrast_label(c)), _contrast_blocks(
                    an, c, figs, alpha=alpha, glass=rs.glass_brain,
                    max_figures=rs.max_cluster_figures, min_voxels=rs.min_cluster_voxels)))
    maps_title = "CFH maps" if all(an.metric in ("cfh", "cfh_subject") for an in analyses) \
        else "Maps"
    if store is not None:
        sections.append(Section("cfh-maps", maps_title, _store_blocks(
            figs, store, participants, analyses, group=group, groups=groups,
            subject_column=subject_column)))
    else:
        sections.append(Section("cfh-maps", maps_title, [_note(
            "Group-mean maps and counterpart displacement", "no cohort store given: "
            "group-mean maps and counterpart displacement are not shown")]))
    sections.append(Section("permutations", "Permutation inference",
                            [_null_block(an, figs, alpha) for an in analyses]))
    if null_check_dir is not None:
        sections.append(_null_check_section(figs, null_check_dir))
    if correlations is not None and not correlations.empty:
        sections.append(Section("correlations", "Clinical correlations", _clinical_blocks(
            figs, analyses, facts, store=store, participants=participants,
            correlations=correlations, cluster_values=cluster_values, params=params,
            group=group, groups=groups, subject_column=subject_column, alpha=alpha)))
    return sections


def _null_check_section(figs: _Figures, out_dir: str | Path) -> Section:
    """False positives measured on the cohort itself: text, figure, table of rates."""
    summary, params = read_null_check(out_dir)
    return Section("null-check", "False positives on the cohort itself (null-check)", [
        {"kind": "paragraphs", "paragraphs": [("Null-check", null_check_intro(params))]},
        figs.block("null_check_fwer", "Empirical family-wise error rate per method, with "
                   "its 95% interval; dashed: the nominal level",
                   lambda: null_check_plot(summary, float(params["alpha"]))),
        frame_table(null_check_rows(summary), caption=f"null_check.tsv in {out_dir}")])


def _clinical_blocks(figs: _Figures, analyses: Sequence[_Analysis], facts, *, store,
                     participants, correlations, cluster_values, params, group, groups,
                     subject_column, alpha) -> list[dict[str, Any]]:
    """The correlation table (column Metric when several), then per metric its scatters.

    ``cluster_values`` is one table, or one per metric; a metric without one is
    read from the store (the maps of each participant averaged, as
    ``stats.json`` records them).
    """
    shown = correlations.assign(cluster=[cluster_name(c) for c in correlations["cluster"]])
    if "metric" in shown.columns:
        shown["metric"] = [metric_label(m) for m in shown["metric"]]
    blocks = [frame_table(shown, caption="Partial correlations of cluster values with "
                          "clinical variables", columns={
                              "metric": "Metric", "cluster": "Cluster",
                              "variable": "Clinical variable", "method": "Method", "n": "n",
                              "r": "r", "ci_low": "95% CI low", "ci_high": "95% CI high",
                              "p": "p", "p_fdr": "p FDR"})]
    if participants is None:
        return blocks
    by_metric = dict(iter(correlations.groupby("metric", sort=False))) \
        if "metric" in correlations.columns else {analyses[0].metric: correlations}
    covs = list(params.get("clinical_covariates") or facts.get("covariates") or [])
    for metric, corr in by_metric.items():
        an = next((a for a in analyses if a.metric == metric), analyses[0])
        values = cluster_values.get(metric) if isinstance(cluster_values, Mapping) \
            else cluster_values
        o = an.outputs
        if values is None and store is not None and o.clusters_img:
            subjects = store.subjects(an.metric)
            per_map = significant_cluster_values(
                store.cfh_maps(subjects, var=an.metric), store.ijk, o.clusters_img,
                o.clusters if not o.clusters.empty else None, alpha=alpha)
            owner = _owners(participants, subject_column, subjects, o.params.get("maps"))
            per_map = per_map[per_map.index.isin(list(owner))]
            values = per_map.groupby(per_map.index.map(owner), sort=False).mean()
        if values is not None:
            blocks += _scatter_blocks(figs, corr, values, participants, covs, group=group,
                                      group_value=groups[0], subject_column=subject_column,
                                      an=an)
        else:
            blocks.append(_note(an.title("Partial correlation scatter plots"),
                                "no cluster values (give cluster_values or a store)"))
    return blocks
