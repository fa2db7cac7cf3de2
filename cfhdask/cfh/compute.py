"""Per-subject maps for a whole cohort store: CFH (``cfhdask cfh``) and what it shares.

:func:`compute_cfh` computes CFH in one of its two definitions:

``counterpart="group"`` (the default, as the CFH literature computes it)
    The counterpart of each voxel is found once for the cohort, as the argmax
    over the other hemisphere of the correlation summed over a reference set
    of subjects (:mod:`cfhdask.cfh.group`); each subject's map is then
    ``atanh(r_s(v, counterpart(v)))``, one O(voxels x T) pass per subject.
``counterpart="subject"``
    Each subject's voxel takes its own maximal contralateral correlation
    (:func:`cfhdask.cfh.graph.cfh_graph`).

The per-subject machinery (:func:`run_subjects`: the whole cohort in
memory-bounded waves, small subjects batched, each subject written by a
worker whole before it is marked complete) is shared with :mod:`cfhdask.cfh.vmhc` and
:mod:`cfhdask.cfh.autonomy`.  A rerun skips complete subjects; an interrupted
run leaves none half-written.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from cfhdask._version import __version__
from cfhdask.backend import cupy_available
from cfhdask.cfh.graph import paired_graph, standardize_graph
from cfhdask.cfh.kernels import CONSTANT_RTOL, R_CLIP, fisher_z
from cfhdask.cfh.lowrank_graph import cfh_kernel_graph
from cfhdask.errors import CfhdaskInputError
from cfhdask.settings import resolve

log = logging.getLogger(__name__)

__all__ = ["MapRun", "assemble_maps", "compute_cfh", "kernel_facts", "run_subjects",
           "series_bytes", "start_maps", "subject_graph", "subject_units", "unit_size",
           "whole_units"]


# ----------------------------------------------------------------------------- shared
def open_writable(store: Any, storage_options: dict | None = None):
    """The store opened for writing (a URL or a read-only store is reopened)."""
    from cfhdask.io.store import CohortStore, open_store

    if isinstance(store, CohortStore):
        if not store.writable:
            return open_store(store.url, mode="r+",
                              storage_options=storage_options or store.storage_options)
        return store
    return open_store(str(store), mode="r+", storage_options=storage_options)


def engine_settings(overrides: dict) -> Any:
    """The ``cfh`` settings with API arguments applied; the backend and block checked."""
    cfg = resolve("cfh", overrides)
    if cfg.backend == "cupy" and not cupy_available():
        raise CfhdaskInputError("--backend cupy: CuPy is not installed or sees no GPU")
    return cfg


def select_subjects(store, subjects: Sequence[str] | None, metric: str,
                    overwrite: bool) -> tuple[list[str], list[str], list[str]]:
    """(wanted, todo, skipped) subjects of a per-subject computation of ``metric``."""
    ingested = store.subjects("ingested")
    if subjects is None:
        wanted = ingested
    else:
        wanted = list(dict.fromkeys(subjects))
        missing = [s for s in wanted if s not in ingested]
        if missing:
            raise CfhdaskInputError(
                f"--subjects: not ingested in {store.url}: {', '.join(missing)}")
    done = set(store.subjects(metric))
    todo = [s for s in wanted if overwrite or s not in done]
    skipped = [s for s in wanted if s not in todo]
    if skipped:
        log.info("Skipping %d subject(s) with complete %s: %s", len(skipped), metric,
                 ", ".join(skipped))
    return wanted, todo, skipped


def require_hemispheres(store, what: str = "CFH") -> None:
    """Both hemispheres must have voxels."""
    if store.n_left == 0 or store.n_right == 0:
        raise CfhdaskInputError(
            f"store {store.url}: the mask has {store.n_left} left and {store.n_right} right "
            f"voxels; {what} needs both hemispheres")


@contextlib.contextmanager
def client_for(client: Any, scheduler: str | None, scheduler_file: str | None) -> Iterator:
    """``client`` itself, or :func:`cfhdask.cluster.dask_client` for the options."""
    if client is not None:
        yield client
        return
    from cfhdask.cluster import dask_client

    with dask_client(scheduler=scheduler, scheduler_file=scheduler_file) as c:
        yield c


def progress(futures: list, enabled: bool) -> None:
    """A progress bar for a subject's tasks, on terminals only (logs get a line per subject)."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return
    try:
        from distributed import progress as bar

        bar(futures)
    except Exception as exc:  # pragma: no cover - progress is cosmetic
        log.debug("no progress bar: %s", exc)


