"""Report figures: each drawn once as a matplotlib figure, then saved as paper files.

Every function here returns a :class:`matplotlib.figure.Figure` sized for a
journal page (7.2 in wide, fonts of 7-9 pt); :func:`save_figure` writes it as
a PNG (300 dpi by default) and a vector PDF or SVG, and returns a smaller PNG
as a ``data:`` URI for the self-contained HTML.  Brain maps are drawn with
nilearn over its MNI152 template (shipped with nilearn, nothing is
downloaded).  Conventions, as a co-author expects them:

* titles sit in a band above the slices (never over them);
* statistical maps show only what is claimed (one cluster, or the significant
  clusters of one contrast) over the template, with L/R marks, in the
  contrast's own sequential colormap; the colorbar is labelled ``t`` and
  starts at the cluster-forming threshold;
* p-values read ``p < 0.001`` or ``p = 0.012`` (:func:`p_text`).
"""

from __future__ import annotations

import base64
import io
import logging
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap, Normalize  # noqa: E402

from cfhdask.clinical.table1 import format_p  # noqa: E402

log = logging.getLogger(__name__)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter

__all__ = [
    "CONTRAST_CMAPS", "FigureFiles", "PAGE_WIDTH", "WEB_DPI", "axial_cuts", "cluster_slices",
    "contrast_cmap", "display_name", "displacement_figure", "figure1_axial", "glass_brain", "group_mean_maps",
    "mni_background", "null_distributions", "p_text", "partial_scatter", "save_figure",
]

#: Width of every figure, inches (a two-column journal page).
PAGE_WIDTH = 7.2
#: Resolution of the PNG embedded in the HTML (the files get ``report.dpi``).
WEB_DPI = 140
#: Height of the title band above a brain figure, inches.
TITLE_BAND = 0.32
#: Extra band height per wrapped title line, inches; characters per inch of a title.
LINE_HEIGHT, CHARS_PER_INCH = 0.17, 12.5
FONT = 8

#: One sequential colormap per contrast, in contrast order: red-yellow, blue-cyan.
CONTRAST_CMAPS = (
    plt.get_cmap("autumn"),
    LinearSegmentedColormap.from_list("cfhdask_blue_cyan", ["#1030ff", "#00e8ff"]),
)

plt.rcParams.update({"font.size": FONT, "axes.titlesize": FONT + 1, "axes.labelsize": FONT,
                     "xtick.labelsize": FONT - 1, "ytick.labelsize": FONT - 1,
                     "legend.fontsize": FONT - 1, "pdf.fonttype": 42, "svg.fonttype": "none"})


def contrast_cmap(index: int):
    """The colormap of the ``index``-th contrast (cycles)."""
    return CONTRAST_CMAPS[index % len(CONTRAST_CMAPS)]


def p_text(p: float, name: str = "p") -> str:
    """``"p < 0.001"`` or ``"p = 0.012"`` (never ``p = 0.000``); empty for NaN.

    The digits and the floor are those of the tables (:func:`~cfhdask.clinical.table1.format_p`).
    """
    text = format_p(p)
    if not text:
        return ""
    return f"{name} < {text[1:]}" if text.startswith("<") else f"{name} = {text}"


@dataclass(frozen=True)
class FigureFiles:
    """A saved figure: the PNG and vector files, and the PNG to embed.

    Attributes
    ----------
    png, vector : Path
    uri : str
        ``data:image/png;base64,...`` at :data:`WEB_DPI`.
    """

    png: Path
    vector: Path
    uri: str


