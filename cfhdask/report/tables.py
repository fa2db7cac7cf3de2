"""The report's tables as data for the template (no HTML strings here).

A table is a dict ``{"kind": "table", "caption", "columns", "rows", "note"}``;
each row is ``{"cls", "cells"}`` and each cell ``{"lines", "rowspan", "cls"}``
(``lines`` are shown one per line, escaped by the template).

:func:`cluster_table` lays a contrast's clusters out as SPM's results table:
one row per local maximum (up to three, more than 8 mm apart), the cluster's
size, FWE p-values and region shares spanning its rows, then for each maximum
its t, MNI coordinates, voxel-level FWE p and atlas labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cfhdask.clinical.table1 import format_p
from cfhdask.stats.atlas import NO_LABEL
from cfhdask.stats.clusters import N_MAXIMA

__all__ = ["cluster_name", "cluster_table", "frame_table", "region_lines", "table1_display"]

#: p-value columns of generic tables, printed as ``<0.001`` / ``0.012``.
P_COLUMNS = ("p", "p_fwe", "mass_p_fwe", "p_fdr", "tfce_p_fwe")
#: Region shares shown per cluster (the TSV lists every region above 1 %).
MAX_REGIONS, MIN_REGION_SHARE = 4, 5.0


def _cell(*lines: Any, rowspan: int = 1, cls: str = "") -> dict[str, Any]:
    return {"lines": [str(x) for x in lines if x is not None and str(x) != ""] or [""],
            "rowspan": rowspan, "cls": cls}


def _p(v) -> str:
    return format_p(float(v)) if v is not None and pd.notna(v) else ""


def region_lines(shares: Any) -> list[str]:
    """``"Putamen_L 80%; Insula_L 15%; ..."`` -> the main regions, one per line."""
    if not isinstance(shares, str) or not shares:
        return []
    out, rest = [], 0
    for part in shares.split("; "):
        name, _, pct = part.rpartition(" ")
        try:
            share = float(pct.rstrip("%"))
        except ValueError:
            share = 100.0
        if name == NO_LABEL:
            name = "unlabelled"
        if share >= MIN_REGION_SHARE and len(out) < MAX_REGIONS:
            out.append(f"{name} {share:.0f}%")
        else:
            rest += 1
    if rest:
        out.append(f"(+{rest} smaller)")
    return out


def _label_lines(label: Any, prob: Any = None) -> list[str]:
    """An atlas label; when the peak voxel itself has none, the probabilistic readout too."""
    label = label if isinstance(label, str) and label else NO_LABEL
    lines = ["unlabelled" if label == NO_LABEL else label]
    exact = label != NO_LABEL and "(nearest" not in label
    if not exact and isinstance(prob, str) and prob and prob != NO_LABEL:
        lines.append(prob)
    return lines


def cluster_name(column: str) -> str:
    """``"patient_gt_control_c1"`` (a cluster-values column) -> ``"patient > control, cluster 1"``."""
    head, sep, k = str(column).rpartition("_c")
    return f"{head.replace('_gt_', ' > ')}, cluster {k}" if sep and k.isdigit() else str(column)


def _coord(r, pre: str) -> str:
    return ", ".join(f"{float(r[f'{pre}_{a}']):.0f}".replace("-", "\u2212") for a in "xyz")


def cluster_table(rows: pd.DataFrame, *, caption: str, alpha: float, hidden: int = 0,
                  min_voxels: int = 1, n_total: int | None = None) -> dict[str, Any]:
    """One contrast's clusters, SPM style: a row per local maximum.

    Parameters
    ----------
    rows : DataFrame
        The clusters to show (``clusters.tsv`` rows of one contrast).
    caption : str
    alpha : float
        Clusters with ``p_fwe < alpha`` are marked significant.
    hidden : int
        Clusters left out for being smaller than ``min_voxels`` (said in the note).
    n_total : int, optional
        Clusters of the contrast in ``clusters.tsv``.
    """
    tfce = "tfce_p_fwe" in rows.columns and rows["tfce_p_fwe"].notna().any()
    cols = ["Cluster", "Voxels", "p FWE (extent)", "p FWE (mass)"]
    cols += ["p FWE (TFCE)"] if tfce else []
    cols += ["Peak t", "MNI x, y, z (mm)", "p FWE (voxel)", "AAL2", "Harvard\u2013Oxford",
             "AAL2 regions", "Harvard\u2013Oxford regions"]
    out_rows = []
    for _, r in rows.iterrows():
        peaks = ["peak"] + [f"peak{k}" for k in range(2, N_MAXIMA + 1)
                            if f"peak{k}_t" in r and pd.notna(r[f"peak{k}_t"])]
        n = len(peaks)
        sig = pd.notna(r.get("p_fwe")) and float(r["p_fwe"]) < alpha
        for k, pre in enumerate(peaks):
            suffix = "peak" if k == 0 else pre
            cells = []
            if k == 0:
                cells += [_cell(int(r["cluster"]), rowspan=n, cls="num"),
                          _cell(int(r["size_voxels"]), rowspan=n, cls="num"),
                          _cell(_p(r.get("p_fwe")), rowspan=n, cls="num p"),
                          _cell(_p(r.get("mass_p_fwe")), rowspan=n, cls="num")]
                if tfce:
                    cells.append(_cell(_p(r.get("tfce_p_fwe")), rowspan=n, cls="num"))
            cells += [_cell(f"{float(r[f'{pre}_t']):.2f}", cls="num"),
                      _cell(_coord(r, pre), cls="coord"),
                      _cell(_p(r.get(f"{pre}_vox_p_fwe")), cls="num"),
                      _cell(*_label_lines(r.get(f"aal_{suffix}")), cls="label"),
                      _cell(*_label_lines(r.get(f"harvard_oxford_{suffix}"),
                                          r.get(f"harvard_oxford_{suffix}_prob")), cls="label")]
            if k == 0:
                cells += [_cell(*region_lines(r.get("aal_regions")), rowspan=n, cls="regions"),
                          _cell(*region_lines(r.get("harvard_oxford_regions")), rowspan=n,
                                cls="regions")]
            cls = " ".join(filter(None, ["sig" if sig else "", "first" if k == 0 else "sub"]))
            out_rows.append({"cls": cls, "cells": cells})
    notes = []
    if n_total is not None:
        notes.append(f"{len(rows)} of {n_total} clusters shown")
    if hidden:
        notes.append(f"{hidden} cluster(s) smaller than {min_voxels} voxels left out")
    notes.append(f"bold: cluster-level FWE p < {alpha:g}; p < 0.001 prints as <0.001")
    return {"kind": "table", "caption": caption, "columns": cols, "rows": out_rows,
            "cls": "clusters", "note": "; ".join(notes) + ".",
            "empty": "No cluster above the cluster-forming threshold." if not len(rows) else ""}


def frame_table(df: pd.DataFrame | None, *, caption: str,
                columns: Sequence[str] | Mapping[str, str] | None = None) -> dict[str, Any]:
    """A DataFrame as a table block: p-values as ``<0.001``, floats to 3 significant digits.

    ``columns`` picks the columns (in order); a mapping also renames them for display.
    """
    if df is None or df.empty:
        return {"kind": "table", "caption": caption, "columns": [], "rows": [], "note": "",
                "cls": "", "empty": "No rows."}
    names = dict(columns) if isinstance(columns, Mapping) else {}
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in df.columns:
            v = r[c]
            if (c in P_COLUMNS or str(c).startswith("shapiro_p")) and isinstance(
                    v, (int, float, np.floating)):
                cells.append(_cell(_p(v), cls="num"))
            elif isinstance(v, (float, np.floating)):
                txt = "" if not np.isfinite(v) else (f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}")
                cells.append(_cell(txt, cls="num"))
            else:
                cells.append(_cell("" if v is None or (isinstance(v, float) and np.isnan(v))
                                   else v))
        rows.append({"cls": "", "cells": cells})
    return {"kind": "table", "caption": caption,
            "columns": [names.get(c, str(c)) for c in df.columns], "rows": rows, "note": "",
            "cls": "", "empty": ""}


def table1_display(t1: pd.DataFrame, groups: Sequence[str]) -> pd.DataFrame:
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
