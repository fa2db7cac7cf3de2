"""Mirror voxels for VMHC: each voxel's anatomical mirror across x = 0 (pure NumPy).

VMHC (DPABI ``y_VMHC``, C-PAC) correlates every voxel with the voxel at its
mirror position, world ``(x, y, z) -> (-x, y, z)``, on data normalised to a
symmetric template.  On a grid symmetric about x = 0 (every mirror position is
a voxel centre, as on the DPABI/SPM 3 mm grid) the mirror is exact.  On a grid
that is not, the mirror is the voxel nearest to the mirror position, and
:class:`MirrorVoxels` says so (``exact`` False, ``max_offset_mm``).

Only voxels whose mirror is in the mask, in the other hemisphere, take part
(the *symmetrised* mask); midline voxels have no mirror.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["EXACT_TOL_VOXELS", "MirrorVoxels", "counterpart_displacement", "mirror_voxels"]

#: A mirror position within this many voxels of a voxel centre is exact.
EXACT_TOL_VOXELS = 1e-3


class MirrorVoxels(NamedTuple):
    """Each voxel's mirror voxel.

    Attributes
    ----------
    index : int64 ndarray (n_voxels,)
        Store index of the mirror voxel, -1 where it is outside the mask, in the
        same hemisphere, or the voxel is on the midline.
    exact : bool
        Every mirror position is a voxel centre (the grid is symmetric about x = 0).
    max_offset_mm : float
        Largest distance between a mirror position and the voxel chosen for it
        (0 when exact), over the voxels that have a mirror.
    n_pairs : int
        Voxels with a mirror (the symmetrised mask).
    """

    index: np.ndarray
    exact: bool
    max_offset_mm: float
    n_pairs: int


def mirror_voxels(ijk: np.ndarray, affine: np.ndarray, grid_shape, hemisphere: np.ndarray,
                  tol: float = EXACT_TOL_VOXELS) -> MirrorVoxels:
    """The mirror voxel (world x -> -x) of every voxel of a mask.

    Parameters
    ----------
    ijk : int ndarray (n_voxels, 3)
        Voxel indices of the mask's voxels (store order).
    affine : ndarray (4, 4)
        Voxel-to-world affine.
    grid_shape : sequence of 3 int
    hemisphere : int ndarray (n_voxels,)
        -1 left, +1 right, 0 midline.
    tol : float
        Voxels of offset under which a mirror position counts as a voxel centre.

    Returns
    -------
    MirrorVoxels
    """
    ijk = np.asarray(ijk, dtype=np.int64)
    affine = np.asarray(affine, dtype=np.float64)
    shape = tuple(int(s) for s in grid_shape)
    hemi = np.asarray(hemisphere)
    n = ijk.shape[0]
    lookup = np.full(shape, -1, dtype=np.int64)
    lookup[ijk[:, 0], ijk[:, 1], ijk[:, 2]] = np.arange(n)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    mirror_xyz = xyz * np.array([-1.0, 1.0, 1.0])
    inv = np.linalg.inv(affine)
    frac = mirror_xyz @ inv[:3, :3].T + inv[:3, 3]
    near = np.rint(frac).astype(np.int64)
    inside = np.all((near >= 0) & (near < np.asarray(shape)), axis=1)
    index = np.full(n, -1, dtype=np.int64)
    hit = np.flatnonzero(inside)
    index[hit] = lookup[near[hit, 0], near[hit, 1], near[hit, 2]]
    ok = (index >= 0) & (hemi != 0)
    ok[ok] &= hemi[index[ok]] == -hemi[ok]
    index[~ok] = -1
    sel = index >= 0
    exact = bool(np.all(np.abs(frac - near)[inside] <= tol)) if inside.any() else True
    offset = np.linalg.norm(xyz[index[sel]] - mirror_xyz[sel], axis=1) if sel.any() else \
        np.zeros(0)
    return MirrorVoxels(index=index, exact=exact,
                        max_offset_mm=float(offset.max()) if offset.size else 0.0,
                        n_pairs=int(sel.sum()))


def counterpart_displacement(xyz: np.ndarray, counterpart: np.ndarray) -> np.ndarray:
    """Distance (mm) between each voxel's mirror position and its functional counterpart.

    Parameters
    ----------
    xyz : ndarray of shape (n_voxels, 3)
        MNI coordinates of the store's voxels.
    counterpart : ndarray of shape (n_voxels,) or (n_subjects, n_voxels)
        Store voxel index of each voxel's counterpart, -1 where none.

    Returns
    -------
    ndarray shaped like ``counterpart``, float64
        ``|xyz[counterpart] - (-x, y, z)|``; NaN where there is no counterpart.
        0 means the counterpart is the anatomical mirror (as VMHC assumes).
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    cp = np.asarray(counterpart)
    mirror = xyz * np.array([-1.0, 1.0, 1.0])
    valid = cp >= 0
    target = xyz[np.where(valid, cp, 0)]
    dist = np.linalg.norm(target - mirror, axis=-1)
    return np.where(valid, dist, np.nan)
