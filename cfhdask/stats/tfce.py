"""Threshold-free cluster enhancement, compiled: the permutation null's hot loop.

``TFCE(v) = dh^(H+1) sum_{j=1}^{L(v)} e_j(v)^E j^H`` with ``L(v) = floor(stat(v) /
dh)`` and ``e_j(v)`` the size of the cluster of ``{u : L(u) >= j}`` that holds
``v`` (Smith & Nichols 2009; the sum at heights ``j dh`` as FSL and PALM).

One pass of a descending union-find (a component tree built on the fly) per
map: the edges between supra-level voxels enter at the lower level of their
two ends and are taken level by level from the top; each component root
carries a lazy sum, its contribution ``size^E * sum_j j^H`` being settled only
when its size changes, and a root hooked under another keeps its value
relative to the new root, so a voxel's TFCE is the sum of the values on its
path to the root.  Union by size and path compression keep the paths short:
``O((V k) alpha(V))`` per map for ``V`` voxels of ``k`` forward neighbours,
in one compiled loop (numba) with no per-level array calls.

A pure kernel: NumPy arrays in, NumPy arrays out, no Dask.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["tfce_maps"]


def tfce_maps(forward: np.ndarray, stats: np.ndarray, dhs: np.ndarray, E: float,
              H: float) -> np.ndarray:
    """TFCE of each row of ``stats`` on the voxel graph ``forward``.

    Parameters
    ----------
    forward : ndarray of int32, shape (V, k)
        Forward neighbours of each voxel, ``V`` where absent
        (:attr:`cfhdask.stats.clusters.VoxelGraph.forward`).
    stats : ndarray of float64, shape (B, V)
        Maps (non-finite values count as 0).
    dhs : ndarray of float64, shape (B,)
        Height step of each map (> 0).
    E, H : float
        Extent and height exponents.

    Returns
    -------
    ndarray of float64, shape (B, V)
    """
    stats = np.ascontiguousarray(stats, dtype=np.float64)
    dhs = np.ascontiguousarray(dhs, dtype=np.float64)
    out = np.zeros(stats.shape)
    for b in range(stats.shape[0]):
        _tfce_one(np.ascontiguousarray(forward), stats[b], float(dhs[b]), float(E), float(H),
                  out[b])
    return out


@numba.njit(cache=True, nogil=True)
def _find(par, val, x):
    """Root of ``x``; compresses the path, keeping each value relative to the root."""
    r = x
    total = 0.0  # the values strictly below the root on the path
    while par[r] != r:
        total += val[r]
        r = par[r]
    y = x
    while y != r:
        nxt = par[y]
        own = val[y]
        val[y] = total
        total -= own
        par[y] = r
        y = nxt
    return r


@numba.njit(cache=True, nogil=True)
def _tfce_one(forward, stat, dh, E, H, out):
    V, k = forward.shape
    lvl = np.zeros(V, dtype=np.int64)
    top = 0
    for v in range(V):
        s = stat[v]
        if np.isfinite(s):
            q = np.floor(s / dh)
            if q >= 1:
                lvl[v] = np.int64(q)
                if lvl[v] > top:
                    top = lvl[v]
    if top == 0:
        return
    # edges between supra-level voxels, bucketed by the level at which they appear
    count = np.zeros(top + 2, dtype=np.int64)
    n_edges = 0
    for v in range(V):
        if lvl[v] >= 1:
            for c in range(k):
                u = forward[v, c]
                if u < V and lvl[u] >= 1:
                    count[min(lvl[v], lvl[u])] += 1
                    n_edges += 1
    start = np.zeros(top + 2, dtype=np.int64)  # descending levels, stored top first
    for j in range(top - 1, 0, -1):
        start[j] = start[j + 1] + count[j + 1]
    fill = start.copy()
    ea = np.empty(n_edges, dtype=np.int64)
    eb = np.empty(n_edges, dtype=np.int64)
    for v in range(V):
        if lvl[v] >= 1:
            for c in range(k):
                u = forward[v, c]
                if u < V and lvl[u] >= 1:
                    j = min(lvl[v], lvl[u])
                    ea[fill[j]] = v
                    eb[fill[j]] = u
                    fill[j] += 1
    cum = np.zeros(top + 1)  # cum[j] = sum_{i <= j} i^H
    for j in range(1, top + 1):
        cum[j] = cum[j - 1] + float(j) ** H
    par = np.arange(V)
    val = np.zeros(V)
    size = np.ones(V)
    pending = lvl.copy()  # highest level of a root not yet in its value
    for j in range(top, 0, -1):
        for e in range(start[j], start[j] + count[j]):
            ra = _find(par, val, ea[e])
            rb = _find(par, val, eb[e])
            if ra == rb:
                continue
            # settle the levels above j of both roots, then hook the smaller
            val[ra] += size[ra] ** E * (cum[pending[ra]] - cum[j])
            pending[ra] = j
            val[rb] += size[rb] ** E * (cum[pending[rb]] - cum[j])
            pending[rb] = j
            if size[ra] < size[rb] or (size[ra] == size[rb] and ra > rb):
                ra, rb = rb, ra
            par[rb] = ra
            val[rb] -= val[ra]
            size[ra] += size[rb]
    scale = dh ** (H + 1.0)
    for v in range(V):
        if lvl[v] >= 1 and par[v] == v:
            val[v] += size[v] ** E * cum[pending[v]]
    for v in range(V):
        if lvl[v] >= 1:
            r = _find(par, val, v)
            out[v] = scale * (val[v] + (val[r] if r != v else 0.0))
