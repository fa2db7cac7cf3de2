"""Ingest 4D BOLD NIfTI images into a cohort store.

Steps:

1. name each input (BIDS ``sub-<label>[_ses-<label>]``, else the file stem);
2. read and check every header (4D, enough volumes, one grid) before anything
   is written (on a cluster the workers read them, one task per worker thread);
3. resolve the mask (``gm`` template or a user mask) and create the store, or
   open the existing one, drop its interrupted subjects and skip complete ones
   unless ``overwrite``;
4. ``prepare`` (load -> drop volumes -> mask -> float32; pluggable, e.g.
   denoising) and a chunk-aligned Zarr write done by the workers; the cohort
   runs in memory-bounded waves sized to the cluster
   (:mod:`cfhdask.cluster.waves`), and each subject is marked complete as soon
   as it is written.  Small new subjects (at most
   :data:`~cfhdask.cluster.waves.WHOLE_TASK_BYTES` stored) go in batches sized to
   the cluster, each batch one task that prepares, writes and publishes its
   subjects on a worker (:func:`ingest_batch`); the client builds nothing per
   subject.  Large subjects, replacements (``overwrite``) and ``memory://``
   stores are one chunked Dask graph per subject, built in the client.  A failed
   subject is removed, the others are kept, and ingest raises at the end listing
   the failures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pickle
import posixpath
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np

from cfhdask._version import __version__
from cfhdask.cluster.waves import WHOLE_TASK_BYTES, cluster_batches, cluster_capacity
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

__all__ = ["HEADERS_ON_CLIENT", "SUBJECT_MEMORY_FACTOR", "PrepareFn", "StoreInfo",
           "SubjectsFailed", "as_subject_inputs", "check_out", "ingest", "ingest_batch",
           "load_series", "prepare_subject", "read_headers", "store_info", "subject_tr"]

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
    """One subject to write as a chunked graph: its prepared series and attributes."""

    inp: SubjectInput
    series: da.Array
    attrs: dict

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.series.shape, dtype=np.int64)) * 4


@dataclass
class _Batch:
    """Small new subjects prepared, written and published by one task on a worker."""

    items: list[tuple[SubjectInput, NiftiInfo]]


def store_info(store: CohortStore, header: NiftiInfo, drop_volumes: int,
               storage_options: dict | None) -> StoreInfo:
    """The :class:`StoreInfo` of one subject of ``store``."""
    return StoreInfo(url=store.url, grid_shape=store.grid_shape, affine=store.affine,
                     ijk=store.ijk, drop_volumes=drop_volumes, header=header,
                     storage_options=dict(storage_options or {}))


def prepare_subject(prepare: PrepareFn, inp: SubjectInput, info: StoreInfo,
                    n_voxels: int) -> tuple[da.Array, dict]:
    """``prepare(inp, info)``, its series' shape checked, its attributes completed with the
    subject's source and provenance.

    Raises
    ------
    CfhdaskInputError
        Any problem with the subject's inputs, or a series of the wrong shape (naming
        the file).
    """
    series, attrs = prepare(inp, info)
    if series.ndim != 2 or series.shape[0] != n_voxels:
        raise CfhdaskInputError(
            f"{inp.bold}: prepared series has shape {series.shape}, "
            f"expected ({n_voxels}, n_time)")
    header = info.header
    return series, {
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


def _task_cancelled() -> bool:
    """On a worker: whether the task running in this thread was cancelled or released
    (its client gone, or it cancelled it).  False outside a Dask worker task."""
    try:
        from distributed import get_worker
        from distributed.worker import thread_state

        worker = get_worker()
    except (ImportError, ValueError):
        return False
    key = getattr(thread_state, "key", None)
    if key is None:
        return False
    ts = worker.state.tasks.get(key)
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


def _picklable(exc: BaseException) -> BaseException:
    """``exc``, or a plain error of the same message when it cannot travel to the client."""
    try:
        pickle.dumps(exc)
    except Exception:
        return CfhdaskInputError(str(exc))
    return exc


def ingest_batch(store: CohortStore, items: Sequence[tuple[SubjectInput, NiftiInfo]],
                 prepare: PrepareFn, drop_volumes: int, storage_options: dict | None,
                 setting: dict | None) -> list[tuple[str, BaseException | None, str]]:
    """On a worker: prepare, write and publish each small new subject of a batch, in turn.

    Each subject is published (:meth:`~cfhdask.io.store.CohortStore.write_bold_whole`)
    as soon as it is written; a subject already published (this task rerun after
    a lost worker) is left as it is.  A failing subject is removed and reported,
    the others go on.  Between two subjects the batch stops if its task was
    cancelled or released (its client was killed): finished subjects are kept,
    the rest is never begun.

    Parameters
    ----------
    store : CohortStore
        Opened for writing.
    items : sequence of (SubjectInput, NiftiInfo)
        The subjects and their validated headers.
    prepare : callable
        The ``prepare`` hook of :func:`ingest`.
    drop_volumes : int
    storage_options : dict, optional
    setting : dict, optional
        The preprocessing setting of this ingest
        (:func:`~cfhdask.io.store.preprocessing_setting`); a subject prepared
        otherwise fails.

    Returns
    -------
    list of (subject, error or None, worker traceback)
        One entry per subject done (in order); fewer than ``items`` when cancelled.
    """
    out: list[tuple[str, BaseException | None, str]] = []
    for inp, header in items:
        if _task_cancelled():
            break
        try:
            series, attrs = prepare_subject(
                prepare, inp, store_info(store, header, drop_volumes, storage_options),
                store.n_voxels)
            if setting is not None and preprocessing_setting(attrs.get("preprocessing")) \
                    != setting:
                got = preprocessing_setting(attrs.get("preprocessing"))
                raise CfhdaskInputError(
                    f"{inp.bold}: would be preprocessed with {describe_setting(got)}, the "
                    f"other runs with {describe_setting(setting)} ({settings_differ(setting, got)}"
                    "); one store holds one preprocessing")
            (values,) = dask.compute(series, scheduler="sync")
            store.write_bold_whole(inp.subject, values, attrs)
        except Exception as exc:  # this subject fails, the others go on
            where = traceback.format_exc()
            with contextlib.suppress(Exception):  # what is left is invisible, cleaned later
                store.abort_subject(inp.subject)
            out.append((inp.subject, _picklable(exc), where))
        else:
            out.append((inp.subject, None, ""))
    return out


def _run_writes(store: CohortStore, units: Sequence[_Job | _Batch], client, begun: list[str],
                unit_bytes: int, batch_args: tuple) -> dict[str, BaseException]:
    """Write every subject's series; mark each complete as it finishes.

    On a Dask client the cohort runs in memory-bounded waves
    (:func:`cfhdask.cluster.waves.run_waves`).  A :class:`_Batch` is one task
    (:func:`ingest_batch`) that writes and publishes its subjects on the worker.
    A :class:`_Job`'s (unpublished) array is prepared just before its write
    graph is submitted, the workers write its chunks, and a last task on a
    worker publishes a new subject, flagged complete
    (:meth:`~cfhdask.io.store.CohortStore.finish_graph`); a replacement is
    swapped in by the client once written.  ``begun`` lists the subjects begun
    (the caller aborts the unpublished ones on an interruption) and written.
    ``batch_args`` are the last arguments of :func:`ingest_batch`.
    """
    failures: dict[str, BaseException] = {}
    n = sum(len(u.items) if isinstance(u, _Batch) else 1 for u in units)
    done = 0

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

    def failed(subject: str, exc: BaseException, where: str = "") -> None:
        store.abort_subject(subject)
        failures[subject] = exc
        log.error("Ingest of %s failed: %s", subject, str(exc).strip().split("\n")[0])
        log.debug("Ingest of %s failed%s", subject, where, exc_info=exc)

    def batch_ended(batch: _Batch, fut, result) -> None:
        if fut.status == "finished":
            results = list(result)
        else:  # the task itself failed (e.g. its workers kept dying): published ones stay
            exc = fut.exception()
            results = [(inp.subject, None if store.is_published(inp.subject) else exc, "")
                       for inp, _ in batch.items]
        seen = {subject for subject, _, _ in results}
        results += [(inp.subject, CfhdaskInputError(
            f"{inp.bold}: its batch task was cancelled before it"), "")
            for inp, _ in batch.items if inp.subject not in seen]  # never silently dropped
        for subject, exc, where in results:
            if exc is None:
                begun.append(subject)
                finished(subject)
            else:
                failed(subject, exc, f" on a worker:\n{where}" if where else "")

    if client is not None:
        from cfhdask.cluster.waves import run_waves

        def submit(unit: _Job | _Batch):
            if isinstance(unit, _Batch):
                return client.submit(ingest_batch, store, unit.items, *batch_args, pure=False,
                                     fifo_timeout=0)
            return client.compute(start(unit), fifo_timeout=0)

        def ended(unit: _Job | _Batch, fut, result) -> None:
            if isinstance(unit, _Batch):
                batch_ended(unit, fut, result)
            elif fut.status == "finished":
                finished(unit.inp.subject)
            else:
                failed(unit.inp.subject, fut.exception())

        run_waves(client, units, submit, ended, unit_bytes=unit_bytes,
                  what="ingest: tasks")
        return failures
    for job in units:
        assert isinstance(job, _Job)  # batches only run on a cluster
        try:
            dask.compute(start(job))
        except Exception as exc:  # the subject fails, the others go on
            failed(job.inp.subject, exc)
        else:
            finished(job.inp.subject)
    return failures


#: Inputs whose headers the client reads itself; more are read by the workers.
HEADERS_ON_CLIENT = 16


def read_headers(urls: Sequence[str], storage_options: dict | None) -> list[NiftiInfo]:
    """:func:`~cfhdask.io.nifti.read_header` of each image, in order (a worker task)."""
    return [read_header(url, storage_options) for url in urls]


def _read_headers(inputs: Sequence[SubjectInput], storage_options: dict, client
                  ) -> list[NiftiInfo]:
    """Every input's header, before anything is written: on a cluster, read by the
    workers (one task per worker thread), else here.  The first bad file (in input
    order) raises its one-line error."""
    urls = [inp.bold for inp in inputs]
    if client is None or len(urls) <= HEADERS_ON_CLIENT:
        return read_headers(urls, storage_options)
    parts = cluster_batches(len(urls), cluster_capacity(client), per_thread=1)
    futures = client.map(read_headers, [urls[r.start:r.stop] for r in parts],
                         storage_options=storage_options, pure=False)
    try:
        return [info for fut in futures for info in fut.result()]
    finally:
        client.cancel(futures)


def _split_subjects(store: CohortStore, todo: Sequence[SubjectInput],
                    headers: dict[str, NiftiInfo], complete: set[str], client,
                    drop_volumes: int) -> tuple[list[SubjectInput], list[SubjectInput]]:
    """The subjects written as one chunked graph each, and the small new ones done whole
    in batch tasks (on a cluster, with a store the workers can reach)."""
    if client is None or str(store.url).startswith("memory:"):
        return list(todo), []

    def whole(inp: SubjectInput) -> bool:
        n_time = max(0, headers[inp.subject].n_volumes - drop_volumes)
        return inp.subject not in complete and store.n_voxels * n_time * 4 <= WHOLE_TASK_BYTES

    small = [inp for inp in todo if whole(inp)]
    return [inp for inp in todo if not whole(inp)], small


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
    client = client or _default_client()
    headers = dict(zip((inp.subject for inp in subject_inputs),
                       _read_headers(subject_inputs, so, client), strict=True))
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

    writes: list[str] = []
    failures: dict[str, BaseException] = {}
    prepared: list[_Job] = []
    chunked, small = _split_subjects(store, todo, headers, complete, client, drop_volumes)

    def prepared_attrs(inp: SubjectInput, keep: bool) -> dict | None:
        try:
            series, attrs = prepare_subject(
                prepare, inp, store_info(store, headers[inp.subject], drop_volumes, so),
                store.n_voxels)
        except CfhdaskInputError as exc:
            failures[inp.subject] = exc
            return None
        if keep:
            prepared.append(_Job(inp, series, attrs))
        return attrs

    try:
        for inp in chunked:
            prepared_attrs(inp, keep=True)
        probe: list[dict] = []  # the setting of the batches: one subject prepared here
        while small and not probe:
            attrs = prepared_attrs(small[0], keep=False)
            if attrs is None:
                small = small[1:]
            else:
                probe.append(attrs)
        setting = _check_preprocessing(store, [job.attrs for job in prepared] + probe)
        batches = [_Batch([(small[i], headers[small[i].subject]) for i in r])
                   for r in (cluster_batches(len(small), cluster_capacity(client))
                             if small else [])]
        if small:
            log.info("ingest: %d subject(s) in %d batch task(s) on the workers, %d as "
                     "chunked graphs", len(small), len(batches), len(prepared))
        units: list[_Job | _Batch] = [*batches, *prepared]
        if units:
            peak = max(store.n_voxels * headers[inp.subject].n_volumes * 4 for inp in todo)
            failures.update(_run_writes(store, units, client, writes,
                                        SUBJECT_MEMORY_FACTOR * peak,
                                        (prepare, drop_volumes, so, setting)))
            if batches:  # published by the workers alone: not in this process's listings
                store.forget_listings()
    except BaseException:
        for subject in writes:
            store.abort_subject(subject)
        if not exists and not store.subjects():
            _remove_store(store_url, so)
        raise

    done = set(writes) - set(failures)
    written = [inp.subject for inp in todo if inp.subject in done]
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
