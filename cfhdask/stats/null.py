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
levels are those of the float64 path.  So is every supra-threshold voxel, so
that cluster masses are float64 sums too: no null statistic depends on how the
float32 GEMM was split into threads, so results are bitwise the same whatever
the BLAS threads of the workers (and hence whatever their number).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cfhdask.backend import to_numpy
from cfhdask.stats.clusters import VoxelGraph, max_cluster_size_mass, tfce_batch, tfce_step
from cfhdask.stats.glm import MICRO_BATCH, GLMPrep, exact_t, permuted_t, permuted_t_fast
from cfhdask.stats.permute import PermutationSchedule

#: Null statistics kept per permutation and sign, in this order.
NULL_STATS: tuple[str, ...] = ("max_t", "max_size", "max_mass", "max_tfce")
#: Signs of the t-map scored: +t (first contrast) and -t (second).
SIGNS: tuple[int, int] = (1, -1)
#: Relative band (of ``1 + |t|``) around decisions where float32 t are recomputed
#: in float64; the float32 error is ~1e-6 (checked in the tests).
REFINE_TOL = 1e-4
#: TFCE exponents (extent E, height H), as FSL and the paper.
TFCE_E, TFCE_H = 0.5, 2.0
#: Number of TFCE steps up to each map's own peak when no fixed step is given
#: (``dh = peak / 100``, as FSL's randomise and PALM's ``palm_tfce``).
TFCE_STEPS = 100


def t_to_z(t: np.ndarray, df: float) -> np.ndarray:
    """The z of the same one-sided p as each t at ``df`` (sign kept; exact far in the tails).

    ``z = -Phi^-1(log S_t(|t|))`` through the log survival function, so
    t = 40 at df = 20 gives a finite z (PALM's ``palm_gtoz`` for t).
    """
    from scipy import special
    from scipy import stats as sstats

    t = np.asarray(t, dtype=np.float64)
    z = -special.ndtri_exp(sstats.t.logsf(np.abs(t), df))
    return np.copysign(z, t)


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
        A fixed TFCE height step for every map.
    tfce_steps : int or None
        Without a fixed step: every map (each permutation, each sign) is scored
        with its own step, its peak / ``tfce_steps`` (:meth:`map_dh`), as FSL
        and PALM do.  The statistic is then the same function of every map, so
        the permutation test stays exact; a step taken from the observed map
        and reused for the permutations would put the observed peak, and only
        it, exactly on a level, favouring it (measured: a TFCE FWER of 0.066
        for a nominal 0.049).  TFCE is skipped (its maxima are 0) when both are
        ``None``.
    tfce_E, tfce_H : float
        TFCE exponents.
    z_df : float or None
        With a value, cluster mass and TFCE are computed on z (``t_to_z`` at
        these degrees of freedom, PALM's convention) instead of t; clusters are
        still formed by ``t > t_threshold`` (the same voxels).
    z_threshold : float or None
        The cluster-forming threshold as z (mass is ``sum(z - z_threshold)``).
    """

    scheme: str
    t_threshold: float
    tfce_dh: float | None = None
    tfce_steps: int | None = None
    tfce_E: float = 0.5
    tfce_H: float = 2.0
    z_df: float | None = None
    z_threshold: float | None = None

    @property
    def tfce(self) -> bool:
        """Whether TFCE is scored."""
        return self.tfce_dh is not None or self.tfce_steps is not None

    def map_dh(self, e: np.ndarray) -> float:
        """TFCE step of one signed map ``e`` (on the scale of :meth:`enhanced`).

        The fixed step, or the map's own peak / ``tfce_steps`` (guarded so that
        the peak keeps its top level, :func:`~cfhdask.stats.clusters.tfce_step`);
        a map without a positive value has no TFCE whatever the step (1.0).
        """
        if self.tfce_dh is not None:
            return float(self.tfce_dh)
        if self.tfce_steps is None:
            raise ValueError("TFCE is off in these settings")
        peak = float(np.max(e)) if np.size(e) else 0.0
        return tfce_step(peak, self.tfce_steps) if np.isfinite(peak) and peak > 0 else 1.0

    def enhanced(self, t: np.ndarray) -> np.ndarray:
        """The map mass and TFCE are computed on: ``t``, or its z (PALM)."""
        return t if self.z_df is None else t_to_z(t, self.z_df)

    @property
    def mass_threshold(self) -> float:
        """Cluster-forming threshold on the scale of :meth:`enhanced`."""
        return self.t_threshold if self.z_df is None else float(self.z_threshold)


def observed_t(prep: GLMPrep, schedule: PermutationSchedule, scheme: str) -> np.ndarray:
    """The observed t-map (float64): permutation 0 of ``schedule``, the identity."""
    _, t = next(t_maps(prep, schedule, 0, 1, scheme))
    return np.array(t)


def null_settings(df: int, *, scheme: str, cluster_p: float, tfce: bool,
                  tfce_dh: float | None = None, mass_tfce_on: str = "t") -> NullSettings:
    """What every permutation of an analysis is scored on: nothing of its observed t-map,
    so the permutations can start before the observed map reaches the client.

    The cluster-forming threshold is the one-sided t of ``cluster_p`` at
    ``df``; with ``mass_tfce_on="z"`` mass and TFCE are on z (PALM); with
    TFCE every map is scored with its own step (:meth:`NullSettings.map_dh`)
    unless ``tfce_dh`` fixes one.  ``cfhdask stats`` and the null-check
    both call this, so a split of a null-check is scored as a study is.
    """
    from scipy import stats as sstats

    on_z = mass_tfce_on == "z"
    return NullSettings(scheme=scheme, t_threshold=float(sstats.t.isf(cluster_p, df)),
                        tfce_dh=float(tfce_dh) if tfce and tfce_dh is not None else None,
                        tfce_steps=TFCE_STEPS if tfce and tfce_dh is None else None,
                        tfce_E=TFCE_E, tfce_H=TFCE_H,
                        z_df=float(df) if on_z else None,
                        z_threshold=float(sstats.norm.isf(cluster_p)) if on_z else None)


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

    Voxels above ``±t_threshold`` or within ``REFINE_TOL * (1 + |t|)`` below
    it (cluster members, whose values sum into the masses), near the maximum
    or the minimum, or (with TFCE) near a level ``j * dh`` are recomputed
    with :func:`~cfhdask.stats.glm.exact_t`.
    """
    a = np.abs(t32)
    thr = settings.t_threshold
    near = a >= np.float32(thr - REFINE_TOL * (1.0 + thr))
    tmax, tmin = float(t32.max()), float(t32.min())
    near |= t32 >= np.float32(tmax - 2 * REFINE_TOL * (1.0 + abs(tmax)))
    near |= t32 <= np.float32(tmin + 2 * REFINE_TOL * (1.0 + abs(tmin)))
    t = t32.astype(np.float64)
    idx = np.flatnonzero(near)
    t[idx] = exact_t(prep, perm, idx, settings.scheme)
    if settings.tfce:
        # the steps come from the peaks, exact by now; then the voxels near a level
        ef = settings.enhanced(t)
        e = np.abs(ef).astype(np.float32)
        lvl = np.zeros(t.size, dtype=bool)
        for sign in SIGNS:
            dh = settings.map_dh(sign * ef)
            r = e / np.float32(dh)
            r -= np.rint(r)
            np.abs(r, out=r)
            lvl |= r <= (np.float32(REFINE_TOL / dh) * (1 + e))
        more = np.flatnonzero(lvl & ~near)
        if more.size:
            t[more] = exact_t(prep, perm, more, settings.scheme)
    return t




