"""What one subject brings to ingest: the BOLD image and its companions."""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field

_ENTITY = re.compile(r"(?:^|_)(sub|ses|run)-([A-Za-z0-9]+)")


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
