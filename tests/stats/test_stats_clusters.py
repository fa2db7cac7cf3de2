"""Cluster kernels against scipy.ndimage.label and a brute-force TFCE."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cfhdask.stats.clusters import (
    label_clusters,
    local_maxima,
    max_cluster_size_mass,
    neighbour_offsets,
    tfce,
    voxel_graph,
)

SHAPE = (12, 14, 10)
ORDER = {6: 1, 18: 2, 26: 3}


def _field(rng, smooth=1.2):
    vol = ndimage.gaussian_filter(rng.standard_normal(SHAPE), smooth)
    vol /= vol.std()
    mask = rng.random(SHAPE) > 0.15
    return vol, mask


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_offsets_count(connectivity):
    assert len(neighbour_offsets(connectivity)) == connectivity // 2


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_cluster_sizes_equal_ndimage_label(rng, connectivity):
    vol, mask = _field(rng)
    ijk = np.argwhere(mask)
    s = vol[mask]
    g = voxel_graph(ijk, SHAPE, connectivity)
    struct = ndimage.generate_binary_structure(3, ORDER[connectivity])
    for thr in (0.3, 1.0, 2.0):
        labels = label_clusters(g, s > thr)
        ref, n = ndimage.label(np.where(mask, vol, -np.inf) > thr, struct)
        assert labels.max() == n
        ref_sizes = np.bincount(ref.ravel())[1:]
        sizes = np.bincount(labels)[1:]
        np.testing.assert_array_equal(sizes, np.sort(ref_sizes)[::-1])
        # same partition: each of our clusters is exactly one ndimage cluster
        for c in range(1, n + 1):
            assert np.unique(ref[tuple(ijk[labels == c].T)]).size == 1
        mass_ref = max(np.sum(vol[ref == c] - thr) for c in range(1, n + 1)) if n else 0.0
        size, mass = max_cluster_size_mass(g, s, thr)
        assert size == (ref_sizes.max() if n else 0)
        assert mass == pytest.approx(mass_ref)


def test_no_supra_threshold_voxel(rng):
    g = voxel_graph(np.argwhere(np.ones(SHAPE, bool)), SHAPE, 18)
    s = np.zeros(g.n_voxels)
    assert max_cluster_size_mass(g, s, 1.0) == (0, 0.0)
    assert label_clusters(g, s > 1).max() == 0
    assert not tfce(g, s, 0.1).any()


def _tfce_brute(vol, mask, dh, connectivity, E=0.5, H=2.0):
    struct = ndimage.generate_binary_structure(3, ORDER[connectivity])
    out = np.zeros(vol.shape)
    masked = np.where(mask, vol, -np.inf)
    j = 1
    while j * dh <= masked.max():
        lab, _ = ndimage.label(masked >= j * dh, struct)
        size = np.bincount(lab.ravel()).astype(float)
        size[0] = 0
        out += size[lab] ** E * (j * dh) ** H * dh
        j += 1
    return out[mask]


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_tfce_equals_brute_force(rng, connectivity):
    vol, mask = _field(rng)
    vol *= 2
    g = voxel_graph(np.argwhere(mask), SHAPE, connectivity)
    dh = float(np.abs(vol[mask]).max()) / 60
    np.testing.assert_allclose(tfce(g, vol[mask], dh), _tfce_brute(vol, mask, dh, connectivity),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="dh"):
        tfce(g, vol[mask], 0.0)


def _maxima_brute(vol, mask, thr, connectivity, spacing, n_max, min_distance):
    """SPM's listing, voxel by voxel on the grid: local maxima, then greedy 8 mm rule."""
    struct = ndimage.generate_binary_structure(3, ORDER[connectivity])
    lab, n = ndimage.label(np.where(mask, vol, -np.inf) > thr, struct)
    offs = [np.array(d) - 1 for d in np.argwhere(struct) if tuple(d) != (1, 1, 1)]
    flat = np.full(vol.shape, -1)
    flat[mask] = np.arange(mask.sum())  # voxel index in mask order (ties: lower wins)
    out = {}
    for c in range(1, n + 1):
        maxima = []
        for v in np.argwhere(lab == c):
            beaten = False
            for d in offs:
                w = v + d
                if np.any(w < 0) or np.any(w >= vol.shape) or lab[tuple(w)] != c:
                    continue
                tv, tw = vol[tuple(v)], vol[tuple(w)]
                if tw > tv or (tw == tv and flat[tuple(w)] < flat[tuple(v)]):
                    beaten = True
                    break
            if not beaten:
                maxima.append((-vol[tuple(v)], flat[tuple(v)], v))
        maxima.sort(key=lambda m: (m[0], m[1]))
        taken = []
        for _, f, v in maxima:
            if len(taken) < n_max and all(
                    np.linalg.norm((v - u) * spacing) > min_distance for _, u in taken):
                taken.append((f, v))
        out[frozenset(flat[lab == c].tolist())] = [f for f, _ in taken]
    return out


@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize(("n_max", "min_distance"), [(3, 8.0), (5, 4.0), (1, 8.0)])
def test_local_maxima_equal_brute_force(rng, connectivity, n_max, min_distance):
    vol, mask = _field(rng, smooth=1.0)
    vol[2:4, 3:5, 2:4] = vol.max() + 1  # a plateau: ties go to the lowest voxel index
    mask[2:4, 3:5, 2:4] = True
    ijk = np.argwhere(mask)
    spacing = np.array([3.0, 3.0, 3.0])
    xyz = ijk * spacing
    g = voxel_graph(ijk, SHAPE, connectivity)
    s = vol[mask]
    labels = label_clusters(g, s > 0.5)
    got = local_maxima(g, s, labels, xyz, n_max=n_max, min_distance=min_distance)
    ref = _maxima_brute(vol, mask, 0.5, connectivity, spacing, n_max, min_distance)
    assert got.shape == (labels.max(), n_max) and labels.max() == len(ref) >= 3
    for c in range(1, labels.max() + 1):
        key = frozenset(np.flatnonzero(labels == c).tolist())
        row = got[c - 1]
        assert row[row >= 0].tolist() == ref[key]
        members = np.flatnonzero(labels == c)
        assert row[0] == members[np.argmax(s[members])]  # the peak first
    assert n_max == 1 or (got[:, 1] >= 0).any()  # some cluster has a second maximum


def test_local_maxima_of_no_cluster():
    g = voxel_graph(np.argwhere(np.ones((3, 3, 3), bool)), (3, 3, 3), 18)
    assert local_maxima(g, np.zeros(27), np.zeros(27, int), np.zeros((27, 3))).shape == (0, 3)
    with pytest.raises(ValueError, match="n_max"):
        local_maxima(g, np.zeros(27), np.zeros(27, int), np.zeros((27, 3)), n_max=0)
