"""Result types of group inference (a leaf module: numpy and pandas only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cfhdask.stats.design import Design

__all__ = ["ContrastResult", "GroupResult", "fwe_p"]


@dataclass
class ContrastResult:
    """Maps (over the analysis voxels) and clusters of one contrast.

    Attributes
    ----------
    name : str
    t : ndarray (V,)
        t-statistic (sign of the contrast applied).
    logp_uncorrected, logp_vox_fwe, logp_cluster_fwe, logp_cluster_mass_fwe : ndarray (V,)
        -log10 p (0 outside clusters for the cluster maps).
    logp_tfce_fwe, tfce : ndarray (V,) or None
    cluster_labels : ndarray of int32 (V,)
        0 outside clusters, 1.. by decreasing size.
    clusters : pandas.DataFrame
    null : dict of str -> ndarray (n_perm,)
        Null maxima (``max_t``, ``max_size``, ``max_mass``, ``max_tfce``).
    """

    name: str
    t: np.ndarray
    logp_uncorrected: np.ndarray
    logp_vox_fwe: np.ndarray
    logp_cluster_fwe: np.ndarray
    logp_cluster_mass_fwe: np.ndarray
    cluster_labels: np.ndarray
    clusters: pd.DataFrame
    null: dict[str, np.ndarray]
    tfce: np.ndarray | None = None
    logp_tfce_fwe: np.ndarray | None = None


@dataclass
class GroupResult:
    """Everything :func:`group_inference` computed.

    Attributes
    ----------
    contrasts : dict of str -> ContrastResult
    clusters : pandas.DataFrame
        All contrasts' clusters (see ``clusters.tsv``).
    design : Design
    ijk : ndarray (V, 3)
        Grid indices of the analysis voxels.
    grid_shape : tuple of int
    affine : ndarray (4, 4)
    params : dict
        Every parameter, the seed, the number of permutations used, mask counts.
    """

    contrasts: dict[str, ContrastResult]
    clusters: pd.DataFrame
    design: Design
    ijk: np.ndarray
    grid_shape: tuple[int, int, int]
    affine: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)

    def to_volume(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Put per-voxel values (V,) on the 3D grid."""
        vol = np.full(self.grid_shape, fill, dtype=np.asarray(values).dtype)
        vol[tuple(self.ijk.T)] = values
        return vol


#: Relative tolerance under which a null value counts as equal to the observed one.
#: The observed map and the null's identity row come from different float64 GEMMs
#: (1e-15 apart); without it the identity could miss its own maximum and give p = 0.
FWE_RTOL = 1e-9


def fwe_p(null: np.ndarray, observed: np.ndarray, rtol: float = FWE_RTOL) -> np.ndarray:
    """``#{null >= observed} / len(null)`` for each observed value (ties within ``rtol``)."""
    srt = np.sort(np.asarray(null, dtype=np.float64))
    obs = np.asarray(observed, dtype=np.float64)
    return (srt.size - np.searchsorted(srt, obs - rtol * (1.0 + np.abs(obs)),
                                       side="left")) / srt.size
