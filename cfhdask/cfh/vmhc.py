"""Voxel-mirrored homotopic connectivity (``cfhdask vmhc``), as DPABI and C-PAC define it.

For every voxel of the *symmetrised* mask (voxels whose mirror across x = 0 is
in the mask), VMHC is the Pearson correlation between the voxel's series and
its mirror voxel's series, Fisher-z transformed (DPABI ``y_VMHC``: the image
and its left-right flip correlated voxel by voxel).  The mirror of world
``(x, y, z)`` is ``(-x, y, z)`` (:mod:`cfhdask.cfh.mirror`): exact on a grid
symmetric about x = 0, else the nearest voxel, which the log and the
provenance record.  VMHC presumes anatomical symmetry, i.e. data normalised to
a symmetric template; CFH does not.

One O(voxels x T) pass per subject (:func:`cfhdask.cfh.graph.paired_graph`, one task);
the per-subject loop, skipping and writing are those of :mod:`cfhdask.cfh.compute`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from cfhdask.cfh.compute import (
    client_for,
    paired_maps,
    paired_values,
    start_maps,
    summary_line,
)
from cfhdask.cfh.kernels import R_CLIP
from cfhdask.cfh.mirror import mirror_voxels
from cfhdask.errors import CfhdaskInputError

log = logging.getLogger(__name__)

__all__ = ["compute_vmhc", "store_mirror"]


def store_mirror(store):
    """The mirror voxels of a store's mask (:func:`cfhdask.cfh.mirror.mirror_voxels`).

    Raises
    ------
    CfhdaskInputError
        No voxel of the mask has its mirror in the mask.
    """
    m = mirror_voxels(store.ijk, store.affine, store.grid_shape, store.hemisphere)
    if m.n_pairs == 0:
        raise CfhdaskInputError(
            f"store {store.url}: no voxel of the mask has its mirror (-x, y, z) in the mask; "
            "VMHC needs a mask with mirrored voxels (a symmetric template)")
    if not m.exact:
        log.warning("store %s: the grid is not symmetric about x = 0; each voxel's mirror is "
                    "the voxel nearest to (-x, y, z) (at most %.2f mm away)", store.url,
                    m.max_offset_mm)
    return m


def compute_vmhc(
    store: Any,
    *,
    subjects: Sequence[str] | None = None,
    block: int | None = None,
    client: Any = None,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    export: str | None = None,
    overwrite: bool = False,
    backend: str | None = None,
    show_progress: bool = True,
    storage_options: dict | None = None,
) -> xr.Dataset:
    """Compute and store the VMHC maps of every subject that lacks them.

    Parameters
    ----------
    store : CohortStore or str
        The cohort store (opened for writing if a URL is given).
    subjects : sequence of str, optional
        Default: every ingested subject.
    block : int, optional
        Voxels standardised and paired at once (config ``cfh.block``).
    client, scheduler, scheduler_file
        As :func:`cfhdask.cfh.compute.compute_cfh`.
    export : str, optional
        Directory for ``<subject>_vmhc.nii.gz``.
    overwrite : bool
        Recompute subjects that already have VMHC maps.
    backend : {"numpy", "cupy"}, optional
    show_progress : bool
    storage_options : dict, optional

    Returns
    -------
    xarray.Dataset
        ``vmhc`` (Fisher z) and ``r`` with dims (subject, voxel); ``mirror``
        (voxel) the mirror's store index (-1: none).  Attrs ``mirror_exact``,
        ``max_offset_mm``, ``n_pairs``, ``computed``, ``skipped``, ``seconds``.
    """
    job = start_maps(store, "vmhc", dict(block=block, backend=backend), subjects=subjects,
                     overwrite=overwrite, storage_options=storage_options, what="VMHC",
                     export=export)
    store = job.store
    mirror = store_mirror(store)
    partner = mirror.index
    params = job.params(mirror="exact" if mirror.exact else "nearest",
                        max_offset_mm=round(mirror.max_offset_mm, 4), n_pairs=mirror.n_pairs,
                        fisher_clip=R_CLIP)

    readers = store.series_readers(job.todo)  # every subject checked in one batched read

    def submit(subject):
        return paired_values(store, subject, partner, job.cfg.block, job.cfg.backend,
                             reader=readers[subject])

    def write(subject, res):
        n_const = int((~res["valid"]).sum())
        maps = paired_maps(store, res["r"], partner)
        store.write_metric(subject, "vmhc", {"vmhc": maps["z"], "vmhc_r": maps["r"]},
                           {"vmhc_params": {**params, "n_constant": n_const},
                            "n_constant": n_const})
        return summary_line(maps["z"], n_const)

    with client_for(client, scheduler, scheduler_file) as c:
        job.run(c, submit, write, what="VMHC", show_progress=show_progress)
    ds = xr.Dataset({"vmhc": store.cfh_maps(job.wanted, var="vmhc"),
                     "r": store.cfh_maps(job.wanted, var="vmhc_r")})
    ds["mirror"] = ("voxel", np.asarray(partner, dtype=np.int32))
    ds.attrs.update(mirror_exact=mirror.exact, max_offset_mm=mirror.max_offset_mm,
                    n_pairs=mirror.n_pairs)
    return job.finish(ds, "vmhc", params, overwrite=overwrite, export=export)
