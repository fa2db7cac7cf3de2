"""Reading the participants table (BIDS ``participants.tsv`` or a CSV).

Store subjects are paired with its rows by :func:`cfhdask.inputs.match_subjects`.
"""

from __future__ import annotations

import os

import pandas as pd

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import ID_COLUMN

__all__ = ["ID_COLUMN", "read_participants"]


def read_participants(path: str | os.PathLike) -> pd.DataFrame:
    """Read a participants table (TSV or CSV) as strings-or-numbers.

    Parameters
    ----------
    path : str or path-like
        ``.tsv`` (BIDS) or ``.csv``; other names are sniffed (tab, then comma).

    Returns
    -------
    pandas.DataFrame
        With a ``participant_id`` column of strings.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CfhdaskInputError(f"participants table {path}: no such file")
    sep = "," if path.lower().endswith(".csv") else "\t"
    try:
        kw = {"na_values": ["n/a", "NA", ""], "dtype": {ID_COLUMN: str}}
        df = pd.read_csv(path, sep=sep, **kw)
        if df.shape[1] == 1 and sep == "\t":
            df = pd.read_csv(path, sep=",", **kw)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise CfhdaskInputError(f"participants table {path}: cannot be read: {exc}") from exc
    if ID_COLUMN not in df.columns:
        raise CfhdaskInputError(
            f"participants table {path}: no {ID_COLUMN!r} column (columns: {list(df.columns)})"
        )
    df[ID_COLUMN] = df[ID_COLUMN].astype(str).str.strip()
    return df
