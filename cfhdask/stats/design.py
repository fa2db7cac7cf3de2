"""Participants table -> design matrix of a two-group comparison with covariates.

The design has one column of interest (the group indicator, 1 for the first
group, 0 for the second), an intercept and the covariates: numeric ones
mean-centred, categorical ones (declared) dummy-coded (first level, sorted,
dropped).
Every problem with the table (missing subjects, unknown columns, missing
values, a rank-deficient design) raises :class:`CfhdaskInputError` naming it;
``drop_missing=True`` drops the subjects at fault instead and reports them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import ID_COLUMN, match_subjects

log = logging.getLogger(__name__)



@dataclass
class Design:
    """A two-group GLM design.

    Attributes
    ----------
    subjects : list of str
        Subjects (store names), in the row order of ``X``.
    X : ndarray of shape (n, p), float64
        Design matrix; column ``x_index`` is the group indicator.
    columns : list of str
        Names of the columns of ``X``.
    x_index : int
        Column of the effect of interest.
    groups : (str, str)
        The two groups; the indicator is 1 for ``groups[0]``.
    contrasts : dict of str -> ndarray of shape (p,)
        ``"<g1>_gt_<g2>"`` and ``"<g2>_gt_<g1>"``.
    dropped : dict of str -> str
        Subjects left out, with the reason.
    n_per_group : dict of str -> int
    rank : int
        Rank of ``X``; ``df = n - rank``.
    """

    subjects: list[str]
    X: np.ndarray
    columns: list[str]
    x_index: int
    groups: tuple[str, str]
    contrasts: dict[str, np.ndarray]
    dropped: dict[str, str] = field(default_factory=dict)
    n_per_group: dict[str, int] = field(default_factory=dict)
    rank: int = 0

    @property
    def n(self) -> int:
        """Number of subjects."""
        return len(self.subjects)

    @property
    def df(self) -> int:
        """Residual degrees of freedom, n - rank(X)."""
        return self.n - self.rank

    @property
    def x(self) -> np.ndarray:
        """The column of interest."""
        return self.X[:, self.x_index]

    @property
    def Z(self) -> np.ndarray:
        """The nuisance columns (intercept and covariates)."""
        return np.delete(self.X, self.x_index, axis=1)


def _first_dependent_column(X: np.ndarray, names: list[str]) -> str | None:
    """Name of the first column that is a linear combination of earlier ones."""
    for j in range(1, X.shape[1] + 1):
        if np.linalg.matrix_rank(X[:, :j]) < j:
            return names[j - 1]
    return None


def build_design(
    participants: pd.DataFrame | str | os.PathLike,
    subjects: Sequence[str],
    *,
    group: str,
    groups: Sequence[str] | None = None,
    covariates: Sequence[str] = (),
    categorical: Sequence[str] = ("sex",),
    drop_missing: bool = False,
    source: str | None = None,
) -> Design:
    """Build the design matrix of a two-group comparison.

    Parameters
    ----------
    participants : DataFrame
        Table with ``participant_id`` and the ``group`` and ``covariates`` columns
        (:func:`cfhdask.io.participants.read_participants`).
    subjects : sequence of str
        Subjects of the data (e.g. the store's), in data order.
    group : str
        Column holding the group of each subject.
    groups : (str, str), optional
        The two groups to compare (first > second is the first contrast).
        Default: the two values of ``group`` (sorted); more than two is an error.
        Subjects in other groups are left out (and reported).
    covariates : sequence of str
        Nuisance columns: mean-centred when numeric, dummy-coded (first level,
        sorted, dropped) when named in ``categorical``.
    categorical : sequence of str
        Covariates that are categories.  Any other covariate must be numeric in
        every analysed subject (a text value is an error naming the participant
        and the column), and no covariate may be constant.
    drop_missing : bool
        Drop subjects missing from the table or from the data, or with missing
        values, instead of raising.
    source : str, optional
        Name of the table used in messages.

    Returns
    -------
    Design
    """
    if not isinstance(participants, pd.DataFrame):
        raise CfhdaskInputError(
            "build_design needs the participants as a DataFrame "
            "(read a file with cfhdask.io.participants.read_participants)")
    src = f"participants table {source}" if source else "participants table"
    df = participants.copy()
    if ID_COLUMN not in df.columns:
        raise CfhdaskInputError(f"{src}: no {ID_COLUMN!r} column")
    df[ID_COLUMN] = df[ID_COLUMN].astype(str).str.strip()
    dup = df[ID_COLUMN][df[ID_COLUMN].duplicated()].unique().tolist()
    if dup:
        raise CfhdaskInputError(f"{src}: duplicated participant_id {dup}")
    covariates = list(covariates or [])
    unknown = [c for c in [group, *covariates] if c not in df.columns]
    if unknown:
        raise CfhdaskInputError(
            f"{src}: unknown column(s) {unknown}; columns are {list(df.columns)}"
        )
    if group in covariates:
        raise CfhdaskInputError(f"{src}: the group column {group!r} is also a covariate")

    dropped: dict[str, str] = {}
    subjects = list(subjects)
    match = match_subjects(df[ID_COLUMN], subjects)
    not_in_table = [s for s in subjects if s not in match]
    in_table_only = sorted(set(df[ID_COLUMN]) - set(match.values()))
    if (not_in_table or in_table_only) and not drop_missing:
        parts = []
        if not_in_table:
            parts.append(f"subject(s) in the data but not in the table: {not_in_table}")
        if in_table_only:
            parts.append(f"participant(s) in the table but not in the data: {in_table_only}")
        raise CfhdaskInputError(f"{src}: " + "; ".join(parts) + " (use --drop-missing to drop)")
    for s in not_in_table:
        dropped[s] = "not in the participants table"
    for t in in_table_only:
        dropped[t] = "not in the data"
    keep = [s for s in subjects if s in match]
    df = df.set_index(ID_COLUMN).loc[[match[s] for s in keep]]
    df.index = keep

    cols = [group, *covariates]
    na = df[cols].isna()
    if na.to_numpy().any():
        bad = {s: [c for c in cols if na.loc[s, c]] for s in df.index[na.any(axis=1)]}
        if not drop_missing:
            raise CfhdaskInputError(
                f"{src}: missing values (subject: columns) {bad} (use --drop-missing to drop)"
            )
        for s, c in bad.items():
            dropped[s] = f"missing value in {c}"
        df = df.drop(index=list(bad))

    gvals = df[group].astype(str).str.strip()
    levels = sorted(gvals.unique())
    if groups is None:
        if len(levels) != 2:
            raise CfhdaskInputError(
                f"{src}: column {group!r} has {len(levels)} group(s) {levels}; "
                "name the two to compare with --groups A,B"
            )
        g1, g2 = levels
    else:
        groups = [str(g).strip() for g in groups]
        if len(groups) != 2 or groups[0] == groups[1]:
            raise CfhdaskInputError(f"--groups: give two different groups, got {groups}")
        g1, g2 = groups
        missing = [g for g in (g1, g2) if g not in levels]
        if missing:
            raise CfhdaskInputError(
                f"{src}: group(s) {missing} not found in column {group!r} (values {levels})"
            )
        other = gvals[~gvals.isin([g1, g2])]
        for s, g in other.items():
            dropped[s] = f"group {g!r} not compared"
        df, gvals = df.loc[gvals.isin([g1, g2])], gvals[gvals.isin([g1, g2])]
    counts = {g1: int((gvals == g1).sum()), g2: int((gvals == g2).sum())}
    if min(counts.values()) < 1:
        raise CfhdaskInputError(f"{src}: empty group in {counts}")

    columns = ["intercept", f"{group}[{g1}]"]
    mats = [np.ones(len(df)), (gvals == g1).to_numpy(dtype=np.float64)]
    categorical = set(categorical or ())
    for c in covariates:
        col = df[c]
        if c in categorical:
            text = col.astype(str).str.strip()
            lv = sorted(text.unique())
            if len(lv) < 2:
                raise CfhdaskInputError(
                    f"{src}: categorical covariate {c!r} has the single value {lv[0]!r} in "
                    f"the {len(df)} analysed subjects; it cannot be estimated (remove it)")
            for v in lv[1:]:
                mats.append((text == v).to_numpy(np.float64))
                columns.append(f"{c}[{v}]")
            continue
        num = pd.to_numeric(col, errors="coerce")
        bad = num.isna()
        if bad.any():
            who = df.index[bad][0]
            raise CfhdaskInputError(
                f"{src}: covariate {c!r} is numeric but participant {who!r} has "
                f"{col[who]!r}; fix the value, or declare {c!r} categorical "
                "(--categorical / study.yaml 'categorical')")
        if float(num.std()) == 0.0:
            raise CfhdaskInputError(
                f"{src}: covariate {c!r} is constant ({num.iloc[0]:g}) in the {len(df)} "
                "analysed subjects; it cannot be estimated (remove it)")
        mats.append(num.to_numpy(np.float64) - num.mean())
        columns.append(c)
    X = np.column_stack(mats)
    rank = int(np.linalg.matrix_rank(X))
    if rank < X.shape[1]:
        bad = _first_dependent_column(X, columns)
        raise CfhdaskInputError(
            f"{src}: the design is rank deficient (rank {rank} < {X.shape[1]} columns); "
            f"column {bad!r} is constant or a linear combination of {columns[:columns.index(bad)]}"
        )
    n = X.shape[0]
    if n - rank < 1:
        raise CfhdaskInputError(
            f"{src}: {n} subjects for {rank} design columns leave no degrees of freedom"
        )
    c = np.zeros(X.shape[1])
    c[1] = 1.0
    contrasts = {f"{g1}_gt_{g2}": c, f"{g2}_gt_{g1}": -c}
    if dropped:
        log.warning("Subjects left out of the design: %s", dropped)
    return Design(
        subjects=list(df.index), X=X, columns=columns, x_index=1, groups=(g1, g2),
        contrasts=contrasts, dropped=dropped, n_per_group=counts, rank=rank,
    )
