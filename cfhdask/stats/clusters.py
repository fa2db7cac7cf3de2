"""Cluster kernels on a masked voxel set: labelling, sizes, masses, TFCE.

Clusters are connected components of supra-threshold voxels of the mask
under face (6), face+edge (18, SPM/SnPM default) or full (26) connectivity.
Rather than labelling a whole 3D volume, the mask's neighbour table is built
once (:class:`VoxelGraph`) and each map's supra-threshold voxels are joined
along it by a vectorised union-find (hooking + pointer jumping): the cost is
proportional to the number of supra-threshold voxels, not to the grid size,
which makes a null distribution of thousands of maps cheap.

TFCE (Smith & Nichols 2009), with E = 0.5 and H = 2 by default::

    TFCE(v) = sum_{j >= 1, j dh <= t(v)} e_j(v)^E (j dh)^H dh

where ``e_j(v)`` is the size of the cluster of ``{t >= j dh}`` holding ``v``.
The step ``dh`` is the caller's; an analysis scores every map, observed or
permuted, with its own peak / 100, as FSL and PALM do
(:meth:`cfhdask.stats.null.NullSettings.map_dh`); the sum multiplies by
``dh`` (the integral of the paper).  It is computed by a compiled descending union-find
(:mod:`cfhdask.stats.tfce`): O((V k) alpha(V)) per map.

Local maxima (:func:`local_maxima`) are listed as SPM does: a voxel of a
cluster is a local maximum when no neighbour (same connectivity as the
clusters) in its cluster is higher; per cluster the highest one first, then
each next highest that lies more than ``min_distance`` mm from every maximum
already listed, up to ``n_max`` (SPM: 3 maxima more than 8 mm apart).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from cfhdask.stats.tfce import tfce_maps

CONNECTIVITIES = (6, 18, 26)
#: SPM's listing of local maxima: at most this many per cluster ...
N_MAXIMA = 3
#: ... more than this many mm apart.
MAXIMA_DISTANCE_MM = 8.0

__all__ = [
    "CONNECTIVITIES", "MAXIMA_DISTANCE_MM", "N_MAXIMA", "VoxelGraph", "label_clusters",
    "local_maxima", "max_cluster_size_mass", "neighbour_offsets", "tfce", "tfce_step",
    "voxel_graph",
]


def neighbour_offsets(connectivity: int) -> np.ndarray:
    """The "forward" half of the neighbour offsets of a connectivity (k, 3)."""
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity}")
    order = {6: 1, 18: 2, 26: 3}[connectivity]
    offs = [d for d in itertools.product((-1, 0, 1), repeat=3)
            if 0 < sum(map(abs, d)) <= order and d > (0, 0, 0)]
    return np.array(offs, dtype=np.int64)


@dataclass
class VoxelGraph:
    """Neighbour table of a set of voxels.

    Attributes
    ----------
    forward : ndarray of int32, shape (V, k)
        Index of each voxel's forward neighbour in the set, ``V`` when absent
        (a sentinel, so that ``pos[forward]`` with a length ``V + 1`` array works).
    n_voxels : int
    connectivity : int
    """

    forward: np.ndarray
    n_voxels: int
    connectivity: int


def voxel_graph(ijk: np.ndarray, grid_shape, connectivity: int = 18) -> VoxelGraph:
    """Build the neighbour table of voxels ``ijk`` on a grid."""
    ijk = np.asarray(ijk, dtype=np.int64)
    shape = tuple(int(s) for s in grid_shape)
    V = ijk.shape[0]
    index = np.full(shape, V, dtype=np.int64)
    index[tuple(ijk.T)] = np.arange(V)
    offs = neighbour_offsets(connectivity)
    fwd = np.full((V, len(offs)), V, dtype=np.int32)
    for k, d in enumerate(offs):
        nb = ijk + d
        ok = np.all((nb >= 0) & (nb < np.array(shape)), axis=1)
        fwd[ok, k] = index[tuple(nb[ok].T)]
    return VoxelGraph(forward=fwd, n_voxels=V, connectivity=connectivity)


def _edges_among(graph: VoxelGraph, order: np.ndarray):
    """Edges (as positions in ``order``) between voxels of ``order``."""
    pos = np.full(graph.n_voxels + 1, -1, dtype=np.intp)
    pos[order] = np.arange(order.size)
    tgt = pos[graph.forward[order]].ravel()  # (ns * k,)
    e = np.flatnonzero(tgt >= 0)
    return e // graph.forward.shape[1], tgt[e]


def _hook(par: np.ndarray, n: int, src: np.ndarray, tgt: np.ndarray) -> None:
    """Union the sets of ``src``-``tgt`` edges in a fully compressed parent array.

    Vectorised Shiloach–Vishkin: hook the larger root onto the smaller, then
    pointer-jump until every node of ``par[:n]`` points at its root; repeat
    until every edge is inside one set.  ``par`` is updated in place.
    """
    while src.size:
        u, v = par[src], par[tgt]
        diff = u != v
        if not diff.any():
            return
        u, v = u[diff], v[diff]
        src, tgt = src[diff], tgt[diff]
        np.minimum.at(par, np.maximum(u, v), np.minimum(u, v))
        head = par[:n]
        while True:
            nxt = head[head]
            if np.array_equal(nxt, head):
                break
            head = nxt
        par[:n] = head


def _components(n: int, src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Component of ``n`` nodes joined by edges ``src``-``tgt``: its smallest node."""
    par = np.arange(n)
    _hook(par, n, src, tgt)
    return par


