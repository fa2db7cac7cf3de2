"""Denoising one subject as a Dask graph: the ``prepare`` step of ingest.

The paper's order (section 2.3) is smooth -> regress -> filter, after dropping
the first volumes; :class:`DenoiseParams` makes every step optional and the
order configurable.  Memory stays bounded by splitting the run two ways:

* **volume phase** (reading, tissue signals, smoothing) needs whole volumes:
  the 4D image is read in blocks of volumes (one block per ~128 MiB of
  float32 volumes for ``.nii``; a single block decompressed batch by batch for
  ``.nii.gz``, which cannot be read from the middle).  Each block computes the
  WM/CSF/global means from the raw volumes (when the confounds table lacks
  them), smooths, and keeps only the voxels needed later;
* **series phase** (detrend, regression, band-pass) needs whole time axes:
  the masked series are explicitly rechunked to (voxel chunk, all volumes)
  and each block is cleaned with the full confound matrix.

Only the store's voxels (the grey-matter mask) go through the series phase
when smoothing comes first (the paper's order).  When smoothing comes after a
series step, the series phase runs on the store's voxels plus the MNI brain
mask (voxels outside both are zero when smoothing), then the result is
rechunked back to volumes to be smoothed.

Detrending (``detrend=True``) is applied to the series at the start of the
first series phase, and to the confounds before regression, as
:func:`nilearn.signal.clean` does.  The ``"regress"`` step regresses the
(detrended, z-scored) confounds out; ``"filter"`` band-passes.  The combined
step ``"clean"`` is nilearn's ``signal.clean``: band-pass signals *and*
confounds, then regress (Lindquist et al. 2018), use it in place of
``"regress", "filter"``.  Each step equals nilearn to 1e-5 (tests).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
from pydantic import Field, ValidationError, field_validator

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import SubjectInput
from cfhdask.io.nifti import NiftiInfo, open_image
from cfhdask.prep import confounds as conf
from cfhdask.prep import denoise as kern
from cfhdask.settings import PreprocessingSettings, error_message, settings

log = logging.getLogger(__name__)

#: Target bytes of float32 volumes one read block holds.
TIME_BLOCK_BYTES = 128 * 2**20


class DenoiseParams(PreprocessingSettings):
    """What denoising does (recorded in the store's provenance).

    The fields and their defaults are those of
    :class:`cfhdask.settings.PreprocessingSettings` (the paper's pipeline),
    plus ``tr``; ``motion`` is ``None`` for no motion regressors.  A bad value
    is a :class:`~cfhdask.errors.CfhdaskInputError` naming the option.

    Attributes
    ----------
    tr : float or None
        Repetition time override (``--tr``), seconds.
    """

    motion: Literal["friston24", "6"] | None = "friston24"
    tr: float | None = Field(None, gt=0.0, description="Repetition time override (s).")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise CfhdaskInputError(error_message(exc, style="cli")) from None

    @field_validator("motion", mode="before")
    @classmethod
    def _none(cls, v: Any) -> Any:
        return None if v == "none" else v

    @field_validator("order", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    @classmethod
    def from_settings(cls, section: PreprocessingSettings | None = None,
                      **overrides: Any) -> DenoiseParams:
        """The current (or given) preprocessing settings with ``overrides`` (None ignored)."""
        base = (section or settings().preprocessing).model_dump()
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    @property
    def wants_regressors(self) -> bool:
        """Whether any nuisance regressor is asked for."""
        return bool(self.motion or self.wm or self.csf or self.global_signal)

    @property
    def wants_filter(self) -> bool:
        """Whether a band/high/low-pass cutoff is set."""
        return self.high_pass is not None or self.low_pass is not None

    @property
    def tissue(self) -> list[str]:
        """Tissue signals asked for, fMRIPrep names."""
        flags = (self.wm, self.csf, self.global_signal)
        return [n for n, f in zip(conf.TISSUE_COLUMNS, flags, strict=True) if f]

    def steps(self, n_regressors: int | None = None) -> list[str]:
        """Steps that actually run, in order.

        ``smooth`` needs a FWHM; ``regress`` regressors (``n_regressors`` > 0
        when known); ``filter`` a cutoff; ``clean`` either.
        """
        has_reg = self.wants_regressors if n_regressors is None else n_regressors > 0
        out = []
        for s in self.order:
            if s == "smooth" and self.smoothing_fwhm:
                out.append(s)
            elif (s == "regress" and has_reg) or (s == "filter" and self.wants_filter) or (
                    s == "clean" and (has_reg or self.wants_filter)):
                out.append(s)
        return out

    def to_dict(self) -> dict:
        """JSON-able parameters."""
        return self.model_dump(exclude={"denoise"})


@dataclass
class SubjectPlan:
    """Everything checked about one run before any data is read.

    Attributes
    ----------
    subject, bold : str
    n_volumes : int
        Volumes in the image; ``n_kept`` after dropping ``n_dropped``.
    tr : float or None
        Repetition time and ``tr_source`` ("--tr", "sidecar", "header").
    confounds_file : str or None
        Table the regressors come from.
    table : ndarray (n_kept, k)
        Table regressors after dropping; ``names`` their columns.
    from_data : list of str
        Tissue signals computed from the images.
    steps : list of str
        Steps that run.
    notes : list of str
        Fills, computed columns, TR disagreements.
    """

    subject: str
    bold: str
    n_volumes: int
    n_dropped: int
    tr: float | None
    tr_source: str | None
    confounds_file: str | None
    table: np.ndarray
    names: list[str]
    from_data: list[str]
    steps: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def n_kept(self) -> int:
        """Volumes after dropping."""
        return self.n_volumes - self.n_dropped

    @property
    def regressors(self) -> list[str]:
        """All regressor names (table ones, then image-derived ones)."""
        return [*self.names, *self.from_data]


def plan_subject(
    inp: SubjectInput,
    header: NiftiInfo,
    params: DenoiseParams,
    *,
    storage_options: dict | None = None,
) -> SubjectPlan:
    """Validate one run's inputs and decide what denoising does with them.

    Reads the confounds table and the sidecar (not the image data).

    Raises
    ------
    CfhdaskInputError
        Not 4D, too few volumes, missing confounds/motion columns, wrong row
        count, no TR when filtering, template masks off the grid; the message
        names the file.
    """
    if len(header.shape) != 4:
        raise CfhdaskInputError(f"{inp.bold}: expected a 4D BOLD image, got shape {header.shape}")
    n_vol, drop = header.n_volumes, int(params.drop_volumes)
    table_file = inp.confounds or inp.realign
    notes: list[str] = []
    if params.wants_regressors and table_file is None and params.motion:
        raise CfhdaskInputError(
            f"{inp.bold}: no confounds table (fMRIPrep *_desc-confounds_timeseries.tsv, DPABI "
            "rp_*.txt or --confounds) for the motion regressors; give one or use --motion none")
    if table_file is not None and params.wants_regressors:
        table = conf.read_confounds_table(table_file, storage_options)
        sel = conf.select_confounds(
            table, table_file, n_volumes=n_vol, motion=params.motion,
            wm=params.wm, csf=params.csf, global_signal=params.global_signal)
        matrix, names, from_data = sel.matrix[drop:], sel.names, sel.from_data
        notes += sel.notes
    else:
        matrix, names, from_data = np.zeros((n_vol - drop, 0)), [], list(params.tissue)
    if from_data:
        masks = conf.tissue_masks(header.grid_shape, header.affine, from_data)
        conf.check_tissue_masks(masks, from_data, inp.bold)
    steps = params.steps(len(names) + len(from_data))
    filtering = any(s in ("filter", "clean") for s in steps) and params.wants_filter
    side_tr = conf.sidecar_tr(inp.sidecar, storage_options) if inp.sidecar else None
    user_tr = params.tr if params.tr is not None else inp.tr
    if conf.tr_disagreement(header.tr, side_tr):
        notes.append(f"TR {side_tr} s in {inp.sidecar} vs {header.tr} s in the header")
    tr, tr_source = None, None
    if filtering or user_tr is not None or side_tr is not None or header.tr is not None:
        tr, tr_source = conf.resolve_tr(bold=inp.bold, header=header.tr, sidecar=side_tr,
                                        sidecar_path=inp.sidecar, user=user_tr)
    n_kept = n_vol - drop
    need = 2 if (params.detrend or "regress" in steps) else 1
    if filtering:
        conf.check_filter(tr, params.high_pass, params.low_pass, bold=inp.bold,
                          tr_source=tr_source)
        need = max(need, kern.min_volumes_for_filter(
            kern.butterworth_sos(tr, params.high_pass, params.low_pass)))
    if n_kept < need:
        raise CfhdaskInputError(
            f"{inp.bold}: {n_vol} volumes, {n_kept} after dropping {drop}; "
            f"denoising ({', '.join(steps)}) needs at least {need}")
    return SubjectPlan(
        subject=inp.subject, bold=inp.bold, n_volumes=n_vol, n_dropped=drop, tr=tr,
        tr_source=tr_source, confounds_file=table_file, table=matrix, names=names,
        from_data=from_data, steps=steps, notes=notes)


# ----------------------------------------------------------------- block tasks


def _read_block(url: str, start: int, stop: int, batch: int, sel_ijk: np.ndarray,
                n_check: int, fwhm: float | None, affine: np.ndarray,
                masks: np.ndarray | None, storage_options: dict | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Volumes ``start:stop`` -> series (voxels of ``sel_ijk``, time) float32 and
    tissue means (time, n_masks) float64.

    Tissue means come from the raw volumes (non-finite values as 0), then the
    volumes are smoothed (when ``fwhm``) and the selected voxels gathered.
    """
    n_sel = len(sel_ijk)
    m = 0 if masks is None else len(masks)
    out = np.empty((n_sel, stop - start), dtype=np.float32)
    means = np.empty((stop - start, m), dtype=np.float64)
    i, j, k = sel_ijk[:, 0], sel_ijk[:, 1], sel_ijk[:, 2]
    with open_image(url, storage_options) as img:
        for b0 in range(start, stop, batch):
            b1 = min(stop, b0 + batch)
            try:
                vols = np.array(img.dataobj[..., b0:b1], dtype=np.float32)
            except Exception as exc:
                raise CfhdaskInputError(
                    f"{url}: unreadable or truncated data (volumes {b0}-{b1 - 1}): {exc}"
                ) from exc
            bad = ~np.isfinite(vols[i[:n_check], j[:n_check], k[:n_check]])
            if bad.any():
                raise CfhdaskInputError(
                    f"{url}: {int(bad.sum())} NaN/Inf values inside the mask "
                    f"(volumes {b0}-{b1 - 1})")
            vols[~np.isfinite(vols)] = 0.0
            if m:
                means[b0 - start:b1 - start] = kern.masked_means(vols, masks)
            if fwhm:
                vols = kern.smooth_volumes(vols, affine, fwhm)
            out[:, b0 - start:b1 - start] = vols[i, j, k, :]
    return out, means


def _smooth_block(series: np.ndarray, in_ijk: np.ndarray, out_ijk: np.ndarray,
                  grid_shape: tuple[int, int, int], affine: np.ndarray,
                  fwhm: float) -> np.ndarray:
    """(voxels, t) series -> volumes (zeros elsewhere) -> smoothed -> (out voxels, t)."""
    vols = np.zeros((*grid_shape, series.shape[1]), dtype=np.float32)
    vols[in_ijk[:, 0], in_ijk[:, 1], in_ijk[:, 2], :] = series
    vols = kern.smooth_volumes(vols, affine, fwhm)
    return vols[out_ijk[:, 0], out_ijk[:, 1], out_ijk[:, 2], :]


def series_block(series: np.ndarray, confounds: np.ndarray, *, steps: Sequence[str],
                 detrend_first: bool, detrend: bool, tr: float | None,
                 high_pass: float | None, low_pass: float | None) -> np.ndarray:
    """Series steps on a (voxels, time) block with the full (time, k) confounds.

    Parameters
    ----------
    series : ndarray (n, T)
    confounds : ndarray (T, k)
    steps : sequence of {"regress", "filter", "clean"}
    detrend_first : bool
        Detrend the series before the steps (first series phase).
    detrend : bool
        Detrend the confounds before regression (nilearn semantics).
    tr, high_pass, low_pass
        Filter settings.

    Returns
    -------
    ndarray (n, T) float32
    """
    s = np.asarray(series, dtype=np.float64)
    if detrend_first:
        s = kern.detrend_linear(s, axis=-1)
    sos = kern.butterworth_sos(tr, high_pass, low_pass) if (
        high_pass is not None or low_pass is not None) and tr else None
    for step in steps:
        if step == "regress" and confounds.shape[1]:
            s = kern.regress_out(s, kern.confound_basis(confounds, detrend=detrend))
        elif step == "filter":
            s = kern.bandpass(s, sos, axis=-1)
        elif step == "clean":
            s = kern.clean_series(s, confounds if confounds.shape[1] else None, tr=tr,
                                  detrend=detrend, high_pass=high_pass, low_pass=low_pass)
    return s.astype(np.float32)


# ----------------------------------------------------------------------- graph


def _phases(steps: Sequence[str], detrend: bool) -> list[tuple[str, list[str]]]:
    phases: list[tuple[str, list[str]]] = []
    for st in steps:
        if st == "smooth":
            phases.append(("volume", [st]))
        elif phases and phases[-1][0] == "series":
            phases[-1][1].append(st)
        else:
            phases.append(("series", [st]))
    if detrend and not any(p[0] == "series" for p in phases):
        phases.append(("series", []))
    return phases


def _wide_voxels(store_ijk: np.ndarray, grid_shape, affine) -> np.ndarray:
    """Store voxels first, then the other voxels of the MNI brain mask."""
    brain = conf.tissue_masks(grid_shape, affine, ["global_signal"])[0].copy()
    brain[store_ijk[:, 0], store_ijk[:, 1], store_ijk[:, 2]] = False
    extra = np.argwhere(brain).astype(store_ijk.dtype)
    return np.concatenate([store_ijk, extra], axis=0)


def denoise_graph(
    plan: SubjectPlan,
    header: NiftiInfo,
    store_ijk: np.ndarray,
    params: DenoiseParams,
    *,
    storage_options: dict | None = None,
    voxel_chunk: int | None = None,
    time_block: int | None = None,
) -> da.Array:
    """Lazy denoised series of one run on the store's voxels.

    Parameters
    ----------
    plan : SubjectPlan
        From :func:`plan_subject`.
    header : NiftiInfo
        The image header (grid, affine, compression).
    store_ijk : ndarray (n_voxels, 3)
        Store voxels, in store order.
    params : DenoiseParams
    storage_options : dict, optional
        fsspec options for the image.
    voxel_chunk : int, optional
        Voxels per block of the series phase (default ``cfhdask.store.voxel-chunk``).
    time_block : int, optional
        Volumes per read block (default: ~128 MiB of float32 volumes).

    Returns
    -------
    dask.array.Array (n_voxels, n_kept) float32
    """
    store_ijk = np.asarray(store_ijk, dtype=np.int64)
    grid = header.grid_shape
    affine = header.affine
    vchunk = int(voxel_chunk or settings().store.voxel_chunk)
    vol_bytes = int(np.prod(grid)) * 4
    tb = int(time_block or max(1, TIME_BLOCK_BYTES // vol_bytes))
    phases = _phases(plan.steps, params.detrend)
    fwhm = params.smoothing_fwhm

    def needs_wide(after: int) -> bool:
        return any(p[0] == "volume" for p in phases[after:])

    # -- read phase (fuses a leading smoothing step)
    first_smooth = bool(phases) and phases[0][0] == "volume"
    rest = phases[1:] if first_smooth else phases
    sel = _wide_voxels(store_ijk, grid, affine) if needs_wide(1 if first_smooth else 0) \
        else store_ijk
    masks = (conf.tissue_masks(grid, affine, plan.from_data) if plan.from_data else None)
    m = 0 if masks is None else len(masks)
    start, stop = plan.n_dropped, plan.n_volumes
    per_block = stop - start if header.compressed else tb
    blocks, tissue = [], []
    # one graph key each for the (large) voxel lists and masks, shared by all blocks
    sel_key = dask.delayed(sel, pure=True)
    masks_key = dask.delayed(masks, pure=True) if masks is not None else None
    for b0 in range(start, stop, per_block):
        b1 = min(stop, b0 + per_block)
        part = _delayed(_read_block, "denoise-read", header.url, b0, b1, tb, sel_key,
                        len(store_ijk), fwhm if first_smooth else None, affine, masks_key,
                        storage_options)
        blocks.append(da.from_delayed(part[0], shape=(len(sel), b1 - b0), dtype=np.float32))
        tissue.append(da.from_delayed(part[1], shape=(b1 - b0, m), dtype=np.float64))
    x = da.concatenate(blocks, axis=1)
    table = da.from_array(plan.table.astype(np.float64), chunks=-1)
    if m:
        cmat = da.concatenate([table, da.concatenate(tissue, axis=0)], axis=1)
    else:
        cmat = table
    cmat = cmat.rechunk((-1, -1))
    first_series = True
    for idx, (kind, steps) in enumerate(rest):
        if kind == "series":
            x = x.rechunk({0: vchunk, 1: -1})
            x = da.blockwise(
                series_block, "vt", x, "vt", cmat, "tk", concatenate=True, dtype=np.float32,
                steps=tuple(steps), detrend_first=params.detrend and first_series,
                detrend=params.detrend, tr=plan.tr, high_pass=params.high_pass,
                low_pass=params.low_pass)
            first_series = False
        else:
            after = (1 if first_smooth else 0) + idx + 1
            out_sel = sel if needs_wide(after) else store_ijk
            x = x.rechunk({0: -1, 1: tb})
            x = x.map_blocks(_smooth_block, dask.delayed(sel, pure=True),
                             dask.delayed(out_sel, pure=True), grid, affine, fwhm,
                             chunks=((len(out_sel),), x.chunks[1]), dtype=np.float32)
            sel = out_sel
    if len(sel) != len(store_ijk):
        x = x[: len(store_ijk)]
    return x.rechunk({0: vchunk, 1: -1}).astype(np.float32)


def _delayed(func, prefix: str, *args):
    token = dask.base.tokenize(*args)
    return dask.delayed(func, pure=True)(*args, dask_key_name=f"{prefix}-{token}")


# ---------------------------------------------------------------------- prepare


def prepare_series(inp: SubjectInput, store_info, params: DenoiseParams | None = None
                   ) -> tuple[da.Array, dict]:
    """The denoising ``prepare`` hook of :func:`cfhdask.prep.ingest.ingest`.

    Parameters
    ----------
    inp : SubjectInput
        The run (BOLD, confounds/realignment table, sidecar, TR).
    store_info : cfhdask.prep.ingest.StoreInfo
        Store voxels (``ijk``), grid, the validated image ``header`` and
        ``storage_options``; its ``drop_volumes`` must equal
        ``params.drop_volumes``.
    params : DenoiseParams, optional
        Default: the paper's pipeline.

    Returns
    -------
    series : dask.array.Array (n_voxels, n_kept) float32
    attrs : dict
        ``tr``, ``n_volumes``, ``n_dropped`` and ``preprocessing`` (parameters,
        steps run, regressors, TR source, notes).

    Raises
    ------
    CfhdaskInputError
        Any problem with this subject's inputs (names the file).
    """
    params = params or DenoiseParams()
    drop = getattr(store_info, "drop_volumes", params.drop_volumes)
    if int(drop) != int(params.drop_volumes):
        raise ValueError(f"ingest drops {drop} volumes but DenoiseParams.drop_volumes is "
                         f"{params.drop_volumes}: pass the same value to both")
    so = getattr(store_info, "storage_options", None) or None
    header = store_info.header
    plan = plan_subject(inp, header, params, storage_options=so)
    series = denoise_graph(plan, header, np.asarray(store_info.ijk), params, storage_options=so)
    return series, plan_attrs(plan, params)


def plan_attrs(plan: SubjectPlan, params: DenoiseParams) -> dict:
    """Subject attributes recorded in the store for a denoised run."""
    return {
        "tr": plan.tr,
        "n_volumes": plan.n_kept,
        "n_dropped": plan.n_dropped,
        "preprocessing": {
            "pipeline": "cfhdask.denoise",
            "parameters": params.to_dict(),
            "steps": list(plan.steps),
            "regressors": plan.regressors,
            "regressors_from_images": list(plan.from_data),
            "tissue_masks": {
                "white_matter": f"MNI152 WM probability > {conf.WM_THRESHOLD}",
                "csf": f"MNI152 brain x (1 - GM - WM) > {conf.CSF_THRESHOLD}",
                "global_signal": f"MNI152 brain mask > {conf.BRAIN_THRESHOLD}",
            } if plan.from_data else {},
            "confounds_file": plan.confounds_file,
            "tr_source": plan.tr_source,
            "notes": list(plan.notes),
        },
    }


def make_prepare(params: DenoiseParams):
    """``prepare(inp, info)`` for :func:`cfhdask.prep.ingest.ingest` with fixed parameters."""
    def prepare(inp: SubjectInput, store_info) -> tuple[da.Array, dict]:
        return prepare_series(inp, store_info, params)

    prepare.params = params  # type: ignore[attr-defined]
    return prepare