def map_maxima(graph: VoxelGraph, t: np.ndarray, settings: NullSettings,
               with_tfce: bool = True) -> np.ndarray:
    """Null maxima of one t-map: array (2 signs, 4 stats) as :data:`NULL_STATS`.

    With ``with_tfce=False`` the TFCE column is left 0 (see :func:`tfce_maps`).
    """
    out = np.zeros((len(SIGNS), len(NULL_STATS)))
    z = settings.enhanced(t) if settings.z_df is not None else None
    for i, sign in enumerate(SIGNS):
        s = sign * t
        e = s if z is None else sign * z
        out[i, 0] = s.max()
        out[i, 1], out[i, 2] = max_cluster_size_mass(
            graph, s, settings.t_threshold,
            None if z is None else e - settings.mass_threshold)
    if with_tfce and settings.tfce:
        out[:, 3] = tfce_maxima(graph, t[None], settings)[0]
    return out


def tfce_maxima(graph: VoxelGraph, ts: np.ndarray, settings: NullSettings) -> np.ndarray:
    """Peak TFCE of each sign of each t-map of ``ts`` (B, V): array (B, 2).

    Each of the ``2 B`` signed maps is scored with its own step
    (:meth:`NullSettings.map_dh`).
    """
    ts = np.atleast_2d(ts)
    e = settings.enhanced(ts) if settings.z_df is not None else ts
    maps = np.concatenate([sign * e for sign in SIGNS])  # sign-major: (2 B, V)
    dhs = [settings.map_dh(m) for m in maps]
    scores = tfce_batch(graph, maps, dhs, settings.tfce_E, settings.tfce_H)
    return scores.max(axis=1).reshape(len(SIGNS), ts.shape[0]).T


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
        ks = range(k, min(mb1, stop))
        ts = np.stack([refine_decisions(prep, perms[kk - mb0], t32[kk - mb0], settings)
                       for kk in ks])
        for j, kk in enumerate(ks):
            out[kk - start] = map_maxima(graph, ts[j], settings, with_tfce=False)
        if settings.tfce:
            out[k - start:ks.stop - start, :, 3] = tfce_maxima(graph, ts, settings)
        k = mb1
    return out
