"""Participants table -> design matrix of a two-group comparison with covariates.

The design has one row per **participant** (never one per session or run: the
maps of a participant are first combined into one, as ``combine_runs`` says,
see :func:`cfhdask.inputs.group_maps`), one column of interest (the group
indicator, 1 for the first group, 0 for the second), an intercept and the
covariates: numeric ones mean-centred, categorical ones (declared) dummy-coded
(first level, sorted, dropped) by :func:`encode_covariates`, the one encoder
of the GLM and of the clinical partial correlations.

Session-level variables (a BIDS ``sessions.tsv``, one row per participant and
session) take precedence over the participants table for the maps of that
session; a participant whose kept maps come from several sessions gets the
mean of a numeric variable over them, and a categorical variable must agree.

Every problem with the table (missing subjects, unknown columns, missing
values, text in a numeric covariate, a constant covariate, a rank-deficient
design) raises :class:`CfhdaskInputError` naming it; ``drop_missing=True``
drops the participants at fault instead and reports them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import ID_COLUMN, MEAN, SESSION_COLUMN, group_maps, session_of

__all__ = ["Design", "build_design", "encode_covariates", "participant_values"]

log = logging.getLogger(__name__)


@dataclass
class Design:
    """A two-group GLM design.

    Attributes
    ----------
    subjects : list of str
        Participants (``participant_id``), in the row order of ``X``.
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
    maps : dict of str -> list of str
        The store maps combined into each participant's row.
    combine_runs : str
        How they were combined (``"mean"`` or a session/run selector).
    table : pandas.DataFrame
        Each row's group and covariate values (session-level ones combined).
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
    maps: dict[str, list[str]] = field(default_factory=dict)
    combine_runs: str = MEAN
    table: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def n(self) -> int:
        """Number of participants (rows)."""
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


