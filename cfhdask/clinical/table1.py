"""Table 1: demographics and clinical scores per group, with the test used.

As in the paper (section 2.5): categorical variables are compared with the
chi-square test, numeric ones with the two-sample t-test when the Shapiro-Wilk
test does not reject normality in either group, the Mann-Whitney U test
otherwise.  Numeric variables are summarised as mean (SD) when normal, median
(min-max) otherwise, like the paper's "3 (2-6)".  A variable measured in one
group only (illness duration, JRS scores of patients) is described for that
group with no test.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from cfhdask.errors import CfhdaskInputError
from cfhdask.io.atomic import atomic_write

log = logging.getLogger(__name__)


#: Columns of the table returned by :func:`table1` besides the per-group ones.
SUMMARY_MEAN_SD = "mean (SD)"
SUMMARY_MEDIAN_RANGE = "median (range)"
SUMMARY_COUNTS = "counts"


def _fmt(value: float, decimals: int) -> str:
    """A number with ``decimals`` decimals, or an integer when it is one."""
    if np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return f"{value:.{decimals}f}"


def _is_categorical(series: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))


def _shapiro_p(x: np.ndarray) -> float:
    """Shapiro-Wilk p-value; NaN when it cannot be computed (n < 3 or constant)."""
    if x.size < 3 or np.ptp(x) == 0:
        return math.nan
    return float(stats.shapiro(x).pvalue)


def _describe(x: np.ndarray, normal: bool, decimals: int) -> str:
    if x.size == 0:
        return ""
    if normal:
        sd = float(np.std(x, ddof=1)) if x.size > 1 else math.nan
        return f"{np.mean(x):.{decimals}f} ({sd:.{decimals}f})"
    return (f"{_fmt(float(np.median(x)), decimals)} "
            f"({_fmt(float(np.min(x)), decimals)}\u2013{_fmt(float(np.max(x)), decimals)})")


def _check_columns(participants: pd.DataFrame, group: str, groups: Sequence[str],
                   variables: Sequence[str]) -> None:
    if group not in participants.columns:
        raise CfhdaskInputError(
            f"participants table: group column {group!r} not found "
            f"(columns: {', '.join(map(str, participants.columns))})")
    present = set(participants[group].dropna().astype(str))
    missing_groups = [g for g in groups if g not in present]
    if missing_groups:
        raise CfhdaskInputError(
            f"participants table: group(s) {', '.join(map(repr, missing_groups))} not found in "
            f"column {group!r} (values: {', '.join(sorted(present))})")
    if len(groups) != 2:
        raise CfhdaskInputError(f"table1: groups must name exactly two groups, got {list(groups)}")
    missing = [v for v in variables if v not in participants.columns]
    if missing:
        raise CfhdaskInputError(
            f"participants table: variable column(s) {', '.join(map(repr, missing))} not found")


def table1(
    participants: pd.DataFrame,
    *,
    group: str = "group",
    groups: Sequence[str] = ("patient", "control"),
    variables: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    normality_alpha: float = 0.05,
    equal_var: bool = True,
    yates: bool = True,
    decimals: int = 2,
) -> pd.DataFrame:
    """Compare demographic and clinical variables between two groups.

    Parameters
    ----------
    participants : DataFrame
        One row per participant, with the ``group`` column and the variables.
    group : str
        Column holding the group of each participant.
    groups : pair of str
        The two groups compared, in the order of the output columns.
    variables : sequence of str, optional
        Variables (rows of the table).  Default: every column of
        ``participants`` but ``participant_id`` and ``group``.  A named variable
        that is absent is an error.
    categorical : sequence of str, optional
        Variables treated as categorical.  Default: the non-numeric ones.
    normality_alpha : float
        Shapiro-Wilk threshold: normality is rejected in a group when its
        p-value is below this.  Numeric variables normal in both groups get a
        two-sample t-test and mean (SD); the others Mann-Whitney U and
        median (range).
    equal_var : bool
        True: Student's t-test (pooled variance, as SPSS's first row); False: Welch.
    yates : bool
        Yates' continuity correction of the chi-square test for 2 x 2 tables
        (scipy's default); it never applies to larger tables.
    decimals : int
        Decimals of the summaries.

    Returns
    -------
    DataFrame
        One row per variable with columns ``variable``, ``kind``
        (``"categorical"``, ``"numeric"``), ``summary`` (what the group
        columns hold: ``"mean (SD)"``, ``"median (range)"`` or
        ``"counts"`` with the levels in ``levels``), ``levels``,
        ``n_<group>`` and ``<group>`` for each group, ``shapiro_p_<group>``,
        ``test`` (``"chi2"``, ``"chi2 (Yates)"``, ``"Student t"``, ``"Welch t"``,
        ``"Mann-Whitney U"`` or ``""`` when the variable is measured in one
        group only), ``statistic``, ``df`` and ``p``.

    Raises
    ------
    CfhdaskInputError
        A missing group column, group value or variable column.
    """
    groups = tuple(str(g) for g in groups)
    if variables is None:  # every column but the ids and the group
        variables = [c for c in participants.columns if c not in ("participant_id", group)]
    variables = list(variables)
    _check_columns(participants, group, groups, variables)
    if not 0 < normality_alpha < 1:
        raise CfhdaskInputError(f"table1: normality_alpha must be in (0, 1), got {normality_alpha}")
    if categorical is None:
        categorical = [v for v in variables if _is_categorical(participants[v])]
    unknown = [c for c in categorical if c not in variables]
    if unknown:
        raise CfhdaskInputError(
            f"table1: categorical variable(s) {', '.join(map(repr, unknown))} are not in variables")
    labels = participants[group].astype(str)
    rows = []
    for var in variables:
        col = participants[var]
        by_group = [col[labels == g].dropna() for g in groups]
        row: dict[str, object] = {"variable": var}
        if var in categorical:
            row.update(_categorical_row(by_group, groups, yates))
        else:
            try:
                arrays = [np.asarray(s, dtype=np.float64) for s in by_group]
            except (TypeError, ValueError) as exc:
                raise CfhdaskInputError(
                    f"participants table: column {var!r} is declared numeric but holds "
                    f"non-numeric values") from exc
            row.update(_numeric_row(arrays, groups, normality_alpha, equal_var, decimals))
        rows.append(row)
    columns = ["variable", "kind", "summary", "levels"]
    for g in groups:
        columns += [f"n_{g}", g]
    columns += [f"shapiro_p_{g}" for g in groups] + ["test", "statistic", "df", "p"]
    out = pd.DataFrame(rows).reindex(columns=columns)
    log.info("table1: %d variables, groups %s", len(out), groups)
    return out


def _categorical_row(by_group: list[pd.Series], groups: tuple[str, ...],
                     yates: bool) -> dict[str, object]:
    levels = sorted(set().union(*(set(s.astype(str)) for s in by_group)))
    counts = np.array([[int((s.astype(str) == lev).sum()) for lev in levels] for s in by_group])
    row: dict[str, object] = {"kind": "categorical", "summary": SUMMARY_COUNTS,
                              "levels": "/".join(levels)}
    for g, s, c in zip(groups, by_group, counts, strict=True):
        row[f"n_{g}"] = len(s)
        row[g] = "/".join(str(v) for v in c)
        row[f"shapiro_p_{g}"] = math.nan
    present = [g for g, s in zip(groups, by_group, strict=True) if len(s)]
    if len(present) < 2:
        row.update(test="", statistic=math.nan, df=math.nan, p=math.nan)
        return row
    keep = counts.sum(axis=0) > 0
    table = counts[:, keep]
    if table.shape[1] < 2:
        # one level only: no association can be tested; the groups do not differ
        row.update(test="chi2", statistic=0.0, df=0, p=1.0)
        return row
    res = stats.chi2_contingency(table, correction=yates)
    name = "chi2 (Yates)" if (yates and table.shape == (2, 2)) else "chi2"
    row.update(test=name, statistic=float(res.statistic), df=int(res.dof), p=float(res.pvalue))
    return row


def _numeric_row(arrays: list[np.ndarray], groups: tuple[str, ...], alpha: float,
                 equal_var: bool, decimals: int) -> dict[str, object]:
    shapiro = [_shapiro_p(x) for x in arrays]
    # a group is "normal" unless Shapiro-Wilk rejects; untestable groups are not
    normal = [bool(np.isfinite(p) and p >= alpha) for p in shapiro]
    present = [x.size > 0 for x in arrays]
    row: dict[str, object] = {"kind": "numeric", "levels": ""}
    for g, x, p in zip(groups, arrays, shapiro, strict=True):
        row[f"n_{g}"] = int(x.size)
        row[f"shapiro_p_{g}"] = p
    if not all(present):
        # measured in one group only: describe it there, no test
        only = present.index(True) if any(present) else 0
        is_normal = normal[only]
        row["summary"] = SUMMARY_MEAN_SD if is_normal else SUMMARY_MEDIAN_RANGE
        for g, x in zip(groups, arrays, strict=True):
            row[g] = _describe(x, is_normal, decimals)
        row.update(test="", statistic=math.nan, df=math.nan, p=math.nan)
        return row
    both_normal = all(normal)
    row["summary"] = SUMMARY_MEAN_SD if both_normal else SUMMARY_MEDIAN_RANGE
    for g, x in zip(groups, arrays, strict=True):
        row[g] = _describe(x, both_normal, decimals)
    a, b = arrays
    if both_normal:
        res = stats.ttest_ind(a, b, equal_var=equal_var)
        df = float(res.df) if hasattr(res, "df") else float(a.size + b.size - 2)
        row.update(test="Student t" if equal_var else "Welch t", statistic=float(res.statistic),
                   df=df, p=float(res.pvalue))
    else:
        res = stats.mannwhitneyu(a, b, alternative="two-sided")
        row.update(test="Mann-Whitney U", statistic=float(res.statistic), df=math.nan,
                   p=float(res.pvalue))
    return row


def format_p(p: float) -> str:
    """A p-value as reported in tables: 3 significant digits, ``<0.001`` below."""
    if p is None or not np.isfinite(p):
        return ""
    if p < 0.001:
        return "<0.001"
    return f"{p:.3f}"


def write_table1(df: pd.DataFrame, path: str | Path) -> Path:
    """Write a :func:`table1` result as a tab-separated file.

    Parameters
    ----------
    df : DataFrame
        The result of :func:`table1`.
    path : str or Path
        Destination ``.tsv``; parent directories are created.  Written to a
        temporary name first, then renamed, so no half-written file is left.

    Returns
    -------
    Path
    """
    path = Path(path)
    atomic_write(path, lambda tmp: df.to_csv(tmp, sep="\t", index=False,
                                             float_format="%.6g", na_rep="n/a"))
    return path
