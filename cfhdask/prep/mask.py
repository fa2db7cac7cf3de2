"""Analysis masks and the voxel table.

* ``gm``: nilearn's MNI152 grey-matter probability template (shipped with
  nilearn, no download), resampled linearly to the data grid and thresholded
  (``> gm_threshold``, 0.2 as in the paper);
* a user mask: a NIfTI on the data grid (non-zero voxels).

The voxel table of a mask (store order: left, right, midline) is
:func:`cfhdask.grid.voxel_table`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np

from cfhdask.errors import CfhdaskInputError
from cfhdask.grid import same_grid

log = logging.getLogger(__name__)

#: Default grey-matter probability threshold (paper, Methods 2.4).
GM_THRESHOLD = 0.2


@functools.lru_cache(maxsize=8)
def _gm_probability_cached(shape: tuple[int, int, int], affine: tuple) -> np.ndarray:
    from nilearn.datasets import load_mni152_gm_template
    from nilearn.image import resample_img

    template = load_mni152_gm_template(resolution=1)
    resampled = resample_img(template, target_affine=np.array(affine).reshape(4, 4),
                             target_shape=shape, interpolation="linear",
                             force_resample=True, copy_header=True)
    prob = np.asarray(resampled.get_fdata(dtype=np.float64))
    prob.setflags(write=False)
    return prob


def gm_probability(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """nilearn's MNI152 grey-matter probability resampled (linear) to a grid.

    Cached per grid.  The returned array is read-only.

    Parameters
    ----------
    shape : sequence of 3 int
        Target grid shape.
    affine : ndarray of shape (4, 4)
        Target voxel-to-MNI affine.

    Returns
    -------
    ndarray of float64, ``shape``
    """
    key = tuple(float(v) for v in np.asarray(affine, dtype=np.float64).ravel())
    return _gm_probability_cached(tuple(int(s) for s in shape[:3]), key)


def gm_mask(shape: Sequence[int], affine: np.ndarray,
            threshold: float = GM_THRESHOLD) -> np.ndarray:
    """Grey-matter mask on a grid: resampled template probability ``> threshold``.

    Raises
    ------
    CfhdaskInputError
        The threshold is outside [0, 1) or no voxel of the grid passes it.
    """
    if not 0.0 <= float(threshold) < 1.0:
        raise CfhdaskInputError(f"--gm-threshold {threshold}: must be in [0, 1)")
    from nilearn.image.resampling import BoundingBoxError

    try:
        mask = gm_probability(shape, affine) > float(threshold)
    except BoundingBoxError:  # the grid does not overlap the template at all
        mask = np.zeros(tuple(shape[:3]), dtype=bool)
    if not mask.any():
        raise CfhdaskInputError(
            f"--mask gm: no voxel of the data grid has grey-matter probability > {threshold} "
            "(is the data in MNI space?)")
    return mask


def load_user_mask(url: str, shape: Sequence[int], affine: np.ndarray,
                   storage_options: dict | None = None) -> np.ndarray:
    """A user mask NIfTI (non-zero, finite voxels) that must lie on the data grid.

    Parameters
    ----------
    url : str
        Path or fsspec URL of a 3D NIfTI (4D with one volume is accepted).
    shape, affine
        The data grid.
    storage_options : dict, optional
        fsspec options.

    Raises
    ------
    CfhdaskInputError
        Unreadable file, not on the data grid, or empty mask (the message names the file).
    """
    from cfhdask.io.nifti import read_volume

    data, mask_affine = read_volume(url, storage_options=storage_options)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CfhdaskInputError(f"mask {url}: expected a 3D image, got shape {data.shape}")
    if not same_grid(data.shape, mask_affine, shape, affine):
        raise CfhdaskInputError(
            f"mask {url}: grid {data.shape} with affine "
            f"{np.round(mask_affine, 3).tolist()} differs from the data grid {tuple(shape)} "
            f"with affine {np.round(np.asarray(affine), 3).tolist()}")
    mask = np.isfinite(data) & (data != 0)
    if not mask.any():
        raise CfhdaskInputError(f"mask {url}: empty (no non-zero voxel)")
    return mask


def resolve_mask(spec: str, shape: Sequence[int], affine: np.ndarray, *,
                 gm_threshold: float = GM_THRESHOLD,
                 storage_options: dict | None = None) -> tuple[np.ndarray, dict]:
    """The analysis mask named by ``spec`` ("gm" or a NIfTI path/URL) and its provenance.

    Returns
    -------
    mask : ndarray of bool, ``shape``
    info : dict
        ``{"source": "gm", "gm_threshold": t}`` or ``{"source": path}``.
    """
    if spec == "gm":
        return gm_mask(shape, affine, gm_threshold), {"source": "gm",
                                                      "gm_threshold": float(gm_threshold)}
    return load_user_mask(spec, shape, affine, storage_options), {"source": str(spec)}
