"""Per-subject CFH for a whole cohort store (the ``cfhdask cfh`` command).

For every subject without complete CFH results, :func:`compute_cfh` reads the
subject's series lazily from the store, standardises each hemisphere
(constant-in-this-subject voxels are excluded), builds the block graph of
:func:`cfhdask.cfh.graph.cfh_graph`, computes it on a Dask cluster and writes
the subject whole (``cfh``, ``counterpart``, ``r_max``) before marking it
complete.  A rerun skips complete subjects; an interrupted run leaves none
half-written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from cfhdask._version import __version__
from cfhdask.backend import cupy_available
from cfhdask.cfh.graph import cfh_graph, standardize_graph
from cfhdask.cfh.kernels import CONSTANT_RTOL, R_CLIP, fisher_z
from cfhdask.errors import CfhdaskInputError
from cfhdask.settings import settings

log = logging.getLogger(__name__)

#: variables written per subject, in the order of the returned Dataset
CFH_VARIABLES = ("cfh", "counterpart", "r_max")


def _open(store: Any, storage_options: dict | None = None):
    from cfhdask.io.store import CohortStore, open_store

    if isinstance(store, CohortStore):
        if not store.writable:
            return open_store(store.url, mode="r+",
                              storage_options=storage_options or store.storage_options)
        return store
    return open_store(str(store), mode="r+", storage_options=storage_options)


def subject_graph(store, subject: str, *, block: int, split_every: int,
                  backend: str = "numpy") -> dict[str, Any]:
    """Lazy CFH outputs of one subject (hemisphere-local indices) and validity masks.

    Returns
    -------
    dict of dask arrays
        ``left_rmax``, ``left_arg`` (index into the right hemisphere),
        ``right_rmax``, ``right_arg`` (index into the left hemisphere),
        ``left_valid``, ``right_valid``.
    """
    bold = store.bold(subject)
    zl, vl = standardize_graph(bold[store.left], block=block, backend=backend)
    zr, vr = standardize_graph(bold[store.right], block=block, backend=backend)
    out = cfh_graph(zl, zr, vl, vr, block=block, split_every=split_every)
    out.update(left_valid=vl, right_valid=vr)
    return out


def assemble_maps(store, res: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Store-wide (n_voxels,) ``cfh``, ``counterpart``, ``r_max`` from one subject's results.

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
    return {"cfh": fisher_z(r_max), "counterpart": counterpart, "r_max": r_max}


def _progress(futures: list, enabled: bool) -> None:
    """A progress bar for a subject's tasks, on terminals only (logs get a line per subject)."""
    import sys

    if not enabled or not sys.stderr.isatty():
        return
    try:
        from distributed import progress

        progress(futures)
    except Exception as exc:  # pragma: no cover - progress is cosmetic
        log.debug("no progress bar: %s", exc)


