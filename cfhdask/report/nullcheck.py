"""The null-check in the report: rate per method with its interval, and the nominal line.

:func:`read_null_check` reads the outputs of
:func:`cfhdask.stats.nullcheck.null_check`; :func:`null_check_intro`,
:func:`null_check_plot` and :func:`null_check_rows` give the text, the figure
and the table that :func:`cfhdask.report.html.build_report` places in its
"null-check" section (``null_check_dir=``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cfhdask.errors import CfhdaskInputError

__all__ = ["METHOD_LABELS", "null_check_intro", "null_check_plot", "null_check_rows",
           "read_null_check"]

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


def null_check_plot(summary: pd.DataFrame, alpha: float):
    """Empirical FWER per method with its 95 % interval and the nominal ``alpha`` line.

    Returns
    -------
    matplotlib.figure.Figure
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
    return fig


def null_check_intro(params: Mapping[str, Any]) -> str:
    """What was split and how it was tested, in words (plain text)."""
    return (
        f"The {params['n_participants']} participants of group {params['level']} were split "
        f"at random into pseudo-groups of {params['sizes'][0]} and {params['sizes'][1]}, "
        f"{params['n_splits']} times (of {params['n_distinct_splits']} distinct splits), "
        f"and each split went through the study's inference ({params['scheme']}, "
        f"{params['n_perm_requested']} permutations, cluster-forming p < "
        f"{params['cluster_p']:g}). No true difference exists: the share of tests (two "
        "contrasts per split) in which a method finds anything is its empirical "
        f"family-wise error rate, to compare with the nominal {float(params['alpha']):g}.")


def null_check_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """The table of rates: method, tests finding something, rate, interval, verdict."""
    return pd.DataFrame({
        "Method": [METHOD_LABELS.get(m, m) for m in summary.method],
        "Tests finding something": [f"{r.n_positive} / {r.n_tests}"
                                    for r in summary.itertuples()],
        "Rate": [f"{r.fwer:.3f}" for r in summary.itertuples()],
        "95% interval": [f"{r.ci_low:.3f}\u2013{r.ci_high:.3f}" for r in summary.itertuples()],
        "Verdict": list(summary.verdict.astype(str)),
    })
