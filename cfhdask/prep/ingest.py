"""Ingest 4D BOLD NIfTI images into a cohort store.

Steps:

1. name each input (BIDS ``sub-<label>[_ses-<label>]``, else the file stem);
2. read and check every header (4D, enough volumes, one grid) before anything
   is written;
3. resolve the mask (``gm`` template or a user mask) and create the store, or
   open the existing one, drop its interrupted subjects and skip complete ones
   unless ``overwrite``;
4. per subject, a Dask graph ``prepare`` (load -> drop volumes -> mask ->
   float32; pluggable, e.g. denoising) -> chunk-aligned Zarr write done by the
   workers; the cohort runs in memory-bounded waves sized to the cluster
   (:mod:`cfhdask.cluster.waves`), and each subject is marked complete as soon as it
   is written.  A failed subject is removed, the others are kept, and ingest
   raises at the end listing the failures.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from cfhdask._version import __version__
from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import SubjectInput, subject_id
from cfhdask.io.nifti import NiftiInfo, check_bold, check_same_grid, masked_series, read_header
from cfhdask.io.store import (
    CohortStore,
    describe_setting,
    now_iso,
    preprocessing_setting,
    settings_differ,
)
from cfhdask.io.urls import check_writable, url_to_fs
from cfhdask.prep.confounds import check_tr, sidecar_tr
from cfhdask.prep.mask import GM_THRESHOLD, resolve_mask

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class StoreInfo:
    """What a ``prepare`` function needs to produce one subject's series.

    Attributes
    ----------
    url : str
        The store URL.
    grid_shape : tuple of int
        Data grid.
    affine : ndarray (4, 4)
        Voxel-to-MNI affine.
    ijk : ndarray (n_voxels, 3)
        Voxel indices in store order (left, right, midline).
    drop_volumes : int
        Initial volumes to discard.
    header : NiftiInfo
        Header of this subject's BOLD image (already validated).
    storage_options : dict
        fsspec options for reading inputs.
    """

    url: str
    grid_shape: tuple[int, int, int]
    affine: np.ndarray
    ijk: np.ndarray
    drop_volumes: int
    header: NiftiInfo
    storage_options: dict = dataclasses.field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        """Voxels in the store."""
        return int(len(self.ijk))


#: ``prepare(inp, info) -> (series (voxel, time) float32 dask array, subject attrs)``
PrepareFn = Callable[[SubjectInput, StoreInfo], tuple[da.Array, dict]]


class SubjectsFailed(CfhdaskInputError):
    """Some subjects could not be ingested; the others were written.

    Attributes
    ----------
    failures : dict of str -> BaseException
    store : CohortStore or None
        The store holding the subjects that were written.
    """

    def __init__(self, message: str, *, failures: dict, store=None):
        super().__init__(message)
        self.failures = failures
        self.store = store


def _check_subject_name(inp: SubjectInput) -> None:
    name = inp.subject
    if not name or "/" in name or name in (".", "..") or name.startswith("__"):
        raise CfhdaskInputError(f"{inp.bold}: cannot use {name!r} as a subject id")


def as_subject_inputs(inputs: Sequence[str | SubjectInput]) -> list[SubjectInput]:
    """Normalise inputs to :class:`SubjectInput` and check ids are unique.

    Raises
    ------
    CfhdaskInputError
        No input, or two inputs with the same subject id (naming both files).
    """
    if isinstance(inputs, str | SubjectInput):
        inputs = [inputs]
    out: list[SubjectInput] = []
    seen: dict[str, str] = {}
    for item in inputs:
        inp = item if isinstance(item, SubjectInput) else SubjectInput(
            subject=subject_id(str(item)), bold=str(item))
        _check_subject_name(inp)
        if inp.subject in seen:
            raise CfhdaskInputError(
                f"duplicate subject id {inp.subject!r}: {seen[inp.subject]} and {inp.bold}")
        seen[inp.subject] = inp.bold
        out.append(inp)
    if not out:
        raise CfhdaskInputError("no BOLD image to ingest")
    return out


def subject_tr(inp: SubjectInput, header: NiftiInfo,
               storage_options: dict | None = None) -> float | None:
    """Repetition time: the user's, else the sidecar's, else the NIfTI header's.

    Raises
    ------
    CfhdaskInputError
        A TR that looks like milliseconds (> 100 s), naming where it came from.
    """
    if inp.tr is not None:
        return check_tr(inp.tr, "--tr")
    if inp.sidecar:
        tr = sidecar_tr(inp.sidecar, storage_options)
        if tr is not None:
            return tr
    return None if header.tr is None else check_tr(
        header.tr, f"the NIfTI header of {inp.bold}: TR")


def load_series(inp: SubjectInput, info: StoreInfo) -> tuple[da.Array, dict]:
    """The default ``prepare``: masked series without denoising (lazy).

    Loads the image, drops the first ``info.drop_volumes`` volumes, extracts
    the store's voxels and casts to float32.

    Returns
    -------
    series : dask.array.Array (n_voxels, n_time) float32
    attrs : dict
        ``tr``, ``n_volumes``, ``n_dropped``, ``preprocessing``.
    """
    series = masked_series(info.header, info.ijk, info.drop_volumes, info.storage_options)
    attrs = {
        "tr": subject_tr(inp, info.header, info.storage_options),
        "n_volumes": int(series.shape[1]),
        "n_dropped": int(info.drop_volumes),
        "preprocessing": {"pipeline": "none", "drop_volumes": int(info.drop_volumes)},
    }
    return series, attrs


def _store_state(url: str, storage_options: dict | None) -> bool:
    """Whether a cohort store exists at ``url`` (error if something else is there)."""
    fs, path = url_to_fs(url, storage_options, what="--out")
    try:
        if fs.exists(posixpath.join(path, "zarr.json")):
            return True
        occupied = fs.exists(path) and (not fs.isdir(path) or bool(fs.ls(path)))
    except Exception as exc:  # unreachable endpoint, denied access (botocore errors)
        raise CfhdaskInputError(f"--out {url}: cannot access: {exc}") from exc
    if occupied:
        raise CfhdaskInputError(f"--out {url}: exists and is not a cohort store")
    return False


def check_out(url: str, storage_options: dict | None = None) -> bool:
    """Check ``--out`` before any cluster starts: a cohort store that can be written, or
    nothing yet.  Returns whether a store is there.

    Raises
    ------
    CfhdaskInputError
        Something else is there, or the store cannot be written (one line).
    """
    exists = _store_state(url, storage_options)
    if exists:
        check_writable(url, storage_options, what="--out")
    return exists


def _remove_store(url: str, storage_options: dict | None) -> None:
    fs, path = url_to_fs(url, storage_options, what="--out")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _default_client():
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


#: Peak worker memory of one subject's ingest, in multiples of its stored series
#: (the read volumes, the masked series, a denoising copy and the rechunked writes).
SUBJECT_MEMORY_FACTOR = 4


@dataclass
class _Job:
    """One subject to write: its prepared series and attributes."""

    inp: SubjectInput
    series: da.Array
    attrs: dict

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.series.shape, dtype=np.int64)) * 4


def _run_writes(store: CohortStore, jobs: Sequence[_Job], client,
                begun: list[str]) -> dict[str, BaseException]:
    """Write every subject's series; mark each complete as it finishes.

    On a Dask client the cohort runs in memory-bounded waves
    (:func:`cfhdask.cluster.waves.run_waves`): a subject's (unpublished) array is
    prepared just before its write graph is submitted, the workers write its
    chunks, and a last task on a worker publishes a new subject, flagged
    complete (:meth:`~cfhdask.io.store.CohortStore.finish_graph`): the client
    writes no metadata per new subject (a replacement is swapped in by the
    client once written).  ``begun`` lists the subjects begun (the
    caller aborts the unpublished ones on an interruption).
    """
    failures: dict[str, BaseException] = {}
    n, done = len(jobs), 0

    def start(job: _Job):
        target = store.begin_subject(job.inp.subject, int(job.series.shape[1]), job.attrs)
        begun.append(job.inp.subject)
        return store.finish_graph(job.inp.subject, store.bold_store_graph(job.series, target))

    def finished(subject: str) -> None:
        nonlocal done
        if store.is_pending(subject):  # a replacement (--overwrite): swapped in here
            store.finish_subject(subject)
        done += 1
        log.info("Ingested %s (%d/%d)", subject, done, n)

    def failed(subject: str, exc: BaseException) -> None:
        store.abort_subject(subject)
        failures[subject] = exc
        log.error("Ingest of %s failed: %s", subject, str(exc).strip().split("\n")[0])
        log.debug("Ingest of %s failed", subject, exc_info=exc)

    if client is not None:
        from cfhdask.cluster.waves import run_waves

        def ended(job: _Job, fut) -> None:
            if fut.status == "finished":
                finished(job.inp.subject)
            else:
                failed(job.inp.subject, fut.exception())

        run_waves(client, jobs, lambda job: client.compute(start(job), fifo_timeout=0), ended,
                  unit_bytes=SUBJECT_MEMORY_FACTOR * max(j.nbytes for j in jobs),
                  what="ingest: subjects")
        return failures
    for job in jobs:
        try:
            dask.compute(start(job))
        except Exception as exc:  # the subject fails, the others go on
            failed(job.inp.subject, exc)
        else:
            finished(job.inp.subject)
    return failures


def _check_preprocessing(store: CohortStore, new_attrs: Sequence[dict]) -> dict | None:
    """The preprocessing setting of this ingest; refuse one the store's subjects do not share.

    One store holds one preprocessing (plain series and denoised series, or two
    denoising settings, are never mixed in an analysis).

    Raises
    ------
    CfhdaskInputError
        Naming the store's setting and this ingest's, and where they differ.
    """
    settings = [preprocessing_setting(a.get("preprocessing")) for a in new_attrs]
    if not settings:
        return None
    first = settings[0]
    other = next((s for s in settings[1:] if s != first), None)
    if other is not None:
        raise CfhdaskInputError(
            f"ingest into {store.url}: the runs would be preprocessed in two ways "
            f"({describe_setting(first)} and {describe_setting(other)}); one store holds "
            "one preprocessing")
    held = store.store_preprocessing()
    if held is not None and held != first:
        raise CfhdaskInputError(
            f"store {store.url} holds subjects preprocessed with {describe_setting(held)}; "
            f"this ingest would use {describe_setting(first)} ({settings_differ(held, first)})"
            ". One store holds one preprocessing: give another --out, or the store's "
            "settings")
    return first


def ingest(
    inputs: Sequence[str | SubjectInput],
    store_url: str,
    *,
    mask: str | None = None,
    gm_threshold: float = GM_THRESHOLD,
    drop_volumes: int = 0,
    overwrite: bool = False,
    client=None,
    voxel_chunk: int | None = None,
    storage_options: dict | None = None,
    prepare: PrepareFn | None = None,
) -> CohortStore:
    """Ingest 4D BOLD images into a (new or existing) cohort store.

    Parameters
    ----------
    inputs : sequence of str or SubjectInput
        BOLD NIfTI paths/URLs (subject ids from the BIDS names) or prepared inputs.
    store_url : str
        Directory or fsspec URL of the store.
    mask : str, optional
        ``"gm"`` (grey-matter template > ``gm_threshold``) or a mask NIfTI on
        the data grid.  Default: ``"gm"`` for a new store; an existing store
        keeps its own mask (a different one given here is an error).
    gm_threshold : float
        Grey-matter probability threshold of the ``gm`` mask (default 0.2).
    drop_volumes : int
        Initial volumes to discard; at least 10 must remain.
    overwrite : bool
        Re-ingest subjects already complete in the store.
    client : distributed.Client, optional
        Where to run; default the current client if any, else the local
        threaded scheduler, one subject after another.
    voxel_chunk : int, optional
        Voxels per Zarr chunk of a new store (``cfhdask.store.voxel-chunk``).
    storage_options : dict, optional
        fsspec options for the store and the inputs (e.g. S3 credentials).
    prepare : callable, optional
        ``prepare(inp, info) -> (series, attrs)`` producing a subject's
        (voxel, time) float32 Dask array; default :func:`load_series`.

    Returns
    -------
    CohortStore
        The store, opened for reading and writing.

    Raises
    ------
    CfhdaskInputError
        Any bad input (checked before writing), or, at the end, the subjects
        whose data failed (the others are kept).
    """
    prepare = prepare or load_series
    so = dict(storage_options or {})
    drop_volumes = int(drop_volumes)
    if drop_volumes < 0:
        raise CfhdaskInputError(f"--drop-volumes {drop_volumes}: must be >= 0")
    subject_inputs = as_subject_inputs(inputs)
    headers = {inp.subject: read_header(inp.bold, so) for inp in subject_inputs}
    for info in headers.values():
        check_bold(info, drop_volumes)

    exists = check_out(store_url, so)
    if exists:
        store = CohortStore.open(store_url, mode="r+", storage_options=so)
        check_same_grid(list(headers.values()), store.grid_shape, store.affine,
                        reference=f"store {store_url}")
        if mask is not None:
            wanted, _ = resolve_mask(mask, store.grid_shape, store.affine,
                                     gm_threshold=gm_threshold, storage_options=so)
            if not np.array_equal(wanted, store.mask):
                raise CfhdaskInputError(
                    f"--mask {mask}: differs from the mask of store {store_url} "
                    f"({store.attrs['mask'].get('source')}); omit --mask to use the store's")
        store.cleanup_incomplete()
    else:
        first = next(iter(headers.values()))
        check_same_grid(list(headers.values()))
        mask_arr, mask_info = resolve_mask(mask or "gm", first.grid_shape, first.affine,
                                           gm_threshold=gm_threshold, storage_options=so)
        store = CohortStore.create(store_url, grid_shape=first.grid_shape,
                                   affine=first.affine, mask=mask_arr, mask_info=mask_info,
                                   voxel_chunk=voxel_chunk, storage_options=so)

    complete = set(store.subjects())
    todo = [inp for inp in subject_inputs if overwrite or inp.subject not in complete]
    skipped = [inp.subject for inp in subject_inputs if inp not in todo]
    if skipped:
        log.info("Skipping %d subject(s) already in the store: %s", len(skipped),
                 ", ".join(skipped))

    ijk = store.ijk
    writes: list[str] = []
    failures: dict[str, BaseException] = {}
    prepared: list[_Job] = []
    try:
        for inp in todo:
            header = headers[inp.subject]
            info = StoreInfo(url=store.url, grid_shape=store.grid_shape, affine=store.affine,
                             ijk=ijk, drop_volumes=drop_volumes, header=header,
                             storage_options=so)
            try:
                series, attrs = prepare(inp, info)
                if series.ndim != 2 or series.shape[0] != store.n_voxels:
                    raise CfhdaskInputError(
                        f"{inp.bold}: prepared series has shape {series.shape}, "
                        f"expected ({store.n_voxels}, n_time)")
            except CfhdaskInputError as exc:
                failures[inp.subject] = exc
                continue
            attrs = {
                "subject": inp.subject,
                "source": {"bold": inp.bold, "confounds": inp.confounds,
                           "realign": inp.realign, "sidecar": inp.sidecar, **inp.extra},
                "input_shape": list(header.shape),
                "input_bytes": header.nbytes,
                "input_dtype": str(header.dtype),
                "cfhdask_version": __version__,
                "ingested": now_iso(),
                **attrs,
            }
            prepared.append(_Job(inp, series, attrs))
        setting = _check_preprocessing(store, [job.attrs for job in prepared])
        if prepared:
            failures.update(_run_writes(store, prepared, client or _default_client(), writes))
    except BaseException:
        for subject in writes:
            store.abort_subject(subject)
        if not exists and not store.subjects():
            _remove_store(store_url, so)
        raise

    written = [s for s in writes if s not in failures]
    if not exists and not written:
        _remove_store(store_url, so)
    elif written:
        if setting is not None and store.attrs.get("preprocessing") is None:
            store.set_attrs(preprocessing=setting)
        store.append_history("ingest", {
            "inputs": [inp.bold for inp in subject_inputs],
            "written": written, "skipped": skipped, "failed": sorted(failures),
            "mask": mask or store.attrs["mask"].get("source"), "gm_threshold": gm_threshold,
            "drop_volumes": drop_volumes, "overwrite": overwrite,
            "voxel_chunk": store.voxel_chunk,
            "input_bytes": int(sum(headers[s].nbytes for s in written)),
        })
    if failures:
        lines = "; ".join(f"{s}: {exc}" for s, exc in sorted(failures.items()))
        raise SubjectsFailed(
            f"ingest failed for {len(failures)} subject(s) (the others are kept): {lines}",
            failures=failures, store=store if written or exists else None)
    return store
