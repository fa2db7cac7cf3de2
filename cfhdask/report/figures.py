"""Report figures, each returned as a ``data:image/png;base64,...`` URI.

Drawn with matplotlib's Agg backend and nilearn's plotting over the MNI152
template shipped with nilearn (nothing is downloaded).
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

log = logging.getLogger(__name__)

DPI = 80


def fig_to_data_uri(fig) -> str:
    """Render a matplotlib figure as a base64 PNG data URI and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@lru_cache(maxsize=1)
def mni_background() -> nib.Nifti1Image:
    """The nilearn MNI152 template at 2 mm (loaded once; ships with nilearn)."""
    from nilearn.datasets import load_mni152_template

    return load_mni152_template(resolution=2)


def cluster_slices(tstat_img, clusters_img, peaks: Sequence[tuple[float, float, float]],
                   titles: Sequence[str]) -> list[str]:
    """Orthogonal slices through each cluster peak, t-values inside clusters (paper Figure 1).

    Parameters
    ----------
    tstat_img, clusters_img : nibabel images
        The contrast's t-map and its cluster label map (0 outside clusters).
    peaks : sequence of (x, y, z)
        MNI coordinates of the cuts (the cluster peaks).
    titles : sequence of str
        One title per peak.
    """
    from nilearn import plotting

    t = np.asarray(tstat_img.dataobj, dtype=np.float32)
    lab = np.asarray(clusters_img.dataobj)
    masked = nib.Nifti1Image(np.where(lab > 0, t, 0).astype(np.float32), tstat_img.affine)
    vmax = float(np.nanmax(np.abs(masked.get_fdata()))) or 1.0
    uris = []
    for peak, title in zip(peaks, titles, strict=True):
        fig = plt.figure(figsize=(9, 3.2))
        plotting.plot_stat_map(masked, bg_img=mni_background(), cut_coords=tuple(peak),
                               display_mode="ortho", threshold=1e-6, vmax=vmax, figure=fig,
                               title=title, cmap="hot", colorbar=True, draw_cross=True,
                               annotate=True, black_bg=False, resampling_interpolation="nearest")
        uris.append(fig_to_data_uri(fig))
    return uris


def glass_brain(tstat_img, *, threshold: float, title: str) -> str:
    """Glass-brain projection of a t-map thresholded at ``threshold``."""
    from nilearn import plotting

    fig = plt.figure(figsize=(9, 3.2))
    plotting.plot_glass_brain(tstat_img, threshold=threshold, colorbar=True, plot_abs=False,
                              cmap="cold_hot", display_mode="lyrz", figure=fig, title=title,
                              symmetric_cbar=True)
    return fig_to_data_uri(fig)


def group_mean_maps(mean_imgs: Mapping[str, nib.Nifti1Image], *,
                    cut_coords: Sequence[float] = (-24, -8, 8, 24, 40, 56)) -> str:
    """Axial slices of each group's mean CFH (Fisher z), one row per group, shared scale."""
    from nilearn import plotting

    vmax = max(float(np.nanpercentile(np.abs(img.get_fdata()[img.get_fdata() != 0]), 99))
               if np.any(img.get_fdata()) else 0.0 for img in mean_imgs.values()) or 1.0
    fig, axes = plt.subplots(len(mean_imgs), 1, figsize=(10, 2.2 * len(mean_imgs)), squeeze=False)
    for ax, (name, img) in zip(axes[:, 0], mean_imgs.items(), strict=True):
        plotting.plot_stat_map(img, bg_img=mni_background(), display_mode="z",
                               cut_coords=list(cut_coords), axes=ax, vmax=vmax, threshold=1e-6,
                               cmap="cold_hot", title=f"{name}: mean CFH (Fisher z)",
                               colorbar=True, black_bg=False, annotate=True)
    return fig_to_data_uri(fig)


