"""Voxel grids, world coordinates, hemispheres and the voxel table of a mask.

The paper's data live on the DPABI/SPM 3 mm MNI grid (61 x 73 x 61).  Hemispheres
are defined by world x: x < 0 left, x > 0 right, x == 0 midline (never part of
CFH).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: DPABI/SPM 3 mm MNI152 grid (radiological storage: x decreases with i).
MNI_3MM_SHAPE: tuple[int, int, int] = (61, 73, 61)
MNI_3MM_AFFINE: np.ndarray = np.array(
    [[-3.0, 0, 0, 90.0], [0, 3.0, 0, -126.0], [0, 0, 3.0, -72.0], [0, 0, 0, 1.0]]
)
#: SPM 2 mm MNI152 grid (91 x 109 x 91).
MNI_2MM_SHAPE: tuple[int, int, int] = (91, 109, 91)
MNI_2MM_AFFINE: np.ndarray = np.array(
    [[-2.0, 0, 0, 90.0], [0, 2.0, 0, -126.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1.0]]
)

LEFT, MIDLINE, RIGHT = -1, 0, 1
#: Tolerance (mm) under which a voxel's x counts as the midline.
MIDLINE_TOL_MM = 1e-3
#: Tolerance (mm) for two affines to describe the same grid.
AFFINE_TOL_MM = 1e-3


def ijk_to_xyz(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (MNI mm) coordinates of voxel indices.

    Parameters
    ----------
    ijk : ndarray of shape (n, 3)
        Voxel indices.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine.

    Returns
    -------
    ndarray of shape (n, 3), float64
    """
    ijk = np.asarray(ijk, dtype=np.float64)
    return ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def xyz_to_ijk(xyz: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Nearest voxel indices of world coordinates (rounded, not clipped)."""
    xyz = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
    inv = np.linalg.inv(np.asarray(affine))
    return np.rint(xyz @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)


def hemisphere_of(x: np.ndarray) -> np.ndarray:
    """Hemisphere code of world x coordinates: -1 left, +1 right, 0 midline."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros(x.shape, dtype=np.int8)
    out[x < -MIDLINE_TOL_MM] = LEFT
    out[x > MIDLINE_TOL_MM] = RIGHT
    return out


def same_grid(shape_a, affine_a, shape_b, affine_b, tol: float = AFFINE_TOL_MM) -> bool:
    """Whether two (shape, affine) pairs describe the same voxel grid."""
    return tuple(shape_a)[:3] == tuple(shape_b)[:3] and bool(
        np.allclose(np.asarray(affine_a), np.asarray(affine_b), atol=tol, rtol=0)
    )


@dataclass(frozen=True)
class VoxelTable:
    """The mask's voxels in store order.

    Attributes
    ----------
    ijk : ndarray (n_voxels, 3) int32
        Voxel indices on the grid.
    xyz : ndarray (n_voxels, 3) float64
        World (MNI mm) coordinates.
    hemisphere : ndarray (n_voxels,) int8
        -1 left, +1 right, 0 midline.
    n_left, n_right, n_midline : int
        Block sizes (left block first, then right, then midline).
    """

    ijk: np.ndarray
    xyz: np.ndarray
    hemisphere: np.ndarray
    n_left: int
    n_right: int
    n_midline: int

    @property
    def n_voxels(self) -> int:
        """Number of voxels in the mask."""
        return self.n_left + self.n_right + self.n_midline


def voxel_table(mask: np.ndarray, affine: np.ndarray) -> VoxelTable:
    """Voxels of a 3D mask in store order (left, right, midline; C order inside).

    Parameters
    ----------
    mask : ndarray of bool, 3D
        The analysis mask.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine of the mask's grid.

    Returns
    -------
    VoxelTable
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D, got shape {mask.shape}")
    flat = np.flatnonzero(mask)  # increasing C-order index
    ijk = np.stack(np.unravel_index(flat, mask.shape), axis=1)
    xyz = ijk_to_xyz(ijk, affine)
    hemi = hemisphere_of(xyz[:, 0])
    order = np.concatenate([np.flatnonzero(hemi == code) for code in (LEFT, RIGHT, MIDLINE)])
    return VoxelTable(
        ijk=ijk[order].astype(np.int32),
        xyz=xyz[order],
        hemisphere=hemi[order],
        n_left=int(np.count_nonzero(hemi == LEFT)),
        n_right=int(np.count_nonzero(hemi == RIGHT)),
        n_midline=int(np.count_nonzero(hemi == MIDLINE)),
    )
