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
  and each block is cleaned with the full confound matrix.  Every series step
  is linear along time: for runs of up to :data:`OPERATOR_MAX_T` volumes the
  steps are applied once to the identity, giving one (T, T) matrix per run,
  and each block is cleaned by one GEMM with it.

The volume phase reads each file once, ``READ_BATCH_BYTES`` of volumes at a
time (:func:`cfhdask.io.nifti.iter_volume_batches`: ISA-L gzip, scaling in one
pass), and smooths each volume in cache, on the bounding box of the voxels
kept, the last pass at those voxels only
(:class:`cfhdask.prep.denoise.SmoothGather`).  ``benchmarks/bench_ingest.py``
compares the whole with the previous pipeline and with nilearn.

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
``"regress", "filter"``.  Each step equals nilearn to 1e-5 (tests).  The
band-pass is nilearn's Butterworth or, with ``filter="ideal"``, DPABI's ideal
FFT filter (:func:`cfhdask.prep.denoise.ideal_bandpass`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
from pydantic import Field, ValidationError, field_validator

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import SubjectInput
from cfhdask.io.nifti import NiftiInfo, iter_volume_batches
from cfhdask.prep import confounds as conf
from cfhdask.prep import denoise as kern
from cfhdask.settings import PreprocessingSettings, error_message, settings

log = logging.getLogger(__name__)

#: Target bytes of float32 volumes one read block (task) of a ``.nii`` holds.
TIME_BLOCK_BYTES = 128 * 2**20
#: Target bytes of float32 volumes converted at once inside a read block (they
#: stay in cache while they are smoothed and gathered).
READ_BATCH_BYTES = 16 * 2**20
#: Longest series whose steps run as one (T, T) operator, a GEMM: ~3x faster
#: than the steps one by one at T = 220, even between about 600 and 900.
OPERATOR_MAX_T = 600


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
    if filtering and params.filter == "butterworth":
        need = max(need, kern.min_volumes_for_filter(
            kern.butterworth_sos(tr, params.high_pass, params.low_pass)))
    if n_kept < need:
        raise CfhdaskInputError(
            f"{inp.bold}: {n_vol} volumes, {n_kept} after dropping {drop}; "
            f"denoising ({', '.join(steps)}) needs at least {need}")
    if filtering and params.filter == "ideal" and not kern.ideal_rank(
            n_kept, tr, params.high_pass, params.low_pass):
        p = kern.ideal_padded_length(n_kept)
        raise CfhdaskInputError(
            f"{inp.bold}: the ideal filter's band {band_label(params)} holds no frequency bin "
            f"at TR {tr:g} s and T = {n_kept} volumes (zero-padded to {p}: bins every "
            f"{1.0 / (p * tr):.4g} Hz); widen the band or use the butterworth filter")
    return SubjectPlan(
        subject=inp.subject, bold=inp.bold, n_volumes=n_vol, n_dropped=drop, tr=tr,
        tr_source=tr_source, confounds_file=table_file, table=matrix, names=names,
        from_data=from_data, steps=steps, notes=notes)


# ----------------------------------------------------------------- block tasks


def _read_block(url: str, start: int, stop: int, batch: int, sel_ijk: np.ndarray,
                n_check: int, fwhm: float | None, affine: np.ndarray,
                masks: np.ndarray | None, storage_options: dict | None,
                float_data: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Volumes ``start:stop`` -> series (voxels of ``sel_ijk``, time) float32 and
    tissue means (time, n_masks) float64.

    One pass over the file (:func:`cfhdask.io.nifti.iter_volume_batches`),
    ``batch`` volumes at a time; per batch: tissue means from the raw volumes
    (non-finite values as 0), then smoothing (when ``fwhm``) on the bounding
    box of the selected voxels, one volume at a time, gathered at once.
    Only float data (``float_data``) can hold NaN/Inf: they are looked for
    (an error inside the first ``n_check`` voxels, zeros elsewhere).
    """
    n_sel = len(sel_ijk)
    m = 0 if masks is None else len(masks)
    out = np.empty((n_sel, stop - start), dtype=np.float32)
    means = np.empty((stop - start, m), dtype=np.float64)
    flat = smoother = None
    for b0, vols in iter_volume_batches(url, start, stop, batch, storage_options):
        b1 = b0 + vols.shape[3]
        planes = vols.reshape(-1, vols.shape[3], order="F")  # a view: (grid voxels, t)
        if flat is None:
            flat = np.ravel_multi_index(tuple(sel_ijk.T), vols.shape[:3], order="F")
            smoother = kern.SmoothGather.plan(vols.shape[:3], affine, fwhm, sel_ijk) \
                if fwhm else None
        bad = ~np.isfinite(planes) if float_data else None
        if bad is not None and bad.any():
            n_bad = int(bad[flat[:n_check]].sum())
            if n_bad:
                raise CfhdaskInputError(
                    f"{url}: {n_bad} NaN/Inf values inside the mask (volumes {b0}-{b1 - 1})")
            planes[bad] = 0.0
        if m:
            means[b0 - start:b1 - start] = kern.masked_means(vols, masks)
        out[:, b0 - start:b1 - start] = smoother(vols) if smoother else planes[flat]
    return out, means


def _smooth_block(series: np.ndarray, in_ijk: np.ndarray, out_ijk: np.ndarray,
                  grid_shape: tuple[int, int, int], affine: np.ndarray,
                  fwhm: float) -> np.ndarray:
    """(voxels, t) series -> volumes (zeros elsewhere) -> smoothed -> (out voxels, t)."""
    vols = np.zeros((*grid_shape, series.shape[1]), dtype=np.float32, order="F")
    vols[in_ijk[:, 0], in_ijk[:, 1], in_ijk[:, 2], :] = series
    return kern.smooth_gather(vols, affine, fwhm, out_ijk)


def _series_steps(s: np.ndarray, confounds: np.ndarray, *, steps: Sequence[str],
                  detrend_first: bool, detrend: bool, tr: float | None,
                  high_pass: float | None, low_pass: float | None, filter: str
                  ) -> np.ndarray:
    """The series steps, in order, on float64 (n, T) series (each step linear in ``s``)."""
    if detrend_first:
        s = kern.detrend_linear(s, axis=-1)
    band = kern.band_filter(tr, high_pass, low_pass, filter) if tr else None
    for step in steps:
        if step == "regress" and confounds.shape[1]:
            s = kern.regress_out(s, kern.confound_basis(confounds, detrend=detrend))
        elif step == "filter" and band is not None:
            s = band(s, axis=-1)
        elif step == "clean":
            s = kern.clean_series(s, confounds if confounds.shape[1] else None, tr=tr,
                                  detrend=detrend, high_pass=high_pass, low_pass=low_pass,
                                  filter=filter)
    return s


def series_block(series: np.ndarray, confounds: np.ndarray, *, steps: Sequence[str],
                 detrend_first: bool, detrend: bool, tr: float | None,
                 high_pass: float | None, low_pass: float | None,
                 filter: str = "butterworth") -> np.ndarray:
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
    tr, high_pass, low_pass, filter
        Filter settings (``filter``: "butterworth" or "ideal").

    Returns
    -------
    ndarray (n, T) float32
    """
    return _series_steps(np.asarray(series, dtype=np.float64), confounds, steps=steps,
                         detrend_first=detrend_first, detrend=detrend, tr=tr,
                         high_pass=high_pass, low_pass=low_pass,
                         filter=filter).astype(np.float32)


def series_operator(confounds: np.ndarray, *, n_time: int, **steps: Any) -> np.ndarray:
    """The (T, T) float64 matrix ``A`` with ``series_block(x, confounds, **steps) == x @ A``.

    The steps applied to the identity (:func:`cfhdask.prep.denoise.time_operator`).
    """
    return kern.time_operator(partial(_series_steps, confounds=confounds, **steps), n_time)


def apply_operator(series: np.ndarray, operator: np.ndarray) -> np.ndarray:
    """``series @ operator`` in float64 (one GEMM), as float32."""
    return (np.asarray(series, dtype=np.float64) @ operator).astype(np.float32)


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
    batch = min(tb, max(1, READ_BATCH_BYTES // vol_bytes))
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
        part = _delayed(_read_block, "denoise-read", header.url, b0, b1, batch, sel_key,
                        len(store_ijk), fwhm if first_smooth else None, affine, masks_key,
                        storage_options, header.dtype.kind not in "iub")
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
    n_time = stop - start
    for idx, (kind, steps) in enumerate(rest):
        if kind == "series":
            x = x.rechunk({0: vchunk, 1: -1})
            how = dict(steps=tuple(steps), detrend_first=params.detrend and first_series,
                       detrend=params.detrend, tr=plan.tr, high_pass=params.high_pass,
                       low_pass=params.low_pass, filter=params.filter)
            if n_time <= OPERATOR_MAX_T:  # one (T, T) matrix per run, one GEMM per block
                op = cmat.map_blocks(series_operator, n_time=n_time, **how,
                                     chunks=((n_time,), (n_time,)), dtype=np.float64)
                x = da.blockwise(apply_operator, "vu", x, "vt", op, "tu", concatenate=True,
                                 dtype=np.float32)
            else:
                x = da.blockwise(series_block, "vt", x, "vt", cmat, "tk", concatenate=True,
                                 dtype=np.float32, **how)
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
            "filter": filter_provenance(plan, params),
            "confounds_file": plan.confounds_file,
            "tr_source": plan.tr_source,
            "notes": list(plan.notes),
        },
    }


def band_label(params: PreprocessingSettings) -> str:
    """The band as text, e.g. ``0.01-0.1 Hz``, ``> 0.01 Hz``, ``< 0.1 Hz``."""
    hp, lp = params.high_pass, params.low_pass
    if hp is not None and lp is not None:
        return f"{hp:g}-{lp:g} Hz"
    return f"> {hp:g} Hz" if hp is not None else f"< {lp:g} Hz"


def filter_provenance(plan: SubjectPlan, params: DenoiseParams) -> dict | None:
    """What the band-pass step did: the filter, its definition and, for the ideal
    filter, the frequency bins kept and the rank of the filtered series."""
    if not (params.wants_filter and any(s in ("filter", "clean") for s in plan.steps)):
        return None
    if params.filter == "butterworth":
        return {"kind": "butterworth", "band": band_label(params),
                "definition": f"nilearn signal.clean: Butterworth order "
                              f"{kern.BUTTERWORTH_ORDER}, second-order sections, "
                              "scipy.signal.sosfiltfilt (odd padding)"}
    p = kern.ideal_padded_length(plan.n_kept)
    bins = kern.ideal_filter_bins(plan.n_kept, plan.tr, params.high_pass, params.low_pass)
    return {"kind": "ideal", "band": band_label(params),
            "definition": "DPABI y_IdealFilter: mean removed, zero-padded to 2^nextpow2(T), "
                          "FFT bins outside the band set to 0, inverse FFT cut to T",
            "padded_length": p, "bins": [int(bins[0]), int(bins[-1])],
            "frequencies_hz": [float(bins[0] / (p * plan.tr)),
                               float(bins[-1] / (p * plan.tr))],
            "rank": kern.ideal_rank(plan.n_kept, plan.tr, params.high_pass, params.low_pass)}


def make_prepare(params: DenoiseParams):
    """``prepare(inp, info)`` for :func:`cfhdask.prep.ingest.ingest` with fixed parameters."""
    def prepare(inp: SubjectInput, store_info) -> tuple[da.Array, dict]:
        return prepare_series(inp, store_info, params)

    prepare.params = params  # type: ignore[attr-defined]
    return prepare