def compute_cfh(
    store: Any,
    *,
    subjects: Sequence[str] | None = None,
    block: int | None = None,
    split_every: int | None = None,
    client: Any = None,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    export: str | None = None,
    overwrite: bool = False,
    backend: str | None = None,
    show_progress: bool = True,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Compute and store the CFH maps of every subject that lacks them.

    Parameters
    ----------
    store : CohortStore or str
        The cohort store (opened for writing if a URL is given).
    subjects : sequence of str, optional
        Subjects to process (default: every ingested subject).  An unknown
        subject is a :class:`~cfhdask.errors.CfhdaskInputError`.
    block : int, optional
        Voxels per side of a correlation block (config ``cfh.block``).
    split_every : int, optional
        Fan-in of the tree reductions (config ``cfh.split-every``).
    client : distributed.Client, optional
        Run on this client.  Otherwise :func:`cfhdask.cluster.dask_client`
        attaches to ``scheduler`` / ``scheduler_file`` or starts the embedded
        LocalCluster.
    scheduler, scheduler_file : str, optional
        Address or scheduler file of a running Dask cluster.
    export : str, optional
        Directory for NIfTI maps (:func:`cfhdask.io.export.export_maps`).
    overwrite : bool
        Recompute subjects that already have complete results.
    backend : {"numpy", "cupy"}, optional
        Array backend of the kernels (default: config ``cfh.backend``, "numpy"); ``cupy`` needs
        CuPy and a GPU on the workers.
    show_progress : bool
        Show a progress bar per subject.
    storage_options : dict, optional
        fsspec options (credentials, endpoint) of a remote store given as a
        URL; the workers read and write the store with them.

    Returns
    -------
    xarray.Dataset
        ``cfh`` (Fisher z), ``counterpart`` (store voxel index) and ``r_max``
        with dims (subject, voxel) for the requested subjects, lazily read
        from the store; attrs ``computed``, ``skipped``, ``n_constant``
        (per computed subject) and ``seconds``.
    """
    from cfhdask.cluster import dask_client

    t0 = time.perf_counter()
    backend = backend or settings().cfh.backend
    if backend not in ("numpy", "cupy"):
        raise CfhdaskInputError(f"--backend: unknown backend {backend!r} (numpy or cupy)")
    if backend == "cupy" and not cupy_available():
        raise CfhdaskInputError("--backend cupy: CuPy is not installed or sees no GPU")
    block = int(block or settings().cfh.block)
    split_every = int(split_every or settings().cfh.split_every)
    if block < 2:
        raise CfhdaskInputError(f"--block must be at least 2, got {block}")
    store = _open(store, storage_options)
    ingested = store.subjects("ingested")
    if subjects is None:
        wanted = ingested
    else:
        wanted = list(dict.fromkeys(subjects))
        missing = [s for s in wanted if s not in ingested]
        if missing:
            raise CfhdaskInputError(
                f"--subjects: not ingested in {store.url}: {', '.join(missing)}")
    done = set(store.subjects("cfh"))
    todo = [s for s in wanted if overwrite or s not in done]
    skipped = [s for s in wanted if s not in todo]
    if skipped:
        log.info("Skipping %d subject(s) with complete CFH: %s", len(skipped),
                 ", ".join(skipped))
    if store.n_left == 0 or store.n_right == 0:
        raise CfhdaskInputError(
            f"store {store.url}: the mask has {store.n_left} left and {store.n_right} right "
            "voxels; CFH needs both hemispheres")

    params = {"block": block, "split_every": split_every, "backend": backend,
              "fisher_clip": R_CLIP, "constant_rtol": CONSTANT_RTOL,
              "cfhdask_version": __version__}
    n_constant: dict[str, int] = {}
    if todo:
        if client is not None:
            _run_subjects(store, todo, client, params, n_constant, show_progress)
        else:
            with dask_client(scheduler=scheduler, scheduler_file=scheduler_file) as c:
                _run_subjects(store, todo, c, params, n_constant, show_progress)
        store.append_history("cfh", {**params, "subjects": todo, "overwrite": overwrite})

    if export:
        from cfhdask.io.export import export_maps

        export_maps(store, export, subjects=wanted)
        log.info("Exported NIfTI maps of %d subject(s) to %s", len(wanted), export)

    ds = xr.Dataset({var: store.cfh_maps(wanted, var=var) for var in CFH_VARIABLES})
    ds.attrs.update(computed=list(todo), skipped=list(skipped), n_constant=n_constant,
                    seconds=round(time.perf_counter() - t0, 3), store=store.url)
    return ds


def _submit(store, subject: str, client, params: dict) -> tuple[list[str], list]:
    graph = subject_graph(store, subject, block=params["block"],
                          split_every=params["split_every"], backend=params["backend"])
    names = list(graph)
    return names, client.compute([graph[k] for k in names])


def _run_subjects(store, todo: list[str], client, params: dict,
                  n_constant: dict[str, int], show_progress: bool) -> None:
    """Compute subjects one after the other, the next one submitted before waiting."""
    log.info("CFH of %d subject(s) on %s; dashboard %s", len(todo),
             getattr(client.scheduler, "address", client), client.dashboard_link)
    pending = _submit(store, todo[0], client, params)
    for k, subject in enumerate(todo):
        t0 = time.perf_counter()
        names, futures = pending
        if k + 1 < len(todo):  # keep the cluster busy while this subject is written
            pending = _submit(store, todo[k + 1], client, params)
        _progress(futures, show_progress)
        res = dict(zip(names, client.gather(futures), strict=True))
        n_const = int((~res["left_valid"]).sum() + (~res["right_valid"]).sum())
        maps = assemble_maps(store, res)
        store.write_cfh(subject, maps["cfh"], maps["counterpart"], maps["r_max"],
                        {"cfh_params": params, "n_constant": n_const})
        n_constant[subject] = n_const
        valid = np.isfinite(maps["cfh"])
        log.info("CFH %s (%d/%d): %d voxels, %d constant excluded, mean z %.4f (%.1f s)",
                 subject, k + 1, len(todo), int(valid.sum()), n_const,
                 float(maps["cfh"][valid].mean()) if valid.any() else float("nan"),
                 time.perf_counter() - t0)