def encode_covariates(
    frame: pd.DataFrame,
    covariates: Sequence[str],
    categorical: Sequence[str] = (),
    *,
    source: str = "participants table",
    center: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """Covariates as numeric columns: the one encoder of the GLM and the partial correlations.

    Parameters
    ----------
    frame : DataFrame
        One row per participant (index: participant ids), with the covariates.
    covariates : sequence of str
        Columns to encode, in order.
    categorical : sequence of str
        Covariates that are categories: dummy-coded, first level (sorted)
        dropped.  Every other covariate must be numeric.
    source : str
        Name of the table in messages.
    center : bool
        Mean-centre the numeric covariates.

    Returns
    -------
    (ndarray (n, k) float64, list of k column names)

    Raises
    ------
    CfhdaskInputError
        A text value in a numeric covariate (naming the participant and the
        column), or a covariate with a single value in these rows.
    """
    mats: list[np.ndarray] = []
    columns: list[str] = []
    categorical = set(categorical or ())
    for c in covariates:
        col = frame[c]
        if c in categorical:
            text = col.astype(str).str.strip()
            lv = sorted(text.unique())
            if len(lv) < 2:
                raise CfhdaskInputError(
                    f"{source}: categorical covariate {c!r} has the single value "
                    f"{lv[0] if lv else None!r} in the {len(frame)} analysed participants; "
                    "it cannot be estimated (remove it)")
            for v in lv[1:]:
                mats.append((text == v).to_numpy(np.float64))
                columns.append(f"{c}[{v}]")
            continue
        num = pd.to_numeric(col, errors="coerce")
        bad = num.isna() & col.notna()
        if bad.any():
            who = frame.index[np.flatnonzero(bad.to_numpy())[0]]
            raise CfhdaskInputError(
                f"{source}: covariate {c!r} is numeric but participant {who!r} has "
                f"{col[who]!r}; fix the value, or declare {c!r} categorical "
                "(--categorical / study.yaml 'categorical')")
        if len(num) and float(num.max() - num.min()) == 0.0:
            raise CfhdaskInputError(
                f"{source}: covariate {c!r} is constant ({num.iloc[0]:g}) in the "
                f"{len(frame)} analysed participants; it cannot be estimated (remove it)")
        values = num.to_numpy(np.float64)
        mats.append(values - values.mean() if center else values)
        columns.append(c)
    X = np.column_stack(mats) if mats else np.zeros((len(frame), 0))
    return X, columns


def _session_values(sessions: pd.DataFrame | None, source: str) -> dict:
    """(participant_id, session_id) -> row (a dict) of a sessions table."""
    if sessions is None or not len(sessions):
        return {}
    for col in (ID_COLUMN, SESSION_COLUMN):
        if col not in sessions.columns:
            raise CfhdaskInputError(f"sessions table of {source}: no {col!r} column")
    keys = list(zip(sessions[ID_COLUMN].astype(str).str.strip(),
                    sessions[SESSION_COLUMN].astype(str).str.strip(), strict=True))
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise CfhdaskInputError(f"sessions table of {source}: duplicated rows {dup}")
    recs = sessions.drop(columns=[ID_COLUMN, SESSION_COLUMN]).to_dict("records")
    return dict(zip(keys, recs, strict=True))


def participant_values(
    participants: pd.DataFrame,
    maps: dict[str, list[str]],
    columns: Sequence[str],
    *,
    categorical: Sequence[str] = (),
    sessions: pd.DataFrame | None = None,
    source: str | None = None,
) -> pd.DataFrame:
    """One row per participant of ``columns``, with session-level values where given.

    A participant whose ``maps`` (store subjects) come from several sessions
    gets the mean of a numeric column over them; a column named in
    ``categorical`` (or not numeric) must agree.

    Returns
    -------
    DataFrame indexed by participant id (the keys of ``maps``).
    """
    src = f"participants table {source}" if source else "participants table"
    df = participants.copy()
    df[ID_COLUMN] = df[ID_COLUMN].astype(str).str.strip()
    ses_rows = _session_values(sessions, src)
    for c in columns:
        if c not in df.columns:
            df[c] = np.nan
    df = df.set_index(ID_COLUMN)
    numeric = {c for c in columns if c not in set(categorical)
               and (pd.api.types.is_numeric_dtype(df[c]) or df[c].isna().all())}
    return _per_participant(df, maps, list(columns), numeric, ses_rows, src)


def _per_participant(df: pd.DataFrame, maps: dict[str, list[str]], cols: list[str],
                     numeric: set[str], ses_rows: dict, src: str) -> pd.DataFrame:
    """One row per participant of ``cols``: session values where given, combined over maps."""
    out = df.loc[list(maps), cols].copy().astype(object)
    if not ses_rows:
        return out.infer_objects()
    for pid, subs in maps.items():
        for c in cols:
            vals = []
            for s in subs:
                row = ses_rows.get((pid, session_of(s) or ""), {})
                v = row.get(c)
                vals.append(v if v is not None and not pd.isna(v) else df.at[pid, c])
            if all(pd.isna(v) for v in vals):
                out.at[pid, c] = np.nan
            elif c in numeric:
                num = pd.to_numeric(pd.Series(vals), errors="coerce")
                out.at[pid, c] = float(num.mean()) if num.notna().all() else \
                    next(v for v, ok in zip(vals, num.notna(), strict=True) if not ok)
            else:
                distinct = sorted({str(v).strip() for v in vals})
                if len(distinct) > 1:
                    raise CfhdaskInputError(
                        f"{src}: participant {pid!r}: {c!r} differs between the maps "
                        f"combined into its row ({dict(zip(subs, map(str, vals), strict=True))}"
                        "); choose one session with --combine-runs / study.yaml "
                        "'combine_runs'")
                out.at[pid, c] = vals[0]
    return out.infer_objects()


def build_design(
    participants: pd.DataFrame,
    subjects: Sequence[str],
    *,
    group: str,
    groups: Sequence[str] | None = None,
    covariates: Sequence[str] = (),
    categorical: Sequence[str] = ("sex",),
    drop_missing: bool = False,
    combine_runs: str = MEAN,
    sessions: pd.DataFrame | None = None,
    source: str | None = None,
) -> Design:
    """Build the design matrix of a two-group comparison, one row per participant.

    Parameters
    ----------
    participants : DataFrame
        Table with ``participant_id`` and the ``group`` and ``covariates`` columns
        (:func:`cfhdask.io.participants.read_participants`).
    subjects : sequence of str
        Store subjects of the data (``sub-01``, ``sub-01_ses-1_run-2``...), in
        data order; several may belong to one participant.
    group : str
        Column holding the group of each participant.
    groups : (str, str), optional
        The two groups to compare (first > second is the first contrast).
        Default: the two values of ``group`` (sorted); more than two is an error.
        Participants in other groups are left out (and reported).
    covariates : sequence of str
        Nuisance columns: mean-centred when numeric, dummy-coded (first level,
        sorted, dropped) when named in ``categorical``.
    categorical : sequence of str
        Covariates that are categories.  Any other covariate must be numeric in
        every analysed participant (a text value is an error naming the
        participant and the column), and no covariate may be constant.
    drop_missing : bool
        Drop participants missing from the table or from the data, or with
        missing values, instead of raising.
    combine_runs : str
        ``"mean"`` (default): each participant's row is the mean of all its
        maps; a session/run (``"ses-1"``, ``"run-2"``, ``"ses-1_run-1"``): the
        mean of the maps that match it.
    sessions : DataFrame, optional
        Session-level variables (``participant_id``, ``session_id`` and other
        columns; :func:`cfhdask.io.participants.read_sessions`).
    source : str, optional
        Name of the table used in messages.

    Returns
    -------
    Design
        ``subjects`` are participant ids; ``maps`` the store maps of each.
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
    ses_rows = _session_values(sessions, src)
    ses_cols = set(sessions.columns) - {ID_COLUMN, SESSION_COLUMN} if ses_rows else set()
    for c in ses_cols - set(df.columns):
        df[c] = np.nan
    unknown = [c for c in [group, *covariates] if c not in df.columns]
    if unknown:
        raise CfhdaskInputError(
            f"{src}: unknown column(s) {unknown}; columns are {list(df.columns)}"
        )
    if group in covariates:
        raise CfhdaskInputError(f"{src}: the group column {group!r} is also a covariate")

    dropped: dict[str, str] = {}
    subjects = list(subjects)
    try:
        maps, not_in_table, unselected = group_maps(df[ID_COLUMN], subjects, combine_runs)
    except ValueError as exc:
        raise CfhdaskInputError(f"--combine-runs: {exc}") from None
    in_table_only = sorted(set(df[ID_COLUMN]) - set(maps) - set(unselected))
    if (not_in_table or in_table_only or unselected) and not drop_missing:
        parts = []
        if not_in_table:
            parts.append(f"subject(s) in the data but not in the table: {not_in_table}")
        if in_table_only:
            parts.append(f"participant(s) in the table but not in the data: {in_table_only}")
        if unselected:
            parts.append(f"participant(s) with no map for combine_runs {combine_runs!r}: "
                         f"{unselected}")
        raise CfhdaskInputError(f"{src}: " + "; ".join(parts) + " (use --drop-missing to drop)")
    for s in not_in_table:
        dropped[s] = "not in the participants table"
    for t in in_table_only:
        dropped[t] = "not in the data"
    dropped.update(unselected)
    df = df.set_index(ID_COLUMN)
    categorical = list(categorical or ())
    cols = [group, *covariates]
    numeric = {c for c in covariates if c not in categorical}
    df = _per_participant(df, maps, cols, numeric, ses_rows, src)

    na = df[cols].isna()
    if na.to_numpy().any():
        bad = {s: [c for c in cols if na.loc[s, c]] for s in df.index[na.any(axis=1)]}
        if not drop_missing:
            raise CfhdaskInputError(
                f"{src}: missing values (participant: columns) {bad} (use --drop-missing "
                "to drop)")
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

    cov_x, cov_names = encode_covariates(df, covariates, categorical, source=src)
    columns = ["intercept", f"{group}[{g1}]", *cov_names]
    X = np.column_stack([np.ones(len(df)), (gvals == g1).to_numpy(dtype=np.float64), cov_x])
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
            f"{src}: {n} participants for {rank} design columns leave no degrees of freedom"
        )
    c = np.zeros(X.shape[1])
    c[1] = 1.0
    contrasts = {f"{g1}_gt_{g2}": c, f"{g2}_gt_{g1}": -c}
    if dropped:
        log.warning("Left out of the design: %s", dropped)
    rows = list(df.index)
    return Design(
        subjects=rows, X=X, columns=columns, x_index=1, groups=(g1, g2),
        contrasts=contrasts, dropped=dropped, n_per_group=counts, rank=rank,
        maps={p: maps[p] for p in rows}, combine_runs=combine_runs, table=df[cols].copy(),
    )
