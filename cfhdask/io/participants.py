"""Reading the participants table (BIDS ``participants.tsv`` or a CSV) and ``sessions.tsv``.

Store subjects are paired with its rows by :func:`cfhdask.inputs.group_maps`
(sessions and runs combined into one row per participant).  Tables may be
local paths or fsspec URLs, opened through :mod:`cfhdask.io.urls` with the
run's ``storage_options``.
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Mapping
from typing import Any

import pandas as pd

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import ID_COLUMN, SESSION_COLUMN
from cfhdask.io.urls import full_url, read_text, url_to_fs

__all__ = ["ID_COLUMN", "SESSION_COLUMN", "read_participants", "read_sessions"]

_NA = ["n/a", "NA", ""]


def _read_table(path: str, storage_options: Mapping[str, Any] | None, what: str,
                key: str) -> pd.DataFrame:
    text = read_text(path, storage_options, what=what)
    sep = "," if path.lower().endswith(".csv") else "\t"
    kw = {"na_values": _NA, "keep_default_na": True, "dtype": {key: str}}
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, **kw)
        if df.shape[1] == 1 and sep == "\t":
            df = pd.read_csv(io.StringIO(text), sep=",", **kw)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CfhdaskInputError(f"{what} {path}: cannot be read: {exc}") from exc
    if key not in df.columns:
        raise CfhdaskInputError(f"{what} {path}: no {key!r} column (columns: {list(df.columns)})")
    df[key] = df[key].astype(str).str.strip()
    return df


def read_participants(path: str | os.PathLike,
                      storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Read a participants table (TSV or CSV) as strings-or-numbers.

    Parameters
    ----------
    path : str or path-like
        ``.tsv`` (BIDS) or ``.csv``, local or an fsspec URL; other names are
        sniffed (tab, then comma).
    storage_options : mapping, optional
        fsspec options of a remote URL.

    Returns
    -------
    pandas.DataFrame
        With a ``participant_id`` column of strings.
    """
    path = os.fspath(path)
    if "://" not in path and not os.path.exists(path):
        raise CfhdaskInputError(f"participants table {path}: no such file")
    return _read_table(path, storage_options, "participants table", ID_COLUMN)


def read_sessions(participants_path: str | os.PathLike,
                  storage_options: Mapping[str, Any] | None = None) -> pd.DataFrame | None:
    """Session-level variables: every ``sub-<l>/sub-<l>_sessions.tsv`` next to a participants table.

    BIDS keeps one ``sessions.tsv`` per participant, keyed by ``session_id``
    (``ses-<label>``), in the participant's folder of the dataset whose root
    holds ``participants.tsv``.

    Returns
    -------
    pandas.DataFrame or None
        ``participant_id``, ``session_id`` and the session columns of all
        participants; None when the dataset has no ``sessions.tsv``.
    """
    path = os.fspath(participants_path)
    fs, root = url_to_fs(path, storage_options, what="participants table")
    base = posixpath.dirname(root)
    try:
        found = sorted(fs.glob(posixpath.join(base, "sub-*", "sub-*_sessions.tsv")))
    except Exception as exc:  # unreachable endpoint, denied access (botocore errors)
        raise CfhdaskInputError(f"sessions tables next to {path}: cannot list: {exc}") from None
    frames = []
    for f in found:
        pid = posixpath.basename(f).removesuffix("_sessions.tsv")
        if posixpath.basename(posixpath.dirname(f)) != pid:
            continue
        url = full_url(fs, f)
        df = _read_table(url, storage_options, "sessions table", SESSION_COLUMN)
        if ID_COLUMN in df.columns and (df[ID_COLUMN].astype(str) != pid).any():
            raise CfhdaskInputError(f"sessions table {url}: participant_id is not {pid}")
        df[ID_COLUMN] = pid
        frames.append(df)
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)