def null_distributions(nulls: Mapping[str, np.ndarray],
                       observed: Mapping[str, Sequence[float]], *, alpha: float = 0.05) -> str:
    """Histograms of the permutation null maxima with the FWE critical value and observed values."""
    names = list(nulls)
    ncol = min(3, max(1, len(names)))
    nrow = int(np.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        null = np.asarray(nulls[name], dtype=np.float64).ravel()
        null = null[np.isfinite(null)]
        if null.size == 0:
            ax.text(0.5, 0.5, "empty", ha="center", transform=ax.transAxes)
            ax.set_title(name, fontsize=9)
            continue
        ax.hist(null, bins=min(60, max(10, null.size // 20)), color="0.6", edgecolor="0.4")
        crit = float(np.quantile(null, 1 - alpha))
        ax.axvline(crit, color="tab:blue", ls="--", lw=1.2, label=f"{1 - alpha:.0%} = {crit:.3g}")
        for i, v in enumerate(observed.get(name, [])):
            p = (1 + np.sum(null >= v)) / (1 + null.size)
            ax.axvline(v, color="tab:red", lw=1.5,
                       label=f"observed {v:.3g} (p={p:.3g})" if i < 4 else None)
        ax.set_title(f"{name} (n={null.size})", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax.set_xlabel("max statistic", fontsize=8)
    fig.tight_layout()
    return fig_to_data_uri(fig)


def displacement_figure(displacement: np.ndarray, median_img: nib.Nifti1Image) -> str:
    """Histogram of counterpart displacements and a map of each voxel's median displacement.

    Parameters
    ----------
    displacement : ndarray (n_subjects, n_voxels) or (n_voxels,)
        Distance (mm) from each voxel's mirror position to its counterpart (NaN: none).
    median_img : nibabel image
        Per-voxel median displacement over subjects, on the store grid.
    """
    from nilearn import plotting

    d = np.asarray(displacement, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    fig = plt.figure(figsize=(11, 3.0))
    ax = fig.add_axes((0.05, 0.18, 0.25, 0.7))
    if d.size:
        ax.hist(d, bins=40, color="tab:purple", alpha=0.8)
        ax.axvline(np.median(d), color="k", ls="--", lw=1, label=f"median {np.median(d):.1f} mm")
        ax.legend(fontsize=7)
    ax.set_xlabel("mirror-to-counterpart distance (mm)", fontsize=8)
    ax.set_ylabel("voxels x subjects", fontsize=8)
    ax.tick_params(labelsize=7)
    ax2 = fig.add_axes((0.33, 0.0, 0.67, 1.0))
    vmax = float(np.nanpercentile(d, 99)) if d.size else 1.0
    plotting.plot_stat_map(median_img, bg_img=mni_background(), display_mode="z",
                           cut_coords=[-20, 0, 20, 40, 60], axes=ax2, cmap="viridis",
                           vmin=0.0, vmax=vmax or 1.0, threshold=1e-6, symmetric_cbar=False,
                           colorbar=True, black_bg=False, title="median displacement (mm)")
    return fig_to_data_uri(fig)


def partial_scatter(panels: Sequence[tuple[str, pd.DataFrame, Mapping[str, float]]],
                    *, ncol: int = 4, xlabel: str = "variable | covariates",
                    ylabel: str = "cluster CFH | covariates") -> str:
    """Scatter plots of residualised pairs with the partial-correlation fit.

    Parameters
    ----------
    panels : sequence of (title, residuals, stats)
        ``residuals`` has columns ``x`` and ``y`` (see
        :func:`cfhdask.clinical.correlations.partial_residuals`); ``stats`` holds
        ``r``, ``p`` and ``p_fdr``.
    """
    n = len(panels)
    ncol = min(ncol, max(1, n))
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.3 * ncol, 2.9 * nrow), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, (title, res, st) in zip(axes.ravel(), panels, strict=False):
        x, y = res["x"].to_numpy(), res["y"].to_numpy()
        ax.scatter(x, y, s=14, color="tab:blue", alpha=0.8, edgecolor="none")
        if x.size > 1 and np.ptp(x) > 0:
            slope, icpt = np.polyfit(x, y, 1)
            xs = np.array([x.min(), x.max()])
            ax.plot(xs, slope * xs + icpt, color="tab:red", lw=1.2)
        ax.set_title(title, fontsize=8)
        ax.text(0.02, 0.97, f"r={st['r']:.2f}  p={st['p']:.3f}\nFDR q={st['p_fdr']:.3f}",
                transform=ax.transAxes, va="top", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig_to_data_uri(fig)
