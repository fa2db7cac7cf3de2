"""Kernels of one permutation batch: t-maps -> maxima of the null statistics.

For each permutation and each sign of the t-map (the two contrasts, A > B and
B > A, share the permutations), the batch keeps only four numbers: max t,
max cluster size, max cluster mass (cluster-forming threshold ``t > t_thr``)
and max TFCE.  No Dask and no I/O here.

The t-maps of the null come from float32 GEMMs
(:func:`~cfhdask.stats.glm.permuted_t_fast`, error ~1e-6).  Every voxel whose
value could sit on the other side of a decision than its float64 value — within
:data:`REFINE_TOL` ``* (1 + |t|)`` of the cluster-forming threshold, of the map's
maximum or minimum, or of a TFCE level — is recomputed in float64
(:func:`~cfhdask.stats.glm.exact_t`), so maxima, cluster membership and TFCE
levels are those of the float64 path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cfhdask.backend import to_numpy
from cfhdask.stats.clusters import VoxelGraph, max_cluster_size_mass, tfce
from cfhdask.stats.glm import MICRO_BATCH, GLMPrep, exact_t, permuted_t, permuted_t_fast
from cfhdask.stats.permute import PermutationSchedule

#: Null statistics kept per permutation and sign, in this order.
NULL_STATS: tuple[str, ...] = ("max_t", "max_size", "max_mass", "max_tfce")
#: Signs of the t-map scored: +t (first contrast) and -t (second).
SIGNS: tuple[int, int] = (1, -1)
#: Relative band (of ``1 + |t|``) around decisions where float32 t are recomputed
#: in float64; the float32 error is ~1e-6 (checked in the tests).
REFINE_TOL = 1e-4


@dataclass(frozen=True)
class NullSettings:
    """What each permutation is scored on.

    Attributes
    ----------
    scheme : str
        "freedman-lane" or "draper-stoneman".
    t_threshold : float
        Cluster-forming threshold on t (one-sided, per sign).
    tfce_dh : float or None
        TFCE height step; ``None`` skips TFCE (its maxima are then 0).
    tfce_E, tfce_H : float
        TFCE exponents.
    """

    scheme: str
    t_threshold: float
    tfce_dh: float | None = None
    tfce_E: float = 0.5
    tfce_H: float = 2.0


def t_maps(prep: GLMPrep, schedule: PermutationSchedule, start: int, stop: int,
           scheme: str) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(k, t_k)`` for permutations ``start <= k < stop``.

    GEMMs run on micro-batches aligned on multiples of
    :data:`~cfhdask.stats.glm.MICRO_BATCH` of the global index, so ``t_k`` is
    bitwise the same however the schedule is split into tasks.
    """
    k = start
    while k < stop:
        mb0 = (k // MICRO_BATCH) * MICRO_BATCH
        mb1 = min(mb0 + MICRO_BATCH, schedule.n_perm)
        t = to_numpy(permuted_t(prep, schedule.batch(mb0, mb1), scheme))
        for kk in range(k, min(mb1, stop)):
            yield kk, t[kk - mb0]
        k = mb1


def refine_decisions(prep: GLMPrep, perm: np.ndarray, t32: np.ndarray,
                     settings: NullSettings) -> np.ndarray:
    """Float64 t-map from a float32 one, exact wherever a decision depends on it.

    Voxels within ``REFINE_TOL * (1 + |t|)`` of ``±t_threshold``, of the
    maximum or the minimum, or (with TFCE) of a level ``j * dh`` are
    recomputed with :func:`~cfhdask.stats.glm.exact_t`.
    """
    a = np.abs(t32)
    thr = settings.t_threshold
    near = np.abs(a - np.float32(thr)) <= np.float32(REFINE_TOL * (1.0 + thr))
    tmax, tmin = float(t32.max()), float(t32.min())
    near |= t32 >= np.float32(tmax - 2 * REFINE_TOL * (1.0 + abs(tmax)))
    near |= t32 <= np.float32(tmin + 2 * REFINE_TOL * (1.0 + abs(tmin)))
    if settings.tfce_dh is not None:
        r = a / np.float32(settings.tfce_dh)
        r -= np.rint(r)
        np.abs(r, out=r)
        near |= r <= (np.float32(REFINE_TOL / settings.tfce_dh) * (1 + a))
    t = t32.astype(np.float64)
    idx = np.flatnonzero(near)
    t[idx] = exact_t(prep, perm, idx, settings.scheme)
    return t


def map_maxima(graph: VoxelGraph, t: np.ndarray, settings: NullSettings) -> np.ndarray:
    """Null maxima of one t-map: array (2 signs, 4 stats) as :data:`NULL_STATS`."""
    out = np.zeros((len(SIGNS), len(NULL_STATS)))
    for i, sign in enumerate(SIGNS):
        s = sign * t
        out[i, 0] = s.max()
        out[i, 1], out[i, 2] = max_cluster_size_mass(graph, s, settings.t_threshold)
        if settings.tfce_dh is not None:
            out[i, 3] = tfce(graph, s, settings.tfce_dh, settings.tfce_E, settings.tfce_H).max()
    return out


def batch_null_maxima(prep: GLMPrep, graph: VoxelGraph, schedule: PermutationSchedule,
                      start: int, stop: int, settings: NullSettings) -> np.ndarray:
    """Null maxima of permutations ``start`` to ``stop - 1``.

    Returns
    -------
    ndarray of shape (stop - start, 2, 4)
    """
    stop = min(stop, schedule.n_perm)
    out = np.zeros((max(0, stop - start), len(SIGNS), len(NULL_STATS)))
    k = start
    while k < stop:
        mb0 = (k // MICRO_BATCH) * MICRO_BATCH
        mb1 = min(mb0 + MICRO_BATCH, schedule.n_perm)
        perms = schedule.batch(mb0, mb1)
        t32 = to_numpy(permuted_t_fast(prep, perms, settings.scheme))
        for kk in range(k, min(mb1, stop)):
            t = refine_decisions(prep, perms[kk - mb0], t32[kk - mb0], settings)
            out[kk - start] = map_maxima(graph, t, settings)
        k = mb1
    return out
