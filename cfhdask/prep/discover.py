"""Find the runs to ingest: fMRIPrep derivatives, DPABI folders or plain files.

Each finder returns the runs it could pair with everything they need, and,
for the others, why they are skipped: a problem with one subject never stops
the others.  Folders may be local paths or fsspec URLs.

* fMRIPrep (BIDS derivatives):
  ``sub-<l>/[ses-<l>/]func/sub-<l>[_ses-<l>]_task-<t>[_...]_space-<space>[_res-<r>]_desc-preproc_bold.nii.gz``
  with, in the same folder, ``<entities before _space>_desc-confounds_timeseries.tsv``
  (or the older ``_desc-confounds_regressors.tsv``) and the BOLD's JSON
  sidecar (``RepetitionTime``).  Subject id ``sub-<l>[_ses-<l>][_run-<i>]``.
* DPABI: ``<DIR>/<FunImgARCW...>/<subject>/*.nii[.gz]`` (one 4D file per
  subject) with ``<DIR>/RealignParameter/<subject>/rp_*.txt``.  Subject id:
  the folder name.
* Plain files: BOLD paths with ``--confounds`` tables paired by subject id
  (BIDS ``sub-``/``ses-``/``run-`` entities, else the file stem, ``rp_``
  prefix removed); a single BOLD pairs with a single table whatever the names.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Sequence
from typing import NamedTuple

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import SubjectInput, strip_ext, subject_id
from cfhdask.io.urls import full_url, url_to_fs

__all__ = ["Skip", "discover_dpabi", "discover_fmriprep", "discover_inputs", "pair_files",
           "subject_id"]

log = logging.getLogger(__name__)


class Skip(NamedTuple):
    """A run that will not be ingested, and why."""

    subject: str
    reason: str


_ENTITY = re.compile(r"(?:^|_)(sub|ses|run)-([A-Za-z0-9]+)")
_NIFTI = (".nii.gz", ".nii")


def _fs(url: str, storage_options: dict | None = None):
    fs, root = url_to_fs(url, storage_options, what="folder")
    try:
        is_dir = fs.isdir(root)
    except Exception as exc:  # unreachable endpoint, denied access (botocore errors)
        raise CfhdaskInputError(f"{url}: cannot list the folder: {exc}") from None
    if not is_dir:
        raise CfhdaskInputError(f"not a folder: {url}")
    return fs, root


def _labels(participant_label: Sequence[str] | str | None) -> set[str] | None:
    if participant_label is None:
        return None
    if isinstance(participant_label, str):
        participant_label = [participant_label]
    return {lab.removeprefix("sub-") for lab in participant_label}


def _dedupe(found: list[SubjectInput], skipped: list[Skip]) -> list[SubjectInput]:
    seen: dict[str, SubjectInput] = {}
    dups: set[str] = set()
    for inp in found:
        if inp.subject in seen:
            dups.add(inp.subject)
        else:
            seen[inp.subject] = inp
    for sub in sorted(dups):
        files = [i.bold for i in found if i.subject == sub]
        skipped.append(Skip(sub, f"several runs map to subject id {sub}: {', '.join(files)}"))
    return [i for i in seen.values() if i.subject not in dups]


def discover_fmriprep(
    root: str,
    *,
    space: str = "MNI152NLin2009cAsym",
    task: str | None = "rest",
    participant_label: Sequence[str] | str | None = None,
    require_confounds: bool = True,
    storage_options: dict | None = None,
) -> tuple[list[SubjectInput], list[Skip]]:
    """Preprocessed BOLD runs of an fMRIPrep derivatives folder, with confounds and sidecar.

    Returns
    -------
    (inputs, skipped)
        Inputs sorted by subject id; ``skipped`` lists (subject, reason).

    Raises
    ------
    CfhdaskInputError
        The folder does not exist, or holds no matching BOLD at all.
    """
    fs, base = _fs(root, storage_options)
    labels = _labels(participant_label)
    pattern = posixpath.join(base, "**", f"*_space-{space}*_desc-preproc_bold.nii*")
    bolds = sorted(p for p in fs.glob(pattern) if p.endswith(_NIFTI))
    found: list[SubjectInput] = []
    skipped: list[Skip] = []
    for bold in bolds:
        name = posixpath.basename(bold)
        if task and f"_task-{task}_" not in name:
            continue
        sub = subject_id(name)
        m = _ENTITY.search(name)
        if labels is not None and (m is None or m.group(2) not in labels):
            continue
        folder = posixpath.dirname(bold)
        prefix = name.split("_space-")[0]
        confounds = None
        for suffix in ("_desc-confounds_timeseries.tsv", "_desc-confounds_regressors.tsv"):
            cand = posixpath.join(folder, prefix + suffix)
            if fs.exists(cand):
                confounds = cand
                break
        if confounds is None and require_confounds:
            skipped.append(Skip(sub, f"{full_url(fs, bold)}: no confounds table "
                                 f"{prefix}_desc-confounds_timeseries.tsv next to it"))
            continue
        sidecar = posixpath.join(folder, strip_ext(name) + ".json")
        found.append(SubjectInput(
            subject=sub,
            bold=full_url(fs, bold),
            confounds=full_url(fs, confounds) if confounds else None,
            sidecar=full_url(fs, sidecar) if fs.exists(sidecar) else None,
            extra={"layout": "fmriprep", "space": space, "task": task},
        ))
    if not found and not skipped:
        raise CfhdaskInputError(
            f"--bids-derivatives {root}: no *_space-{space}*_desc-preproc_bold.nii.gz"
            + (f" for task {task!r}" if task else "")
            + (f" and participants {sorted(labels)}" if labels else "")
        )
    found = _dedupe(found, skipped)
    return sorted(found, key=lambda i: i.subject), skipped


def _dpabi_func_dir(fs, base: str, root: str, dpabi_dir: str) -> str:
    exact = posixpath.join(base, dpabi_dir)
    if fs.isdir(exact):
        return exact
    cands = sorted(p for p in fs.glob(posixpath.join(base, dpabi_dir + "*")) if fs.isdir(p))
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise CfhdaskInputError(f"--dpabi {root}: no {dpabi_dir}* folder")
    names = ", ".join(posixpath.basename(c) for c in cands)
    raise CfhdaskInputError(
        f"--dpabi {root}: several {dpabi_dir}* folders ({names}); choose one with --dpabi-dir"
    )


def discover_dpabi(
    root: str,
    *,
    dpabi_dir: str = "FunImgARCW",
    participant_label: Sequence[str] | str | None = None,
    require_confounds: bool = True,
    storage_options: dict | None = None,
) -> tuple[list[SubjectInput], list[Skip]]:
    """Runs of a DPABI working folder: ``<dpabi_dir>*/<sub>/*.nii*`` + ``RealignParameter``.

    Returns
    -------
    (inputs, skipped)
    """
    fs, base = _fs(root, storage_options)
    func = _dpabi_func_dir(fs, base, root, dpabi_dir)
    labels = _labels(participant_label)
    found: list[SubjectInput] = []
    skipped: list[Skip] = []
    for sub_dir in sorted(p for p in fs.ls(func, detail=False) if fs.isdir(p)):
        sub = posixpath.basename(sub_dir.rstrip("/"))
        if labels is not None and sub.removeprefix("sub-") not in labels and sub not in labels:
            continue
        niftis = sorted(p for p in fs.ls(sub_dir, detail=False) if p.endswith(_NIFTI))
        if len(niftis) != 1:
            what = "no" if not niftis else f"{len(niftis)}"
            skipped.append(Skip(sub, f"{full_url(fs, sub_dir)}: {what} NIfTI files (one 4D image expected)"))
            continue
        rps = sorted(fs.glob(posixpath.join(base, "RealignParameter", sub, "rp_*.txt")))
        if not rps and require_confounds:
            skipped.append(Skip(sub, f"{full_url(fs, niftis[0])}: no RealignParameter/{sub}/rp_*.txt"))
            continue
        if len(rps) > 1:
            skipped.append(Skip(sub, f"several realignment files in RealignParameter/{sub}: "
                                 f"{', '.join(posixpath.basename(r) for r in rps)}"))
            continue
        found.append(SubjectInput(
            subject=sub,
            bold=full_url(fs, niftis[0]),
            realign=full_url(fs, rps[0]) if rps else None,
            extra={"layout": "dpabi", "dpabi_dir": posixpath.basename(func)},
        ))
    if not found and not skipped:
        raise CfhdaskInputError(f"--dpabi {root}: no subject folder in {full_url(fs, func)}")
    return found, skipped


def _is_realign(path: str) -> bool:
    return posixpath.basename(path).startswith("rp_") and path.endswith(".txt")


def _sidecar_of(bold: str, storage_options: dict | None) -> str | None:
    """The JSON sidecar next to a BOLD path or URL (same stem), if it exists."""
    cand = strip_ext(bold) + ".json"
    fs, path = url_to_fs(cand, storage_options)
    try:
        return cand if fs.exists(path) else None
    except Exception as exc:  # unreachable endpoint, denied access (botocore errors)
        raise CfhdaskInputError(f"{bold}: cannot look for its sidecar {cand}: {exc}") from None


def pair_files(
    files: Sequence[str],
    confounds: Sequence[str] | None = None,
    *,
    require_confounds: bool = False,
    storage_options: dict | None = None,
) -> tuple[list[SubjectInput], list[Skip]]:
    """Plain BOLD files, each with the confounds table of the same subject id.

    A BIDS JSON sidecar next to a BOLD (same stem, ``.json``) is picked up.
    ``rp_*.txt`` tables go to :attr:`SubjectInput.realign`, others to
    :attr:`SubjectInput.confounds`.

    Raises
    ------
    CfhdaskInputError
        A confounds file matching no BOLD, or two with the same subject id.
    """
    confounds = list(confounds or [])
    by_sub: dict[str, str] = {}
    if len(files) == 1 and len(confounds) == 1:
        by_sub[subject_id(files[0])] = confounds[0]
    else:
        for c in confounds:
            sub = subject_id(c)
            if sub in by_sub:
                raise CfhdaskInputError(
                    f"--confounds: {c} and {by_sub[sub]} both belong to subject {sub}")
            by_sub[sub] = c
        unknown = set(by_sub) - {subject_id(f) for f in files}
        if unknown:
            raise CfhdaskInputError(
                "--confounds: no BOLD file for subject(s) "
                + ", ".join(f"{s} ({by_sub[s]})" for s in sorted(unknown)))
    found: list[SubjectInput] = []
    skipped: list[Skip] = []
    for f in files:
        sub = subject_id(f)
        c = by_sub.get(sub)
        if c is None and require_confounds:
            skipped.append(Skip(sub, f"{f}: no confounds file given for subject {sub} (--confounds)"))
            continue
        side = _sidecar_of(f, storage_options)
        found.append(SubjectInput(
            subject=sub, bold=f,
            confounds=c if c is not None and not _is_realign(c) else None,
            realign=c if c is not None and _is_realign(c) else None,
            sidecar=side, extra={"layout": "files"},
        ))
    return _dedupe(found, skipped), skipped


def discover_inputs(
    *,
    bids_derivatives: str | None = None,
    space: str = "MNI152NLin2009cAsym",
    task: str | None = "rest",
    participant_label: Sequence[str] | str | None = None,
    dpabi: str | None = None,
    dpabi_dir: str = "FunImgARCW",
    files: Sequence[str] | None = None,
    confounds: Sequence[str] | None = None,
    tr: float | None = None,
    require_confounds: bool = True,
    storage_options: dict | None = None,
) -> tuple[list[SubjectInput], list[Skip]]:
    """All runs to ingest from one source (fMRIPrep, DPABI or plain files).

    Parameters
    ----------
    bids_derivatives : str, optional
        fMRIPrep output folder.
    space, task, participant_label
        fMRIPrep filters (``participant_label`` with or without ``sub-``;
        also filters DPABI subject folders).
    dpabi : str, optional
        DPABI working folder; ``dpabi_dir`` the preprocessed-image folder
        prefix (``FunImgARCW`` matches ``FunImgARCW*``).
    files, confounds : list of str, optional
        Plain BOLD files and their confounds tables.
    tr : float, optional
        ``--tr``: recorded in every :class:`SubjectInput`.
    require_confounds : bool
        Skip runs without a confounds/realignment table (False when no motion
        regressors are wanted).
    storage_options : dict, optional
        fsspec options (credentials, endpoint) of remote folders and files.

    Returns
    -------
    (inputs, skipped)
        ``skipped`` is a list of (subject, reason) for runs left out.

    Raises
    ------
    CfhdaskInputError
        None or several sources given; a source that holds nothing.
    """
    sources = [s for s in (bids_derivatives, dpabi, files or None) if s]
    if len(sources) != 1:
        raise CfhdaskInputError(
            "give exactly one input source: --bids-derivatives DIR, --dpabi DIR or BOLD files")
    if confounds and not files:
        raise CfhdaskInputError("--confounds pairs tables with BOLD files given on the command line")
    if bids_derivatives:
        found, skipped = discover_fmriprep(
            bids_derivatives, space=space, task=task, participant_label=participant_label,
            require_confounds=require_confounds, storage_options=storage_options)
    elif dpabi:
        found, skipped = discover_dpabi(
            dpabi, dpabi_dir=dpabi_dir, participant_label=participant_label,
            require_confounds=require_confounds, storage_options=storage_options)
    else:
        found, skipped = pair_files(files, confounds, require_confounds=require_confounds,
                                    storage_options=storage_options)
    if tr is not None:
        found = [SubjectInput(i.subject, i.bold, i.confounds, i.realign, i.sidecar, tr, i.extra)
                 for i in found]
    for sub, why in skipped:
        log.warning("skipping %s: %s", sub, why)
    return found, skipped
