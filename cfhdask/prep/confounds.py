"""Nuisance regressors: confound tables, Friston-24, tissue masks and the TR.

Reads the three kinds of confound files users bring and turns them into the
regressors of the paper (section 2.3): 24 head-motion parameters
(Friston-24), white matter, CSF and global signal.

* fMRIPrep ``*_desc-confounds_timeseries.tsv``: tab-separated with a header,
  ``n/a`` for missing values; columns ``trans_x .. rot_z``, their
  ``_derivative1``, ``_power2`` and ``_derivative1_power2`` expansions,
  ``white_matter``, ``csf``, ``global_signal``.  Expansion columns present in
  the table are used as they are (their first-row ``n/a`` becomes 0, as
  fMRIPrep users expect); missing ones are computed.
* DPABI/SPM ``rp_*.txt``: 6 whitespace-separated columns without header, 3
  translations (mm) then 3 rotations (rad), in the order of ``trans_x .. rot_z``.
* plain tables (``.tsv``/``.csv``/``.txt``): with a header naming the columns
  above, or 6 unnamed columns read as the motion parameters.

When WM, CSF or global signal are asked for but absent from the table they are
computed from the data, as DPABI does, as the mean signal inside masks built
from the MNI152 (ICBM 2009a) templates that nilearn ships offline, resampled
to the data grid (linear interpolation; the GM map is the one of
:func:`cfhdask.prep.mask.gm_probability`): white matter = WM probability > 0.9,
CSF = ``brain mask x (1 - GM - WM)`` > 0.7 (nilearn has no CSF map: what is
inside the brain and neither grey nor white matter), global = nilearn's MNI152
brain mask (nearest neighbour) > 0.5.  The thresholds are DPABI's
(``WhiteMask_09``, ``CsfMask_07``, ``BrainMask_05``).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cfhdask.errors import CfhdaskInputError
from cfhdask.io.urls import read_text
from cfhdask.prep.mask import gm_probability

log = logging.getLogger(__name__)

#: The six rigid-body parameters, fMRIPrep names, in DPABI/SPM rp_*.txt order.
MOTION_COLUMNS: tuple[str, ...] = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
#: Tissue signals: fMRIPrep column names, in the order regressors are built.
TISSUE_COLUMNS: tuple[str, ...] = ("white_matter", "csf", "global_signal")
#: Thresholds of the template-based tissue masks (DPABI's).
WM_THRESHOLD, CSF_THRESHOLD, BRAIN_THRESHOLD = 0.9, 0.7, 0.5
#: Agreement (s) under which header and sidecar TR are the same.
TR_TOLERANCE = 1e-3
#: A repetition time above this many seconds is taken for milliseconds and refused.
MAX_TR = 100.0


def friston24_names() -> list[str]:
    """Column names of :func:`friston24`, fMRIPrep style.

    Order: the 6 parameters, their derivatives, the squares of the
    parameters, the squares of the derivatives.
    """
    return (
        list(MOTION_COLUMNS)
        + [f"{c}_derivative1" for c in MOTION_COLUMNS]
        + [f"{c}_power2" for c in MOTION_COLUMNS]
        + [f"{c}_derivative1_power2" for c in MOTION_COLUMNS]
    )


def friston24(motion: np.ndarray) -> np.ndarray:
    """Friston-24 expansion of the 6 rigid-body parameters.

    Parameters
    ----------
    motion : ndarray of shape (T, 6)

    Returns
    -------
    ndarray of shape (T, 24), float64
        ``[R, dR, R**2, dR**2]`` with ``dR[t] = R[t] - R[t-1]`` and
        ``dR[0] = 0`` (backward difference, as fMRIPrep).
    """
    r = np.asarray(motion, dtype=np.float64)
    if r.ndim != 2 or r.shape[1] != 6:
        raise ValueError(f"motion must be (T, 6), got {r.shape}")
    d = np.zeros_like(r)
    d[1:] = np.diff(r, axis=0)
    return np.hstack([r, d, r**2, d**2])


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return tok.lower() in ("n/a", "nan")
    return True


def read_confounds_table(path: str, storage_options: dict | None = None) -> pd.DataFrame:
    """Read an fMRIPrep confounds TSV, a DPABI ``rp_*.txt`` or a plain table.

    Parameters
    ----------
    path : str
        Local path or fsspec URL.
    storage_options : dict, optional
        fsspec options of a remote URL.

    Returns
    -------
    pandas.DataFrame
        One row per volume, float columns; ``n/a`` read as NaN.  A table
        without header of 6 columns gets the names :data:`MOTION_COLUMNS`.

    Raises
    ------
    CfhdaskInputError
        Missing, unreadable or non-numeric file (the message names it).
    """
    text = read_text(path, storage_options, what="confounds file")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise CfhdaskInputError(f"confounds file {path} is empty")
    sep = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else r"\s+")
    first = [t for t in (lines[0].split(sep) if sep != r"\s+" else lines[0].split())]
    has_header = not all(_is_number(t.strip()) for t in first if t.strip())
    try:
        table = pd.read_csv(
            io.StringIO("\n".join(lines)), sep=sep, header=0 if has_header else None,
            na_values=["n/a", "N/A"], engine="python",
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise CfhdaskInputError(f"cannot parse confounds file {path}: {exc}") from exc
    if not has_header:
        if table.shape[1] == 6:
            table.columns = list(MOTION_COLUMNS)
        else:
            table.columns = [f"column_{i}" for i in range(table.shape[1])]
    table.columns = [str(c).strip() for c in table.columns]
    try:
        table = table.apply(pd.to_numeric, errors="raise")
    except (ValueError, TypeError):
        # fMRIPrep tables may carry non-numeric columns we never use: keep numeric ones.
        table = table.apply(pd.to_numeric, errors="coerce")
    return table.astype(np.float64)


@dataclass
class ConfoundSelection:
    """Regressors taken from a confounds table for one subject.

    Attributes
    ----------
    matrix : ndarray of shape (T, k)
        Table regressors (motion, and tissue signals found in the table), all
        volumes, before dropping.
    names : list of str
        Their column names.
    from_data : list of str
        Tissue signals asked for but absent from the table, to be computed
        from the images (subset of :data:`TISSUE_COLUMNS`).
    notes : list of str
        What was filled or computed (for the provenance and the summary).
    """

    matrix: np.ndarray
    names: list[str]
    from_data: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _column(table: pd.DataFrame, name: str, path: str, notes: list[str]) -> np.ndarray:
    """A column as float64; a NaN first row of a derivative column becomes 0."""
    col = table[name].to_numpy(dtype=np.float64).copy()
    if "derivative" in name and col.size and np.isnan(col[0]):
        col[0] = 0.0
        notes.append(f"{name}: first-row n/a set to 0")
    bad = np.flatnonzero(~np.isfinite(col))
    if bad.size:
        raise CfhdaskInputError(
            f"confounds file {path}: column {name!r} has non-finite values at rows "
            f"{bad[:5].tolist()}{'...' if bad.size > 5 else ''}"
        )
    return col


def select_confounds(
    table: pd.DataFrame,
    path: str,
    *,
    n_volumes: int,
    motion: str | None = "friston24",
    wm: bool = True,
    csf: bool = True,
    global_signal: bool = True,
) -> ConfoundSelection:
    """Pick the paper's nuisance regressors out of a confounds table.

    Parameters
    ----------
    table : DataFrame
        From :func:`read_confounds_table`.
    path : str
        The table's file (named in every message).
    n_volumes : int
        Volumes of the BOLD run (before any dropping): the table must have
        exactly one row per volume.
    motion : {"friston24", "6", None}
        Friston-24, the 6 rigid-body parameters, or no motion regressors.
    wm, csf, global_signal : bool
        Tissue signals wanted.

    Returns
    -------
    ConfoundSelection

    Raises
    ------
    CfhdaskInputError
        Wrong number of rows, missing motion columns, non-finite values.
    """
    if len(table) != n_volumes:
        raise CfhdaskInputError(
            f"confounds file {path} has {len(table)} rows but the BOLD run has "
            f"{n_volumes} volumes (one row per volume expected)"
        )
    notes: list[str] = []
    cols: list[np.ndarray] = []
    names: list[str] = []
    if motion not in (None, "none", "6", "friston24"):
        raise CfhdaskInputError(f"--motion: unknown model {motion!r} (friston24, 6 or none)")
    if motion in ("6", "friston24"):
        missing = [c for c in MOTION_COLUMNS if c not in table.columns]
        if missing:
            raise CfhdaskInputError(
                f"confounds file {path} lacks the motion columns {missing} "
                f"(expected {list(MOTION_COLUMNS)}; found {list(table.columns)[:12]})"
            )
        base = np.column_stack([_column(table, c, path, notes) for c in MOTION_COLUMNS])
        if motion == "6":
            cols.append(base)
            names += list(MOTION_COLUMNS)
        else:
            computed = friston24(base)
            f24 = friston24_names()
            n_table = 0
            for j, name in enumerate(f24):
                if name in table.columns:
                    cols.append(_column(table, name, path, notes)[:, None])
                    n_table += 1
                else:
                    cols.append(computed[:, j : j + 1])
            names += f24
            if n_table < 24:
                notes.append(f"Friston-24: {24 - n_table} expansion columns computed")
    from_data: list[str] = []
    for name, wanted in zip(TISSUE_COLUMNS, (wm, csf, global_signal), strict=True):
        if not wanted:
            continue
        if name in table.columns:
            cols.append(_column(table, name, path, notes)[:, None])
            names.append(name)
        else:
            from_data.append(name)
    if from_data:
        notes.append(f"{', '.join(from_data)} computed from the images (MNI template masks)")
    matrix = np.hstack(cols) if cols else np.zeros((n_volumes, 0))
    return ConfoundSelection(matrix=matrix, names=names, from_data=from_data, notes=notes)


# --------------------------------------------------------------------------- TR


def sidecar_tr(path: str, storage_options: dict | None = None) -> float | None:
    """``RepetitionTime`` (s) of a BIDS JSON sidecar; None when absent.

    Raises
    ------
    CfhdaskInputError
        Unreadable JSON or a non-positive/non-numeric value.
    """
    try:
        meta = json.loads(read_text(path, storage_options, what="sidecar"))
    except json.JSONDecodeError as exc:
        raise CfhdaskInputError(f"sidecar {path} is not valid JSON: {exc}") from exc
    tr = meta.get("RepetitionTime") if isinstance(meta, dict) else None
    if tr is None:
        return None
    try:
        tr = float(tr)
    except (TypeError, ValueError) as exc:
        raise CfhdaskInputError(f"sidecar {path}: RepetitionTime {tr!r} is not a number") from exc
    if not tr > 0:
        raise CfhdaskInputError(f"sidecar {path}: RepetitionTime {tr} must be positive")
    return check_tr(tr, f"sidecar {path}: RepetitionTime")


def check_tr(tr: float, where: str) -> float:
    """``tr`` (seconds) when plausible; a TR above :data:`MAX_TR` s looks like milliseconds.

    Raises
    ------
    CfhdaskInputError
        Naming ``where`` the value came from, e.g. ``--tr`` or a sidecar.
    """
    tr = float(tr)
    if tr > MAX_TR:
        raise CfhdaskInputError(
            f"{where} {tr:g}: a repetition time above {MAX_TR:g} s looks like milliseconds; "
            f"give it in seconds (e.g. --tr {tr / 1000:g})")
    return tr


def check_filter(tr: float, high_pass: float | None, low_pass: float | None, *,
                 bold: str, tr_source: str | None = None) -> None:
    """A cutoff at or above Nyquist (``1 / (2 TR)``) is an error, not a filter silently skipped.

    Raises
    ------
    CfhdaskInputError
        Naming the run, its TR (and where it came from), Nyquist and the cutoff.
    """
    nyquist = 0.5 / float(tr)
    for flag, cut in (("--low-pass", low_pass), ("--high-pass", high_pass)):
        if cut is not None and cut >= nyquist:
            src = f" ({tr_source})" if tr_source else ""
            raise CfhdaskInputError(
                f"{bold}: {flag} {cut:g} Hz is at or above the Nyquist frequency "
                f"{nyquist:.4g} Hz of TR {float(tr):g} s{src}; it cannot be applied (choose a "
                f"cutoff below {nyquist:.4g} Hz, or check the TR)")


def resolve_tr(
    *,
    bold: str,
    header: float | None,
    sidecar: float | None = None,
    sidecar_path: str | None = None,
    user: float | None = None,
) -> tuple[float, str]:
    """The TR to filter with, and where it came from.

    ``--tr`` wins over everything; otherwise the sidecar wins over the NIfTI
    header, with a warning naming both values when they disagree.

    Returns
    -------
    (tr, source) with source in {"--tr", "sidecar", "header"}

    Raises
    ------
    CfhdaskInputError
        No TR anywhere (asks for ``--tr``), or a non-positive ``--tr``.
    """
    if user is not None:
        if not user > 0:
            raise CfhdaskInputError(f"--tr {user}: must be positive (seconds)")
        check_tr(user, "--tr")
        for val, where in ((sidecar, sidecar_path), (header, f"the header of {bold}")):
            if val is not None and abs(val - user) > TR_TOLERANCE:
                log.warning("--tr %.4g s overrides TR %.4g s in %s", user, val, where)
        return float(user), "--tr"
    if sidecar is not None:
        if header is not None and abs(header - sidecar) > TR_TOLERANCE:
            log.warning(
                "TR disagrees: %.4g s in sidecar %s vs %.4g s in the header of %s; "
                "using the sidecar's (give --tr to choose)", sidecar, sidecar_path, header, bold,
            )
        return float(sidecar), "sidecar"
    if header is not None:
        return check_tr(header, f"the NIfTI header of {bold}: TR"), "header"
    where = f" nor in {sidecar_path}" if sidecar_path else ""
    raise CfhdaskInputError(
        f"no repetition time for {bold}: not in its NIfTI header{where}; give it with --tr SECONDS"
    )


def tr_disagreement(header: float | None, sidecar: float | None) -> bool:
    """Whether a header and a sidecar TR both exist and differ."""
    return header is not None and sidecar is not None and abs(header - sidecar) > TR_TOLERANCE


# ------------------------------------------------------------------ tissue masks


@functools.lru_cache(maxsize=8)
def _tissue_masks_cached(shape: tuple[int, int, int], affine_key: tuple) -> np.ndarray:
    from nilearn import datasets, image

    affine = np.asarray(affine_key, dtype=np.float64).reshape(4, 4)

    def to_grid(img, interpolation):
        out = image.resample_img(
            img, target_affine=affine, target_shape=shape, interpolation=interpolation,
            force_resample=True, copy_header=True,
        )
        return np.asarray(out.get_fdata(dtype=np.float32))

    try:
        gm = gm_probability(shape, affine)
    except Exception as exc:  # nilearn BoundingBoxError: the grid misses the template
        log.debug("tissue masks: grid outside the MNI templates (%s)", exc)
        return np.zeros((3, *shape), dtype=bool)
    try:
        wm = to_grid(datasets.load_mni152_wm_template(resolution=1), "continuous")
        brain = to_grid(datasets.load_mni152_brain_mask(resolution=1), "nearest")
    except Exception as exc:  # pragma: no cover - same grids as above
        log.debug("tissue masks: grid outside the MNI templates (%s)", exc)
        return np.zeros((3, *shape), dtype=bool)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * (brain > BRAIN_THRESHOLD)
    return np.stack([wm > WM_THRESHOLD, csf > CSF_THRESHOLD, brain > BRAIN_THRESHOLD])


def tissue_masks(grid_shape, affine: np.ndarray, which=TISSUE_COLUMNS) -> np.ndarray:
    """Template masks on a data grid for the tissue signals in ``which``.

    Parameters
    ----------
    grid_shape : tuple of 3 ints
    affine : ndarray (4, 4)
    which : sequence of names from :data:`TISSUE_COLUMNS`

    Returns
    -------
    ndarray of shape (len(which), X, Y, Z), bool
        white_matter: WM > 0.9; csf: brain x (1 - GM - WM) > 0.7;
        global_signal: brain mask > 0.5.  Cached per grid.
    """
    key = tuple(np.round(np.asarray(affine, dtype=np.float64).ravel(), 6).tolist())
    masks = _tissue_masks_cached(tuple(int(s) for s in grid_shape[:3]), key)
    return masks[[TISSUE_COLUMNS.index(w) for w in which]]


def check_tissue_masks(masks: np.ndarray, which, bold: str) -> None:
    """Error naming ``bold`` when a template mask has no voxel on its grid."""
    for m, name in zip(masks, which, strict=True):
        if not m.any():
            raise CfhdaskInputError(
                f"{bold}: the MNI {name} mask has no voxel on this image's grid (is it in MNI "
                f"space?); give a confounds table with a {name!r} column or switch it off"
            )


def file_label(path: str | None) -> str:
    """Base name of a path or URL, for tables."""
    return os.path.basename(path.rstrip("/")) if path else "-"
