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

_ENTITY = re.compile(r"(?:^|_)(sub|ses|run)-([A-Za-z0-9]+)")
#: Key column of a participants table (BIDS).
ID_COLUMN = "participant_id"


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


def participant_of(subject: str) -> str:
    """The participant label part of a store subject id (``sub-01_ses-2_run-1`` -> ``sub-01``)."""
    head = str(subject).split("_")[0]
    return head if head.startswith("sub-") else str(subject)


def match_subjects(table_ids: Iterable[str], subjects: Sequence[str]) -> dict[str, str]:
    """Map each store subject to its ``participant_id`` row; unmatched subjects are absent.

    A subject matches a row whose id equals it, or equals its participant part
    (:func:`participant_of`), with or without the ``sub-`` prefix on either side.
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
