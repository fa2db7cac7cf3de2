"""Subjects: what one brings to ingest, its store id, and the participant it belongs to.

A store subject is named ``sub-<label>[_ses-<label>][_run-<index>]`` (BIDS)
or by a file stem; a participants table has one row per participant, keyed by
``participant_id``.  :func:`match_subjects` is the one place the two are paired.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["ID_COLUMN", "MEAN", "SESSION_COLUMN", "SubjectInput", "entities", "group_maps", "match_subjects",
           "parse_combine", "participant_of", "select_maps", "session_of", "strip_ext",
           "subject_id"]

_ENTITY = re.compile(r"(?:^|_)(sub|ses|run)-([A-Za-z0-9]+)")
#: Key column of a participants table (BIDS).
ID_COLUMN = "participant_id"
#: Key column of a BIDS ``sessions.tsv`` (``ses-<label>``).
SESSION_COLUMN = "session_id"


@dataclass(frozen=True)
class SubjectInput:
    """One functional run to ingest.

    Attributes
    ----------
    subject : str
        Identifier in the store: BIDS ``sub-<label>`` plus ``_ses-<label>``
        (and ``_run-<index>`` when a subject has several runs), else the
        file stem.
    bold : str
        Path or fsspec URL of the 4D NIfTI.
    confounds : str, optional
        fMRIPrep ``*_desc-confounds_timeseries.tsv`` or a plain table.
    realign : str, optional
        DPABI/SPM ``rp_*.txt`` realignment parameters.
    sidecar : str, optional
        BIDS JSON sidecar (``RepetitionTime``).
    tr : float, optional
        Repetition time in seconds given by the user (overrides the header).
    extra : dict
        Anything else a discovery step wants recorded in the provenance.
    """

    subject: str
    bold: str
    confounds: str | None = None
    realign: str | None = None
    sidecar: str | None = None
    tr: float | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def strip_ext(name: str) -> str:
    """A file name without its data extension (``.nii.gz``, ``.tsv``, ...)."""
    for ext in (".nii.gz", ".nii", ".tsv", ".csv", ".txt", ".json", ".gz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def subject_id(path: str, *, with_run: bool = True) -> str:
    """Store subject id of a file: ``sub-<l>[_ses-<l>][_run-<i>]``, else the stem.

    Examples
    --------
    >>> subject_id("data/sub-01/ses-2/func/sub-01_ses-2_task-rest_bold.nii.gz")
    'sub-01_ses-2'
    >>> subject_id("s3://bucket/rest_patient7.nii")
    'rest_patient7'

    Parameters
    ----------
    path : str
        File path or URL; only the base name is used.
    with_run : bool
        Append the ``run-`` entity when the name has one.
    """
    name = posixpath.basename(str(path).rstrip("/"))
    ents = dict((k, v) for k, v in _ENTITY.findall(name))
    if "sub" not in ents:
        stem = strip_ext(name)
        return stem[3:] if stem.startswith("rp_") else stem
    out = f"sub-{ents['sub']}"
    if "ses" in ents:
        out += f"_ses-{ents['ses']}"
    if with_run and "run" in ents:
        out += f"_run-{ents['run']}"
    return out


def entities(subject: str) -> dict[str, str]:
    """BIDS entities of a store subject id or file name (``sub``, ``ses``, ``run``).

    >>> entities("sub-01_ses-2_run-1")
    {'sub': '01', 'ses': '2', 'run': '1'}
    """
    name = posixpath.basename(str(subject).rstrip("/"))
    return dict((k, v) for k, v in _ENTITY.findall(name))


def participant_of(subject: str) -> str:
    """The participant label part of a store subject id (``sub-01_ses-2_run-1`` -> ``sub-01``)."""
    head = str(subject).split("_")[0]
    return head if head.startswith("sub-") else str(subject)


def session_of(subject: str) -> str | None:
    """The ``ses-<label>`` of a store subject id, or None."""
    ses = entities(subject).get("ses") if str(subject).startswith("sub-") else None
    return f"ses-{ses}" if ses else None


def match_subjects(table_ids: Iterable[str], subjects: Sequence[str]) -> dict[str, str]:
    """Map each store subject to its ``participant_id`` row; unmatched subjects are absent.

    A subject matches a row whose id equals it, or equals its participant part
    (:func:`participant_of`), with or without the ``sub-`` prefix on either side.
    Several subjects (sessions, runs) may map to one row.
    """
    norm: dict[str, str] = {}
    for tid in map(str, table_ids):
        norm.setdefault(tid, tid)
        norm.setdefault(tid.removeprefix("sub-"), tid)
    out = {}
    for s in subjects:
        for key in (s, s.removeprefix("sub-"), participant_of(s),
                    participant_of(s).removeprefix("sub-")):
            if key in norm:
                out[s] = norm[key]
                break
    return out


#: ``combine_runs`` value that averages every map of a participant.
MEAN = "mean"
_SELECTOR = re.compile(r"^(?:ses-[A-Za-z0-9]+)?(?:_?run-[A-Za-z0-9]+)?$")


def parse_combine(combine: str) -> dict[str, str] | None:
    """``"mean"`` -> None; a selector such as ``"ses-1"``, ``"run-2"``, ``"ses-1_run-2"``
    -> its entities (``{"ses": "1", "run": "2"}``).

    Raises
    ------
    ValueError
        Anything else.
    """
    text = str(combine).strip()
    if text == MEAN:
        return None
    if not text or not _SELECTOR.match(text):
        raise ValueError(f"{combine!r} is neither 'mean' nor a session/run such as 'ses-1', "
                         "'run-2' or 'ses-1_run-2'")
    return dict(_ENTITY.findall(text))


def select_maps(subjects: Sequence[str], combine: str = MEAN) -> list[str]:
    """The maps of one participant that ``combine`` keeps (in the given order).

    ``"mean"`` keeps all of them; a selector keeps those whose entities match it
    (e.g. ``"ses-1"`` keeps every run of session 1).
    """
    want = parse_combine(combine)
    if want is None:
        return list(subjects)
    return [s for s in subjects
            if all(entities(s).get(k) == v for k, v in want.items())]


def group_maps(table_ids: Iterable[str], subjects: Sequence[str], combine: str = MEAN
               ) -> tuple[dict[str, list[str]], list[str], dict[str, str]]:
    """Store subjects grouped into one entry per participant, as ``combine`` says.

    The one place sessions and runs are paired with participants: every caller
    that turns store maps into per-participant values goes through it, so two
    maps of one participant are never two observations.

    Parameters
    ----------
    table_ids : iterable of str
        ``participant_id`` values of the participants table.
    subjects : sequence of str
        Store subject ids (``sub-01``, ``sub-01_ses-1_run-2``...).
    combine : str
        ``"mean"`` or a session/run selector (:func:`parse_combine`).

    Returns
    -------
    maps : dict participant_id -> list of store subjects
        In the order of first appearance in ``subjects``; only participants
        with at least one map kept by ``combine``.
    unmatched : list of str
        Store subjects that match no participant.
    unselected : dict participant_id -> str
        Participants with maps, none of which ``combine`` keeps (the reason).
    """
    match = match_subjects(table_ids, subjects)
    by_pid: dict[str, list[str]] = {}
    for s in subjects:
        if s in match:
            by_pid.setdefault(match[s], []).append(s)
    unmatched = [s for s in subjects if s not in match]
    maps: dict[str, list[str]] = {}
    unselected: dict[str, str] = {}
    for pid, subs in by_pid.items():
        kept = select_maps(subs, combine)
        if kept:
            maps[pid] = kept
        else:
            unselected[pid] = f"no map matching {combine!r} (maps: {', '.join(subs)})"
    return maps, unmatched, unselected