#: Peak worker memory of one subject's maps, in multiples of its stored series.
SUBJECT_MEMORY_FACTOR = 3
#: Subjects smaller than this (series bytes) are batched into one write task.
MIN_UNIT_BYTES = 16 * 2**20
#: Units (write tasks) aimed at per worker thread when small subjects are batched.
UNITS_PER_THREAD = 4


def series_bytes(store, subjects: Sequence[str], sample: int = 16) -> int:
    """Bytes of the largest stored series among (a sample of) ``subjects``."""
    n_time = [int(store.subject_attrs(s).get("n_volumes", 0) or 0)
              for s in list(subjects)[:sample]]
    return 4 * int(store.n_voxels) * max([*n_time, 1])


def unit_size(n_subjects: int, nbytes: int, threads: int) -> int:
    """Subjects of ``nbytes`` of series a unit: enough for :data:`MIN_UNIT_BYTES`, while
    leaving :data:`UNITS_PER_THREAD` units per worker thread when the cohort allows."""
    return max(1, min(-(-MIN_UNIT_BYTES // max(1, nbytes)),
                      n_subjects // max(1, UNITS_PER_THREAD * threads)))


def subject_units(todo: Sequence[str], nbytes: int, threads: int) -> list[list[str]]:
    """Subjects grouped into units: small subjects together (:func:`unit_size`), in order.

    When subjects are batched and the units outnumber the worker threads, their number
    is rounded to a whole number of waves (a multiple of ``threads``) and their sizes
    differ by at most one, so the last wave keeps every thread busy instead of a few
    units running alone at the end.
    """
    from cfhdask.cluster.waves import even_ranges

    n, threads = len(todo), max(1, int(threads))
    per_unit = unit_size(n, nbytes, threads)
    n_units = -(-n // per_unit)
    if per_unit > 1 and n_units > threads:
        n_units = max(1, round(n_units / threads)) * threads
    return [[todo[i] for i in unit] for unit in even_ranges(n, n_units)]


def _write_unit(write: Callable[[str, dict], str], subjects: list[str],
                results: list[dict]) -> list[tuple[str, str]]:
    """On a worker: write each subject of a unit (arrays, then its flag); summaries back."""
    return [(s, write(s, res)) for s, res in zip(subjects, results, strict=True)]


def _compute_write_unit(submit: Callable[[str], dict], write: Callable[[str, dict], str],
                        subjects: list[str]) -> list[tuple[str, str]]:
    """On a worker: each subject's graph built and computed here, then written.

    The same graph as on the cluster (the same tasks and reductions, so the
    same values bit for bit), run by Dask's synchronous scheduler in this
    worker thread, one subject at a time.
    """
    import dask

    out = []
    for s in subjects:
        (res,) = dask.compute(submit(s), scheduler="synchronous")
        out.append((s, write(s, res)))
    return out


def whole_units(units: Sequence[Sequence[str]], nbytes: int, threads: int) -> bool:
    """Whether the units run as one task each, which builds its subjects' graphs on its worker
    and computes them there (the client then builds and schedules no per-block graph).

    Subjects of at most :data:`~cfhdask.cluster.waves.WHOLE_TASK_BYTES` of series (the
    subjects ingest writes whole in one task too), and at least a unit per worker thread;
    otherwise each unit is one graph spread over the cluster.
    """
    from cfhdask.cluster.waves import WHOLE_TASK_BYTES

    return nbytes <= WHOLE_TASK_BYTES and len(units) >= max(1, threads)


def run_subjects(todo: Sequence[str], client: Any, submit: Callable[[str], dict],
                 write: Callable[[str, dict], str], *, show_progress: bool = True,
                 what: str = "CFH", subject_bytes: int | None = None) -> None:
    """Compute and write every subject on the cluster, the whole cohort in flight.

    The cohort runs in memory-bounded waves sized to the cluster
    (:func:`cfhdask.cluster.waves.run_waves`); small subjects are batched into
    one unit.  Each unit ends in a task that calls ``write`` **on a worker**:
    the workers write the maps into the store (local or object store) and
    set each subject's completion flag; the client receives only the
    one-line summaries.  Units of small subjects, when there are at least as
    many as worker threads (:func:`whole_units`), are each a single task that
    builds and computes its subjects' graphs on its worker: the client builds
    no per-subject graph and the scheduler sees one task a unit.

    Each unit is its own generation on the scheduler (``fifo_timeout=0``), so
    the units run in submission order, not interleaved task by task: when
    workers leave (``--lifetime``, lost jobs) and their in-memory results are
    recomputed, the oldest units still finish one after another instead of
    every unit in flight being half done.  Units that are one task each are
    sent together, one graph a refill, each with a priority that keeps that
    order (:func:`_unit_graph`).

    Parameters
    ----------
    todo : sequence of str
    client : distributed.Client
    submit : callable subject -> dict of dask collections
        The lazy results of one subject.  It may be called on a worker (it is
        pickled with the units that are one task: keep what it refers to small).
    write : callable (subject, dict of computed results) -> str
        Writes the subject (then marks it complete) and returns a log summary.
        It runs on a worker (it is pickled: a :class:`~cfhdask.io.store.CohortStore`
        it refers to is reopened there by URL).
    subject_bytes : int, optional
        Bytes of one subject's stored series (bounds the subjects in flight);
        default 64 MiB.
    """
    import dask

    from cfhdask.cluster.waves import cluster_capacity, run_waves

    if not todo:
        return
    nbytes = int(subject_bytes or 64 * 2**20)
    threads = cluster_capacity(client).threads
    units = subject_units(list(todo), nbytes, threads)
    whole = whole_units(units, nbytes, threads)
    log.info("%s of %d subject(s) in %d unit(s)%s on %s; dashboard %s", what, len(todo),
             len(units), ", each one task built and computed on a worker" if whole else "",
             getattr(client.scheduler, "address", client), client.dashboard_link)
    t0 = time.perf_counter()
    done = 0

    def start(unit: list[str]):
        if whole:
            fut = client.submit(_compute_write_unit, submit, write, unit, pure=False,
                                fifo_timeout=0)
        else:
            task = dask.delayed(_write_unit, pure=False)(write, unit, [submit(s) for s in unit])
            fut = client.compute(task, fifo_timeout=0)  # older units first (see above)
        progress([fut], show_progress and len(units) == 1)
        return fut

    def finished(unit: list[str], fut, result) -> None:
        nonlocal done
        if fut.status != "finished":
            fut.result()  # a failed unit raises here: the run stops
        for subject, summary in result:
            done += 1
            log.info("%s %s (%d/%d): %s (%.1f s)", what, subject, done, len(todo), summary,
                     time.perf_counter() - t0)

    def start_many(entries: list[tuple[int, list[str]]]) -> list:
        graph, keys = _unit_graph(submit, write, entries)
        futs = client.get(graph, keys, sync=False)
        progress(futs, show_progress and len(units) == 1)
        return futs

    run_waves(client, units, start, finished,
              unit_bytes=SUBJECT_MEMORY_FACTOR * nbytes * max(len(u) for u in units),
              what=f"{what}: units", submit_many=start_many if whole else None)


def _unit_graph(submit: Callable[[str], dict], write: Callable[[str, dict], str],
                entries: Sequence[tuple[int, list[str]]]) -> tuple[Any, list]:
    """One graph of :func:`_compute_write_unit` tasks, one a ``(position, unit)``, and its keys.

    A layer per unit, its priority minus its position: the scheduler runs
    them in cohort order, as one generation a unit would, from one message.
    """
    import uuid

    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    from cfhdask._compat import Task

    layers, keys = {}, []
    for position, unit in entries:
        key = f"_compute_write_unit-{uuid.uuid4().hex}"
        layers[key] = MaterializedLayer({key: Task(key, _compute_write_unit, submit, write,
                                                   list(unit))},
                                        annotations={"priority": -int(position)})
        keys.append(key)
    return HighLevelGraph(layers, {name: set() for name in layers}), keys


def paired_values(store, subject: str, partner: np.ndarray, block: int,
                  backend: str = "numpy", reader: Any = None) -> dict:
    """Lazy r of every hemisphere voxel of a subject with its partner (store indices, -1).

    ``reader``: the subject's :meth:`~cfhdask.io.store.CohortStore.series_reader`, when
    the caller has checked the subjects already (default: made and checked here).
    """
    n_lr = store.n_left + store.n_right
    reader = store.series_reader([subject]) if reader is None else reader
    return paired_graph(reader, 0, 0, n_lr, partner[:n_lr],
                        backend=backend, rows=block, token=(store.url, subject))


def subject_series(store, subject: str, block: int, backend: str = "numpy"):
    """Standardised series of each hemisphere of a subject, lazily: (zl, vl, zr, vr)."""
    bold = store.bold(subject)
    zl, vl = standardize_graph(bold[store.left], block=block, backend=backend)
    zr, vr = standardize_graph(bold[store.right], block=block, backend=backend)
    return zl, vl, zr, vr


def paired_maps(store, r_hemi: np.ndarray, partner: np.ndarray) -> dict[str, np.ndarray]:
    """Store-wide ``r`` (NaN on the midline) and its Fisher z from hemisphere values."""
    n_lr = store.n_left + store.n_right
    r = np.full(store.n_voxels, np.nan, dtype=np.float32)
    r[:n_lr] = r_hemi
    index = np.full(store.n_voxels, -1, dtype=np.int32)
    index[:n_lr] = np.where(np.isfinite(r_hemi), partner[:n_lr], -1)
    return {"r": r, "z": fisher_z(r), "partner": index}


def summary_line(z: np.ndarray, n_const: int) -> str:
    valid = np.isfinite(z)
    mean = float(z[valid].mean()) if valid.any() else float("nan")
    return f"{int(valid.sum())} voxels, {n_const} constant excluded, mean z {mean:.4f}"


def export_after(store, export: str | None, subjects: list[str], metric: str) -> None:
    """The ``--export`` of a computation."""
    if not export:
        return
    from cfhdask.io.export import export_maps

    export_maps(store, export, subjects=subjects, metric=metric)
    log.info("Exported NIfTI maps of %d subject(s) to %s", len(subjects), export)


@dataclass
class MapRun:
    """One per-subject map computation of a store: what CFH, VMHC and the autonomy index share.

    Made by :func:`start_maps` (settings resolved and checked, store opened,
    subjects chosen); :meth:`run` computes and writes the subjects to do on a
    cluster, :meth:`finish` records the history, exports and fills the
    dataset's common attributes.
    """

    store: Any
    cfg: Any
    metric: str
    wanted: list[str]
    todo: list[str]
    skipped: list[str]
    t0: float = field(default_factory=time.perf_counter)

    def params(self, **extra: Any) -> dict:
        """The provenance every map records: the engine, the constants, the version."""
        return {**extra, "block": self.cfg.block, "backend": self.cfg.backend,
                "constant_rtol": CONSTANT_RTOL, "cfhdask_version": __version__}

    def add_todo(self, subjects: Sequence[str]) -> None:
        """Recompute ``subjects`` too (in the order of the wanted subjects, others last)."""
        extra = [s for s in subjects if s not in self.todo]
        if not extra:
            return
        order = {s: k for k, s in enumerate(self.wanted)}
        todo = [*self.todo, *extra]
        self.todo = sorted(todo, key=lambda s: (order.get(s, len(order)), todo.index(s)))
        self.skipped = [s for s in self.skipped if s not in self.todo]

    def run(self, client: Any, submit: Callable[[str], dict], write: Callable[[str, dict], str],
            *, what: str, show_progress: bool = True) -> None:
        """:func:`run_subjects` of the subjects to do."""
        run_subjects(self.todo, client, submit, write, show_progress=show_progress, what=what,
                     subject_bytes=series_bytes(self.store, self.todo))

    def finish(self, ds: xr.Dataset, command: str, params: dict, *, overwrite: bool,
               export: str | None) -> xr.Dataset:
        """History (when anything ran), ``--export``, and the attributes every map dataset has."""
        if self.todo:
            self.store.append_history(command, {**params, "subjects": self.todo,
                                                "overwrite": overwrite})
        export_after(self.store, export, self.wanted, self.metric)
        ds.attrs.update(metric=self.metric, computed=list(self.todo),
                        skipped=list(self.skipped),
                        seconds=round(time.perf_counter() - self.t0, 3), store=self.store.url)
        return ds


def start_maps(store: Any, metric: str | None, engine: dict, *, subjects: Sequence[str] | None,
               overwrite: bool, storage_options: dict | None, what: str,
               export: str | None = None) -> MapRun:
    """Resolve the engine settings, open the store, check it (and the ``export`` directory)
    and choose the subjects.

    ``metric`` None: the CFH metric of the resolved ``cfh.counterpart``
    (``cfh`` or ``cfh_subject``); ``what`` names the computation in errors.
    """
    t0 = time.perf_counter()
    cfg = engine_settings(engine)
    metric = metric or ("cfh" if cfg.counterpart == "group" else "cfh_subject")
    store = open_writable(store, storage_options)
    if export:  # an unwritable --export directory is found before any compute
        from cfhdask.io.export import check_export_dir

        check_export_dir(export)
    require_hemispheres(store, what)
    wanted, todo, skipped = select_subjects(store, subjects, metric, overwrite)
    return MapRun(store, cfg, metric, wanted, todo, skipped, t0)


# ----------------------------------------------------------------------------- subject mode
def subject_graph(store, subject: str, *, block: int, split_every: int,
                  backend: str = "numpy", kernel: str = "full") -> dict[str, Any]:
    """Lazy per-subject CFH outputs of one subject (hemisphere-local indices) and validity.

    Parameters
    ----------
    kernel : {"full", "auto", "lowrank"}
        :func:`cfhdask.cfh.lowrank_graph.cfh_kernel_graph`: ``full`` is
        :func:`cfhdask.cfh.graph.cfh_graph`, the others the exact low-rank kernel.

    Returns
    -------
    dict of dask arrays
        ``left_rmax``, ``left_arg`` (index into the right hemisphere),
        ``right_rmax``, ``right_arg`` (index into the left hemisphere),
        ``left_valid``, ``right_valid``; with a low-rank kernel also ``kernel``
        (what ran: a dict in a one-element object array).
    """
    zl, vl, zr, vr = subject_series(store, subject, block, backend)
    out = cfh_kernel_graph(zl, zr, vl, vr, kernel=kernel, block=block,
                           split_every=split_every)
    out.update(left_valid=vl, right_valid=vr)
    return out


def kernel_facts(kernel: str, info: dict | None) -> tuple[dict, str]:
    """Store attributes and a log phrase of the kernel one subject ran with."""
    if info is None:
        return {"kernel": kernel, "kernel_used": "full"}, "kernel full"
    facts = {k: info[k] for k in ("kernel", "kernel_used", "rank", "n_candidates",
                                  "candidates_per_voxel", "full_rank_blocks", "n_blocks",
                                  "pilot_candidates", "reason")}
    if info["kernel_used"] == "lowrank":
        phrase = (f"kernel lowrank (k={info['rank']}, {info['n_candidates']} candidates, "
                  f"{info['candidates_per_voxel']:.2f} per voxel"
                  + (f", {info['full_rank_blocks']} full-rank block(s)"
                     if info["full_rank_blocks"] else "") + ")")
    else:
        phrase = f"kernel full ({kernel}: {info['reason']})"
    return facts, phrase


def assemble_maps(store, res: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Store-wide (n_voxels,) ``cfh``, ``counterpart``, ``r`` from one subject's results.

    Midline voxels and excluded voxels get NaN / -1.
    """
    n = store.n_voxels
    r_max = np.full(n, np.nan, dtype=np.float32)
    counterpart = np.full(n, -1, dtype=np.int32)
    left, right = store.left, store.right
    r_max[left] = res["left_rmax"]
    r_max[right] = res["right_rmax"]
    la, ra = np.asarray(res["left_arg"]), np.asarray(res["right_arg"])
    counterpart[left] = np.where(la >= 0, la + right.start, -1)
    counterpart[right] = np.where(ra >= 0, ra + left.start, -1)
    return {"cfh": fisher_z(r_max), "counterpart": counterpart, "r": r_max}


def _write_cfh(store, subject, metric, z, counterpart, r, params, n_const) -> str:
    store.write_cfh(subject, z, counterpart, r, {f"{metric}_params": {**params,
                                                                      "n_constant": n_const},
                                                 "n_constant": n_const}, metric=metric)
    return summary_line(z, n_const)


def _subject_mode(job: MapRun, client, params, show_progress) -> None:
    store = job.store
    kernel = params["kernel"]
    if kernel != "full" and params["backend"] != "numpy":
        log.info("cfh kernel %s: the low-rank block kernel runs on the CPU; the %s backend "
                 "runs the full-rank kernel", kernel, params["backend"])
        kernel = "full"

    def submit(subject):
        return subject_graph(store, subject, block=params["block"],
                             split_every=params["split_every"], backend=params["backend"],
                             kernel=kernel)

    def write(subject, res):
        n_const = int((~res["left_valid"]).sum() + (~res["right_valid"]).sum())
        maps = assemble_maps(store, res)
        info = res.get("kernel")
        facts, phrase = kernel_facts(params["kernel"], None if info is None else info[0])
        line = _write_cfh(store, subject, "cfh_subject", maps["cfh"], maps["counterpart"],
                          maps["r"], {**params, **facts}, n_const)
        return f"{line}, {phrase}"

    job.run(client, submit, write, what="CFH (per-subject maximum)",
            show_progress=show_progress)


# ----------------------------------------------------------------------------- group mode
def _group_values(job: MapRun, client, params, counterpart, show_progress) -> None:
    """Each subject's r with the group counterpart: one O(voxels x T) pass per subject."""
    store = job.store
    partner = np.asarray(counterpart["index"], dtype=np.int64)
    readers = store.series_readers(job.todo)  # every subject checked in one batched read

    def submit(subject):
        return paired_values(store, subject, partner, params["block"], params["backend"],
                             reader=readers[subject])

    def write(subject, res):
        maps = paired_maps(store, res["r"], partner)
        return _write_cfh(store, subject, "cfh", maps["z"], maps["partner"], maps["r"],
                          params, int((~res["valid"]).sum()))

    job.run(client, submit, write, what="CFH (group counterpart)", show_progress=show_progress)


def compute_cfh(
    store: Any,
    *,
    counterpart: str | None = None,
    reference_subjects: Sequence[str] | str | None = None,
    participants: pd.DataFrame | str | None = None,
    subjects: Sequence[str] | None = None,
    block: int | None = None,
    split_every: int | None = None,
    subject_batch: int | None = None,
    client: Any = None,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    export: str | None = None,
    overwrite: bool = False,
    backend: str | None = None,
    show_progress: bool = True,
    storage_options: dict | None = None,
    kernel: str | None = None,
) -> xr.Dataset:
    """Compute and store the CFH maps of every subject that lacks them.

    Parameters
    ----------
    store : CohortStore or str
        The cohort store (opened for writing if a URL is given).
    counterpart : {"group", "subject"}, optional
        Counterpart definition (config ``cfh.counterpart``, default ``group``):
        the argmax of the correlation summed over the reference subjects, or
        each subject's own maximum.  They are stored as the metrics ``cfh``
        and ``cfh_subject``.
    reference_subjects : sequence of str or str, optional
        Group mode only (config ``cfh.reference-subjects``; default every
        ingested subject): subject ids, one participants filter such as
        ``"group==control"`` (needs ``participants``), or the URL of another
        cohort store on the same grid.
    participants : DataFrame or path, optional
        Participants table for a filter in ``reference_subjects``.
    subjects : sequence of str, optional
        Subjects whose maps are computed (default: every ingested subject).
        An unknown subject is a :class:`~cfhdask.errors.CfhdaskInputError`.
        The group counterpart always uses the whole reference set.
    block : int, optional
        Voxels per side of a correlation block (config ``cfh.block``).
    split_every : int, optional
        Fan-in of the tree reductions (config ``cfh.split-every``).
    subject_batch : int, optional
        Subjects per GEMM of the group sum (config ``cfh.subject-batch``).
    client : distributed.Client, optional
        Run on this client.  Otherwise :func:`cfhdask.cluster.dask_client`
        attaches to ``scheduler`` / ``scheduler_file`` or starts the embedded
        LocalCluster.
    scheduler, scheduler_file : str, optional
        Address or scheduler file of a running Dask cluster.
    export : str, optional
        Directory for NIfTI maps (:func:`cfhdask.io.export.export_maps`).
    overwrite : bool
        Recompute subjects that already have complete results (and, in group
        mode, the group counterpart).
    backend : {"numpy", "cupy"}, optional
        Array backend of the kernels (default: config ``cfh.backend``); ``cupy``
        needs CuPy and a GPU on the workers.
    show_progress : bool
        Show a progress bar per subject.
    storage_options : dict, optional
        fsspec options (credentials, endpoint) of a remote store given as a
        URL; the workers read and write the store with them.
    kernel : {"auto", "lowrank", "full"}, optional
        Subject mode: the CFH kernel (config ``cfh.kernel``, default ``auto``):
        the exact low-rank kernel (:mod:`cfhdask.cfh.lowrank_graph`), chosen per
        subject when its data allow (``auto``) or always (``lowrank``), or the
        full-rank GEMM (``full``); the same maxima either way.  What ran
        (``kernel_used``, ``rank``, ``n_candidates``...) is in each subject's
        ``cfh_subject_params``.  Group mode: the group sum over every
        subject's low-rank coefficients, its candidate counterparts summed
        exactly (:mod:`cfhdask.cfh.group_lowrank`), where it pays (``auto``) or
        always (``lowrank``); what ran is in the group counterpart's ``params``.

    Returns
    -------
    xarray.Dataset
        ``cfh`` (Fisher z), ``r`` (Pearson r with the counterpart) and
        ``counterpart`` (store voxel index, -1 where none) with dims
        (subject, voxel) for the requested subjects, lazily read from the
        store; in group mode also ``group_counterpart`` (voxel).  Attrs
        ``metric``, ``counterpart``, ``computed``, ``skipped``, ``n_constant``,
        ``seconds`` and, in group mode, ``reference`` and ``fingerprint``.
    """
    from cfhdask.cfh.group import ensure_group_counterpart

    ref = None if reference_subjects is None else (
        [reference_subjects] if isinstance(reference_subjects, str) else
        list(reference_subjects))
    job = start_maps(store, None, dict(counterpart=counterpart, reference_subjects=ref,
                                       block=block, split_every=split_every,
                                       subject_batch=subject_batch, backend=backend,
                                       kernel=kernel),
                     subjects=subjects, overwrite=overwrite, storage_options=storage_options,
                     what="CFH", export=export)
    cfg, store, metric = job.cfg, job.store, job.metric
    params = job.params(counterpart=cfg.counterpart, split_every=cfg.split_every,
                        fisher_clip=R_CLIP)
    group = None
    with client_for(client, scheduler, scheduler_file) as c:
        if cfg.counterpart == "group":
            group, stale = ensure_group_counterpart(
                store, cfg, participants=participants, client=c, overwrite=overwrite,
                show_progress=show_progress, storage_options=storage_options)
            job.add_todo(stale)
            params.update(counterpart_fingerprint=group["fingerprint"],
                          subject_batch=cfg.subject_batch)
            _group_values(job, c, params, group, show_progress)
        else:
            params.update(kernel=cfg.kernel)
            _subject_mode(job, c, params, show_progress)
    n_constant = {s: int(attrs.get("n_constant", 0))
                  for s, attrs in store.subjects_attrs(job.todo).items()}
    ds = xr.Dataset({"cfh": store.cfh_maps(job.wanted, var=metric),
                     "r": store.cfh_maps(job.wanted, var=f"{metric}_r"),
                     "counterpart": store.cfh_maps(job.wanted, var=f"{metric}_counterpart")})
    if group is not None:
        ds["group_counterpart"] = ("voxel", group["index"])
        ds.attrs.update(reference=group["reference"], fingerprint=group["fingerprint"])
    ds.attrs.update(counterpart=cfg.counterpart, n_constant=n_constant)
    return job.finish(ds, "cfh", params, overwrite=overwrite, export=export)