def label_clusters(graph: VoxelGraph, active: np.ndarray) -> np.ndarray:
    """Cluster labels of the active voxels.

    Parameters
    ----------
    graph : VoxelGraph
    active : ndarray of bool, shape (V,)

    Returns
    -------
    ndarray of int32, shape (V,)
        0 outside clusters, 1..n inside, numbered by decreasing size (ties by
        the lowest voxel index).
    """
    idx = np.flatnonzero(active)
    labels = np.zeros(graph.n_voxels, dtype=np.int32)
    if idx.size == 0:
        return labels
    comp = _components(idx.size, *_edges_among(graph, idx))
    sizes = np.bincount(comp)
    first = np.full(sizes.size, idx.size)
    np.minimum.at(first, comp, np.arange(idx.size))
    rank = np.lexsort((first, -sizes))  # component ids by decreasing size
    new = np.empty_like(rank)
    new[rank] = np.arange(1, rank.size + 1)
    labels[idx] = new[comp]
    return labels


def max_cluster_size_mass(graph: VoxelGraph, stat: np.ndarray, threshold: float,
                          excess: np.ndarray | None = None):
    """Largest cluster size and mass of ``stat > threshold``.

    The mass of a cluster is ``sum(stat - threshold)`` over its voxels (as
    nilearn), or the sum of ``excess`` when given (e.g. ``z - z_threshold``,
    PALM's convention, for clusters formed on t).

    Returns
    -------
    (int, float)
    """
    idx = np.flatnonzero(stat > threshold)
    if idx.size == 0:
        return 0, 0.0
    comp = _components(idx.size, *_edges_among(graph, idx))
    sizes = np.bincount(comp)
    weights = stat[idx] - threshold if excess is None else excess[idx]
    masses = np.bincount(comp, weights=weights)
    return int(sizes.max()), float(masses.max())


def tfce_step(peak: float, steps: int) -> float:
    """TFCE height step ``dh`` giving exactly ``steps`` levels up to ``peak``.

    ``peak / steps`` in floating point can make ``floor(peak / dh)`` one less
    than ``steps`` (the top level at the peak lost); the step is lowered by
    ulps until ``floor(peak / dh) == steps``.
    """
    if not (np.isfinite(peak) and peak > 0):
        raise ValueError(f"TFCE peak must be a positive number, got {peak}")
    dh = float(peak) / steps
    while np.floor(peak / dh) < steps:
        dh = float(np.nextafter(dh, 0.0))
    return dh


