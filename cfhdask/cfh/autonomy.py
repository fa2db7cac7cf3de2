"""The autonomy index (``cfhdask autonomy``): hemispheric specialisation, voxel by voxel.

Wang, Buckner & Liu (2014, PNAS), the "specialization" measure this literature
pairs with CFH's "cooperation"::

    AI(v) = N_ipsi(v) / |H_ipsi| - N_contra(v) / |H_contra|

where ``N_ipsi`` and ``N_contra`` count the voxels of the voxel's own and of
the other hemisphere whose correlation with it exceeds the threshold (default
0.25), the voxel itself excluded.  ``|H_ipsi|`` and ``|H_contra|`` are the
voxels that could have been counted in this subject: the valid (non-constant)
voxels of the own hemisphere other than ``v``, and of the other hemisphere.

The counts are count reductions on the CFH block engine
(:func:`cfhdask.cfh.graph.autonomy_graph`): left x left and right x right
blocks (upper triangle only) and left x right blocks, both hemispheres from
the same blocks.  The per-subject loop is that of :mod:`cfhdask.cfh.compute`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from cfhdask.cfh.compute import (
    client_for,
    start_maps,
    subject_series,
    summary_line,
)
from cfhdask.cfh.graph import autonomy_graph
from cfhdask.cfh.kernels import autonomy_index
from cfhdask.settings import resolve

log = logging.getLogger(__name__)

__all__ = ["autonomy_maps", "compute_autonomy"]


def autonomy_maps(store, res: dict[str, np.ndarray]) -> np.ndarray:
    """Store-wide AI (NaN on the midline and at constant voxels) from one subject's counts."""
    ai = np.full(store.n_voxels, np.nan, dtype=np.float32)
    lv, rv = np.asarray(res["left_valid"]), np.asarray(res["right_valid"])
    n_l, n_r = int(lv.sum()), int(rv.sum())
    for sl, valid, ipsi, contra, h_i, h_c in (
            (store.left, lv, res["left_ipsi"], res["left_contra"], n_l - 1, n_r),
            (store.right, rv, res["right_ipsi"], res["right_contra"], n_r - 1, n_l)):
        values = autonomy_index(ipsi, contra, h_i, h_c)
        ai[sl] = np.where(valid, values, np.nan)
    return ai


def compute_autonomy(
    store: Any,
    *,
    threshold: float | None = None,
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
    """Compute and store the autonomy-index maps of every subject that lacks them.

    Parameters
    ----------
    store : CohortStore or str
        The cohort store (opened for writing if a URL is given).
    threshold : float, optional
        Correlations above it count (config ``autonomy.threshold``, default
        0.25); must lie in (-1, 1).  Maps computed with another threshold are
        recomputed.
    subjects : sequence of str, optional
        Default: every ingested subject.
    block, split_every : int, optional
        The block engine (config ``cfh.block``, ``cfh.split-every``).
    client, scheduler, scheduler_file
        As :func:`cfhdask.cfh.compute.compute_cfh`.
    export : str, optional
        Directory for ``<subject>_ai.nii.gz``.
    overwrite : bool
    backend : {"numpy", "cupy"}, optional
    show_progress : bool
    storage_options : dict, optional

    Returns
    -------
    xarray.Dataset
        ``ai`` with dims (subject, voxel); attrs ``threshold``, ``computed``,
        ``skipped``, ``seconds``.
    """
    threshold = resolve("autonomy", {"threshold": threshold}, style="cli").threshold
    job = start_maps(store, "ai", dict(block=block, split_every=split_every, backend=backend),
                     subjects=subjects, overwrite=overwrite, storage_options=storage_options,
                     what="the autonomy index", export=export)
    store, cfg = job.store, job.cfg
    other = [s for s in job.skipped
             if store.metric_params(s, "ai").get("threshold") != threshold]
    if other:
        log.warning("Recomputing the autonomy index of %d subject(s) computed with another "
                    "threshold (now %g)", len(other), threshold)
        job.add_todo(other)
    params = job.params(threshold=threshold, split_every=cfg.split_every,
                        denominators="valid voxels: own hemisphere without the voxel, other "
                                     "hemisphere")

    def submit(subject):
        zl, vl, zr, vr = subject_series(store, subject, cfg.block, cfg.backend)
        out = autonomy_graph(zl, zr, vl, vr, threshold=threshold, block=cfg.block,
                             split_every=cfg.split_every)
        out.update(left_valid=vl, right_valid=vr)
        return out

    def write(subject, res):
        n_const = int((~res["left_valid"]).sum() + (~res["right_valid"]).sum())
        ai = autonomy_maps(store, res)
        store.write_metric(subject, "ai", {"ai": ai},
                           {"ai_params": {**params, "n_constant": n_const},
                            "n_constant": n_const})
        return summary_line(ai, n_const).replace("mean z", "mean AI")

    with client_for(client, scheduler, scheduler_file) as c:
        job.run(c, submit, write, what="Autonomy index", show_progress=show_progress)
    ds = xr.Dataset({"ai": store.cfh_maps(job.wanted, var="ai")})
    ds.attrs.update(threshold=threshold)
    return job.finish(ds, "autonomy", params, overwrite=overwrite, export=export)