def save_figure(fig, folder: str | Path, stem: str, *, dpi: int = 300,
                vector_format: str = "pdf") -> FigureFiles:
    """Write ``<stem>.png`` (``dpi``) and ``<stem>.<vector_format>`` in ``folder``; close ``fig``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png, vector = folder / f"{stem}.png", folder / f"{stem}.{vector_format}"
    kw = {"facecolor": "white", "bbox_inches": "tight", "pad_inches": 0.04}
    try:
        fig.savefig(png, dpi=dpi, **kw)
        fig.savefig(vector, format=vector_format, dpi=dpi, **kw)
    finally:
        plt.close(fig)
    from PIL import Image

    with Image.open(png) as im:
        rgb = im.convert("RGB")  # journals want RGB without an alpha channel
    rgb.save(png, format="PNG", dpi=(dpi, dpi))
    scale = min(1.0, WEB_DPI / dpi)  # the embedded copy: the same pixels, scaled down
    small = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))),
                       Image.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return FigureFiles(png=png, vector=vector, uri=uri)


@lru_cache(maxsize=1)
def mni_background() -> nib.Nifti1Image:
    """The nilearn MNI152 template at 1 mm (loaded once; ships with nilearn)."""
    from nilearn.datasets import load_mni152_template

    return load_mni152_template(resolution=1)


def display_name(text: str) -> str:
    """Atlas names as prose for figure titles: ``Left_Putamen`` -> ``Left Putamen``."""
    return str(text).replace("_", " ")


def _title_lines(title: str, width: float) -> list[str]:
    return textwrap.wrap(title, width=max(20, int(width * CHARS_PER_INCH))) or [""]


def _titled(height: float, title: str, *, width: float = PAGE_WIDTH,
            cbar: str | None = "right"):
    """A figure with a title band on top, tall enough for the wrapped title.

    Returns (fig, rect of the body, rect of the colorbar) in figure fractions;
    the body lies entirely below the band, so the title never covers a slice.
    """
    lines = _title_lines(title, width)
    band = TITLE_BAND + LINE_HEIGHT * (len(lines) - 1)
    total = height + band
    fig = plt.figure(figsize=(width, total))
    fig.text(0.005, 1 - 0.06 / total, "\n".join(lines), ha="left", va="top",
             fontsize=FONT + 1, weight="bold", linespacing=1.25)
    top = height / total
    if cbar == "right":
        body = (0.0, 0.02 * height / total, 0.90, top * 0.97)
        bar = (0.925, top * 0.12, 0.018, top * 0.74)
    else:
        body, bar = (0.0, 0.0, 1.0, top), None
    return fig, body, bar


def _colorbar(fig, rect, cmap, vmin: float, vmax: float, label: str,
              orientation: str = "vertical") -> None:
    cax = fig.add_axes(rect, label="colorbar")
    sm = matplotlib.cm.ScalarMappable(norm=Normalize(vmin, vmax), cmap=cmap)
    cb = fig.colorbar(sm, cax=cax, orientation=orientation)
    if orientation == "vertical" and len(label) <= 2:  # "t": upright, readable
        cb.set_label(label, fontsize=FONT + 1, rotation=0, labelpad=8, va="center")
    else:
        cb.set_label(label, fontsize=FONT)
    ticks = np.linspace(vmin, vmax, 4)
    cb.set_ticks(ticks)
    cb.set_ticklabels([f"{t:.2f}" for t in ticks])
    cb.ax.tick_params(labelsize=FONT - 1)


def _annotate(display) -> None:
    display.annotate(left_right=True, positions=True, size=FONT - 1)


def axial_cuts(masked: Sequence[nib.Nifti1Image], peaks_z: Sequence[float],
               n: int = 6) -> list[float]:
    """Axial slices that show the mapped voxels: every peak z, then the fullest slices.

    Parameters
    ----------
    masked : images
        Maps that are non-zero only where something is shown.
    peaks_z : sequence of float
        z of the cluster peaks, cut first (most important first).
    n : int
        At most this many slices; more slices are added (at least two voxels
        from the others, most shown voxels first) while fewer than 4.
    """
    spacing = max([abs(float(img.affine[2, 2])) for img in masked] or [1.0])
    zs = []
    for img in masked:
        ijk = np.argwhere(np.asarray(img.dataobj) != 0)
        if ijk.size:
            zs.append((ijk @ img.affine[:3, :3].T + img.affine[:3, 3])[:, 2])
    cuts: list[float] = []
    for z in peaks_z:
        if len(cuts) < n and all(abs(float(z) - c) >= spacing for c in cuts):
            cuts.append(float(z))
    if zs:
        levels, counts = np.unique(np.round(np.concatenate(zs), 3), return_counts=True)
        for i in np.argsort(-counts, kind="stable"):
            if len(cuts) >= min(n, 4):
                break
            if all(abs(levels[i] - c) >= 2 * spacing for c in cuts):
                cuts.append(float(levels[i]))
    return sorted(cuts) or [0.0]


def figure1_axial(maps: Sequence[tuple[str, nib.Nifti1Image]], *, threshold: float,
                  vmax: float, cuts: Sequence[float], title: str):
    """The paper's Figure 1: significant clusters of every contrast on axial slices.

    Parameters
    ----------
    maps : sequence of (label, image)
        Per contrast, in contrast order (which picks the colormap): its t-map,
        zero outside its significant clusters.  A contrast with nothing to
        show still gets its colorbar, so colours stay comparable.
    threshold, vmax : float
        Colour range of t (the colorbars start at the cluster-forming threshold).
    cuts : sequence of float
        Axial positions (mm).
    """
    from nilearn import plotting

    fig, body, _ = _titled(2.05, title, cbar=None)
    top = body[1] + body[3]
    width = min(1.0, 0.145 * len(cuts))
    ax = fig.add_axes((0.5 - width / 2, 0.30 * top, width, top * 0.69))
    ax.set_axis_off()
    display = plotting.plot_anat(mni_background(), display_mode="z", cut_coords=list(cuts),
                                 axes=ax, annotate=False, draw_cross=False, black_bg=False,
                                 colorbar=False, dim=0, threshold=1e-6)
    for i, (_, img) in enumerate(maps):
        if np.any(np.asarray(img.dataobj)):
            display.add_overlay(img, threshold=1e-6, cmap=contrast_cmap(i), vmin=threshold,
                                vmax=vmax, interpolation="nearest")
    _annotate(display)
    k = max(1, len(maps))
    w = min(0.34, 0.86 / k)
    for i, (label, _) in enumerate(maps):
        left = 0.5 - k * w / 2 + i * w + 0.03
        _colorbar(fig, (left, 0.13 * top, w - 0.06, 0.045 * top), contrast_cmap(i), threshold,
                  vmax, f"t, {label}", orientation="horizontal")
    return fig


def cluster_slices(cluster_img: nib.Nifti1Image, peak: Sequence[float], *, threshold: float,
                   vmax: float, title: str, cmap=None):
    """One cluster over the MNI template: orthogonal slices cut at its peak.

    Parameters
    ----------
    cluster_img : image
        The contrast's t inside this cluster, 0 elsewhere.
    peak : (x, y, z)
        MNI coordinates of the cut (the cluster's peak).
    threshold, vmax : float
        Colour range of t (from the cluster-forming threshold).
    """
    from nilearn import plotting

    cmap = cmap if cmap is not None else contrast_cmap(0)
    fig, body, bar = _titled(2.35, title)
    ax = fig.add_axes(body)
    ax.set_axis_off()
    display = plotting.plot_stat_map(
        cluster_img, bg_img=mni_background(), cut_coords=tuple(float(c) for c in peak),
        display_mode="ortho", threshold=1e-6, vmin=threshold, vmax=vmax, axes=ax, cmap=cmap,
        symmetric_cbar=False, colorbar=False, draw_cross=False, annotate=False, black_bg=False,
        dim=0, resampling_interpolation="nearest")
    display.draw_cross(color="0.35", linewidth=0.5, alpha=0.7)
    _annotate(display)
    _colorbar(fig, bar, cmap, threshold, vmax, "t")
    return fig


def glass_brain(img: nib.Nifti1Image, *, threshold: float, vmax: float, title: str,
                cmap=None):
    """Glass-brain projections (L, R, sagittal, axial) of one contrast's positive map."""
    from nilearn import plotting

    cmap = cmap if cmap is not None else contrast_cmap(0)
    fig, body, bar = _titled(2.0, title)
    ax = fig.add_axes(body)
    ax.set_axis_off()
    data = np.asarray(img.dataobj, dtype=np.float32)
    shown = nib.Nifti1Image(np.where(data >= threshold, data, 0).astype(np.float32), img.affine)
    plotting.plot_glass_brain(shown, threshold=1e-6, colorbar=False, plot_abs=False, cmap=cmap,
                              vmin=threshold, vmax=vmax, display_mode="lyrz", axes=ax,
                              annotate=True, black_bg=False, symmetric_cbar=False,
                              resampling_interpolation="nearest")
    _colorbar(fig, bar, cmap, threshold, vmax, "t")
    return fig


def group_mean_maps(mean_imgs: Mapping[str, nib.Nifti1Image], *, label: str = "CFH (Fisher z)",
                    cut_coords: Sequence[float] = (-20, -4, 12, 28, 44, 60)):
    """Axial slices of each group's mean map over the template, one row per group.

    A sequential colormap (viridis) on one scale for every group: from the 2nd
    to the 98th percentile of the mapped voxels.
    """
    from nilearn import plotting

    values = np.concatenate([np.asarray(img.dataobj)[np.asarray(img.dataobj) != 0]
                             for img in mean_imgs.values()] or [np.zeros(1)])
    vmin, vmax = (np.percentile(values, [2, 98]) if values.size > 1 else (0.0, 1.0))
    if not vmax > vmin:
        vmax = vmin + 1.0
    n = len(mean_imgs)
    row = 1.45
    gap = TITLE_BAND + 0.22
    total = n * (row + gap) + 0.55
    fig = plt.figure(figsize=(PAGE_WIDTH, total))
    for i, (name, img) in enumerate(mean_imgs.items()):
        top = 1 - i * (row + gap) / total
        fig.text(0.005, top - (0.04 if i == 0 else 0.16) / total, name, ha="left", va="top",
                 fontsize=FONT + 1, weight="bold")
        ax = fig.add_axes((0.0, top - (row + gap) / total, 1.0, row / total))
        ax.set_axis_off()
        display = plotting.plot_stat_map(
            img, bg_img=mni_background(), display_mode="z", cut_coords=list(cut_coords),
            axes=ax, vmin=float(vmin), vmax=float(vmax), threshold=1e-6, cmap="viridis",
            symmetric_cbar=False, colorbar=False, black_bg=False, annotate=False, dim=0,
            draw_cross=False)
        _annotate(display)
    _colorbar(fig, (0.30, 0.26 / total, 0.40, 0.1 / total), "viridis", float(vmin),
              float(vmax), label, orientation="horizontal")
    return fig


def null_distributions(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray, float | None]]]],
                       *, alpha: float = 0.05):
    """Permutation null distributions of the maximum statistics, one row per contrast.

    Parameters
    ----------
    rows : sequence of (row label, panels)
        Each panel is ``(statistic label, null maxima, observed maximum or None)``.
    alpha : float
        The FWE critical value drawn is the ``1 - alpha`` quantile.
    """
    ncol = max([len(p) for _, p in rows] or [1])
    fig, axes = plt.subplots(len(rows), ncol, figsize=(PAGE_WIDTH, 1.75 * len(rows) + 0.3),
                             squeeze=False)
    for i, (row_label, panels) in enumerate(rows):
        for j in range(ncol):
            ax = axes[i, j]
            if j >= len(panels):
                ax.set_visible(False)
                continue
            stat, null, obs = panels[j]
            null = np.asarray(null, dtype=np.float64).ravel()
            null = null[np.isfinite(null)]
            ax.set_title(f"{row_label}: {stat}", fontsize=FONT - 1)
            ax.tick_params(labelsize=FONT - 2)
            if null.size == 0:
                ax.text(0.5, 0.5, "empty", ha="center", transform=ax.transAxes)
                continue
            ax.hist(null, bins=min(50, max(8, null.size // 20)), color="0.7", edgecolor="0.45",
                    linewidth=0.4)
            crit = float(np.quantile(null, 1 - alpha))
            ax.axvline(crit, color="tab:blue", ls="--", lw=1.0)
            lines = [f"{1 - alpha:.0%} critical: {crit:.3g}"]
            if obs is not None and np.isfinite(obs):
                p = float(np.mean(null >= obs - 1e-9 * (1 + abs(obs))))
                ax.axvline(obs, color="tab:red", lw=1.2)
                lines.append(f"observed: {obs:.3g} ({p_text(p)})")
            ax.text(0.98, 0.95, "\n".join(lines), transform=ax.transAxes, ha="right", va="top",
                    fontsize=FONT - 2, bbox={"facecolor": "white", "alpha": 0.8,
                                             "edgecolor": "none"})
            ax.set_xlabel(f"{stat} (n = {null.size})", fontsize=FONT - 2)
    fig.tight_layout(h_pad=0.8, w_pad=0.6)
    return fig


def displacement_figure(displacement: np.ndarray, median_img: nib.Nifti1Image):
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
    fig = plt.figure(figsize=(PAGE_WIDTH, 2.0))
    ax = fig.add_axes((0.07, 0.22, 0.22, 0.68))
    if d.size:
        ax.hist(d, bins=40, color="tab:purple", alpha=0.8)
        ax.axvline(np.median(d), color="k", ls="--", lw=1,
                   label=f"median {np.median(d):.1f} mm")
        ax.legend(frameon=False)
    ax.set_xlabel("mirror-to-counterpart distance (mm)")
    ax.set_ylabel("voxels \u00d7 subjects")
    ax.yaxis.set_major_formatter(matplotlib.ticker.EngFormatter(sep=""))
    ax2 = fig.add_axes((0.32, 0.0, 0.56, 0.92))
    ax2.set_axis_off()
    med = np.asarray(median_img.dataobj, dtype=np.float64)
    med = med[np.isfinite(med) & (med > 0)]
    vmax = float(np.percentile(med, 98)) if med.size else 1.0
    display = plotting.plot_stat_map(
        median_img, bg_img=mni_background(), display_mode="z", cut_coords=[-20, 0, 20, 40, 60],
        axes=ax2, cmap="viridis", vmin=0.0, vmax=vmax or 1.0, threshold=1e-6,
        symmetric_cbar=False, colorbar=False, black_bg=False, annotate=False, dim=0,
        draw_cross=False)
    _annotate(display)
    _colorbar(fig, (0.90, 0.15, 0.015, 0.65), "viridis", 0.0, vmax or 1.0,
              "median distance (mm)")
    return fig


def partial_scatter(panels: Sequence[tuple[str, pd.DataFrame, Mapping[str, float]]],
                    *, ncol: int = 4, xlabel: str = "variable | covariates",
                    ylabel: str = "cluster CFH | covariates"):
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
    fig, axes = plt.subplots(nrow, ncol, figsize=(PAGE_WIDTH, 1.9 * nrow + 0.2), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax, (title, res, st) in zip(axes.ravel(), panels, strict=False):
        x, y = res["x"].to_numpy(), res["y"].to_numpy()
        ax.scatter(x, y, s=10, color="tab:blue", alpha=0.8, edgecolor="none")
        if x.size > 1 and np.ptp(x) > 0:
            slope, icpt = np.polyfit(x, y, 1)
            xs = np.array([x.min(), x.max()])
            ax.plot(xs, slope * xs + icpt, color="tab:red", lw=1.0)
        ax.set_title(title, fontsize=FONT - 2)
        ax.text(0.02, 0.97, f"r = {st['r']:.2f}, {p_text(st['p'])}\n"
                f"{p_text(st['p_fdr'], 'FDR q')}", transform=ax.transAxes, va="top",
                fontsize=FONT - 2, bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none"})
        ax.set_xlabel(xlabel, fontsize=FONT - 2)
        ax.set_ylabel(ylabel, fontsize=FONT - 2)
        ax.tick_params(labelsize=FONT - 2)
    fig.tight_layout()
    return fig