def local_maxima(graph: VoxelGraph, stat: np.ndarray, labels: np.ndarray, xyz: np.ndarray,
                 *, n_max: int = N_MAXIMA, min_distance: float = MAXIMA_DISTANCE_MM
                 ) -> np.ndarray:
    """Up to ``n_max`` local maxima per cluster, more than ``min_distance`` mm apart.

    Parameters
    ----------
    graph : VoxelGraph
        Neighbour table of the voxels (its connectivity defines the neighbours).
    stat : ndarray (V,)
        The map (e.g. the t-map of the contrast).
    labels : ndarray of int (V,)
        Cluster labels, 0 outside clusters, 1..n inside (:func:`label_clusters`).
    xyz : ndarray (V, 3)
        World (MNI) coordinates of the voxels, mm.
    n_max : int
        Maxima listed per cluster (at least 1).
    min_distance : float
        A maximum is listed only if it lies more than this from every one listed
        before it in its cluster (mm).

    Returns
    -------
    ndarray of int64, shape (n_clusters, n_max)
        Row ``c - 1``: voxel indices of cluster ``c``'s maxima by decreasing
        ``stat``, padded with -1.  Column 0 is the cluster's peak (ties go to
        the lowest voxel index).

    Notes
    -----
    A voxel is a local maximum when no neighbour of the same cluster beats it:
    ``stat[w] > stat[v]``, or equal with ``w < v``.  The highest maximum is
    taken first, then greedily each next highest that is far enough from all
    maxima taken so far, as SPM's ``spm_list``.
    """
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    labels = np.asarray(labels)
    stat = np.asarray(stat, dtype=np.float64)
    n_cl = int(labels.max(initial=0))
    out = np.full((n_cl, n_max), -1, dtype=np.int64)
    idx = np.flatnonzero(labels > 0)
    if idx.size == 0:
        return out
    src, tgt = _edges_among(graph, idx)
    same = labels[idx[src]] == labels[idx[tgt]]
    a, b = idx[src[same]], idx[tgt[same]]
    a_wins = (stat[a] > stat[b]) | ((stat[a] == stat[b]) & (a < b))
    is_max = np.ones(graph.n_voxels, dtype=bool)
    is_max[b[a_wins]] = False
    is_max[a[~a_wins]] = False
    cand = idx[is_max[idx]]
    cand = cand[np.lexsort((cand, -stat[cand], labels[cand]))]  # by cluster, then t desc
    starts = np.searchsorted(labels[cand], np.arange(1, n_cl + 2))
    pts = np.asarray(xyz, dtype=np.float64)
    for c in range(n_cl):
        members = cand[starts[c]:starts[c + 1]]
        taken = [int(members[0])]
        for v in members[1:]:
            if len(taken) == n_max:
                break
            if np.sqrt(((pts[taken] - pts[v]) ** 2).sum(axis=1)).min() > min_distance:
                taken.append(int(v))
        out[c, :len(taken)] = taken
    return out


def tfce(graph: VoxelGraph, stat: np.ndarray, dh: float, E: float = 0.5,
         H: float = 2.0) -> np.ndarray:
    """Threshold-free cluster enhancement of the positive part of a map.

    Parameters
    ----------
    graph : VoxelGraph
    stat : ndarray (V,)
    dh : float
        Height step (> 0); levels are ``j dh``, j = 1, 2, ...
    E, H : float
        Extent and height exponents.

    Returns
    -------
    ndarray of float64, shape (V,)

    Notes
    -----
    One map of :func:`tfce_batch`.
    """
    return tfce_batch(graph, np.asarray(stat)[None], [dh], E, H)[0]


def tfce_batch(graph: VoxelGraph, stats: np.ndarray, dhs, E: float = 0.5,
               H: float = 2.0) -> np.ndarray:
    """TFCE of several maps on one voxel graph (the null's hot loop).

    ``TFCE(v) = dh^(H+1) sum_{j <= L(v)} e_j(v)^E j^H`` with ``L(v) =
    floor(stat(v) / dh)``: each map is scored on its integer levels and scaled
    by its own ``dh^(H+1)`` (:mod:`cfhdask.stats.tfce`, one compiled
    descending union-find per map).

    Parameters
    ----------
    graph : VoxelGraph
    stats : ndarray (B, V)
    dhs : float or sequence of B floats
        Height step of each map (> 0).
    E, H : float

    Returns
    -------
    ndarray of float64, shape (B, V)
    """
    stats = np.atleast_2d(np.asarray(stats, dtype=np.float64))
    B, V = stats.shape
    dh = np.broadcast_to(np.asarray(dhs, dtype=np.float64), (B,))
    if not np.all(dh > 0):
        raise ValueError(f"TFCE step dh must be > 0, got {dhs}")
    return tfce_maps(graph.forward, stats, dh, float(E), float(H))
