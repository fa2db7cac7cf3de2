"""What one subject brings to ingest: the BOLD image and its companions."""

from __future__ import annotations

from dataclasses import dataclass, field


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
