"""The null-check in the report: rate per method with its interval, and the nominal line.

Self-contained: :func:`null_check_section` takes the outputs of
:func:`cfhdask.stats.nullcheck.null_check` (or the folder they were written to,
via :func:`read_null_check`) and returns one HTML ``<section>`` with its figure
embedded, for the report's page to place where it likes.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cfhdask.errors import CfhdaskInputError
from cfhdask.report.figures import fig_to_data_uri

__all__ = ["METHOD_LABELS", "null_check_figure", "null_check_section", "read_null_check"]

#: How each method of ``null_check.tsv`` is named in the report.
METHOD_LABELS: dict[str, str] = {
    "voxel_fwe": "Voxel FWE", "cluster_extent_fwe": "Cluster extent FWE",
    "cluster_mass_fwe": "Cluster mass FWE", "tfce_fwe": "TFCE FWE",
    "uncorrected": "Uncorrected voxel p",
}


def read_null_check(out_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``null_check.tsv`` and ``null_check.json`` of a null-check's output folder."""
    out_dir = Path(out_dir)
    tsv, js = out_dir / "null_check.tsv", out_dir / "null_check.json"
    if not tsv.exists() or not js.exists():
        raise CfhdaskInputError(f"{out_dir}: no null-check outputs (null_check.tsv and "
                                "null_check.json)")
    return pd.read_csv(tsv, sep="\t"), json.loads(js.read_text())


def null_check_figure(summary: pd.DataFrame, alpha: float) -> str:
    """Empirical FWER per method with its 95 % interval and the nominal ``alpha`` line.

    Returns
    -------
    str
        A PNG data URI.
    """
    import matplotlib.pyplot as plt

    labels = [METHOD_LABELS.get(m, m) for m in summary.method]
    y = list(range(len(summary)))[::-1]
    fig, ax = plt.subplots(figsize=(6.0, 0.45 * len(summary) + 1.2))
    for yi, r in zip(y, summary.itertuples(), strict=True):
        colour = "#b2182b" if r.verdict == "anti-conservative" else "#2166ac"
        ax.errorbar([r.fwer], [yi], xerr=[[r.fwer - r.ci_low], [r.ci_high - r.fwer]],
                    fmt="o", color=colour, capsize=3)
    ax.axvline(alpha, color="k", ls="--", lw=1, label=f"nominal α = {alpha:g}")
    ax.set_yticks(y, labels)
    ax.set_xlabel("empirical family-wise error rate (95 % interval)")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig_to_data_uri(fig)


def null_check_section(summary: pd.DataFrame, params: Mapping[str, Any]) -> str:
    """One HTML ``<section>``: what was split, the figure, the table of rates."""
    alpha = float(params["alpha"])
    e = html.escape
    intro = (
        f"The {params['n_participants']} participants of group "
        f"<b>{e(str(params['level']))}</b> were split at random into pseudo-groups of "
        f"{params['sizes'][0]} and {params['sizes'][1]}, {params['n_splits']} times "
        f"(of {params['n_distinct_splits']} distinct splits), and each split went through "
        f"the study's inference ({e(str(params['scheme']))}, "
        f"{params['n_perm_requested']} permutations, cluster-forming p &lt; "
        f"{params['cluster_p']:g}). No true difference exists: the share of tests (two "
        "contrasts per split) in which a method finds anything is its empirical "
        f"family-wise error rate, to compare with the nominal {alpha:g}.")
    rows = "".join(
        f"<tr><td>{e(METHOD_LABELS.get(r.method, r.method))}</td><td>{r.n_positive} / "
        f"{r.n_tests}</td><td>{r.fwer:.3f}</td><td>{r.ci_low:.3f}–{r.ci_high:.3f}</td>"
        f"<td>{e(str(r.verdict))}</td></tr>" for r in summary.itertuples())
    return (
        '<section id="null-check"><h2>False positives on the cohort itself (null-check)'
        f"</h2><p>{intro}</p>"
        f'<img alt="empirical FWER per method" src="{null_check_figure(summary, alpha)}">'
        "<table><thead><tr><th>method</th><th>tests finding something</th><th>rate</th>"
        f"<th>95 % interval ({e(str(params.get('interval', 'clopper-pearson')))})</th>"
        f"<th>verdict</th></tr></thead><tbody>{rows}</tbody></table></section>")
