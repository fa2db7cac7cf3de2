"""What the report shows, read from the group-statistics outputs and the cohort store.

Nothing here draws: :mod:`cfhdask.report.figures` turns these arrays into
images.  The statistics directory is read by file name (as written by
``cfhdask stats``): ``<contrast>_tstat.nii.gz``, ``<contrast>_clusters.nii.gz``,
``<contrast>_logp_<kind>.nii.gz``, ``clusters.tsv``, null distributions
``*.npy`` and ``stats.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cfhdask.cfh.mirror import counterpart_displacement  # noqa: F401 - re-exported
from cfhdask.errors import CfhdaskInputError

log = logging.getLogger(__name__)

__all__ = ["StatsOutputs", "cluster_t_map", "counterpart_displacement", "load_img",
           "observed_for_null", "read_stats_dir"]

TSTAT_SUFFIX = "_tstat.nii.gz"
CLUSTERS_SUFFIX = "_clusters.nii.gz"
LOGP_INFIX = "_logp_"


@dataclass
class StatsOutputs:
    """The files of a group-statistics output directory.

    Attributes
    ----------
    directory : Path
    contrasts : list of str
        Contrast names (from ``<contrast>_tstat.nii.gz``), sorted.
    tstat, clusters_img : dict contrast -> Path
    logp : dict contrast -> dict kind -> Path
        ``-log10 p`` maps, kind e.g. ``"uncorrected"``, ``"vox_fwe"``.
    clusters : DataFrame
        ``clusters.tsv`` (empty when absent).
    nulls : dict name -> ndarray
        Null distributions (``*.npy`` stems).
    params : dict
        ``stats.json`` (empty when absent).
    """

    directory: Path
    contrasts: list[str] = field(default_factory=list)
    tstat: dict[str, Path] = field(default_factory=dict)
    clusters_img: dict[str, Path] = field(default_factory=dict)
    logp: dict[str, dict[str, Path]] = field(default_factory=dict)
    clusters: pd.DataFrame = field(default_factory=pd.DataFrame)
    nulls: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def null_contrast(self, name: str) -> str | None:
        """The contrast a null-distribution file belongs to (longest name prefix), if any."""
        hits = [c for c in self.contrasts if name.startswith(c)]
        return max(hits, key=len) if hits else None


def read_stats_dir(stats_dir: str | Path) -> StatsOutputs:
    """Index a group-statistics output directory.

    Raises
    ------
    CfhdaskInputError
        The directory does not exist or holds neither t-maps nor ``clusters.tsv``;
        ``clusters.tsv`` or ``stats.json`` cannot be parsed.
    """
    d = Path(stats_dir)
    if not d.is_dir():
        raise CfhdaskInputError(f"statistics directory {str(d)!r} does not exist")
    out = StatsOutputs(directory=d)
    for p in sorted(d.glob(f"*{TSTAT_SUFFIX}")):
        c = p.name[: -len(TSTAT_SUFFIX)]
        out.contrasts.append(c)
        out.tstat[c] = p
    for c in out.contrasts:
        cl = d / f"{c}{CLUSTERS_SUFFIX}"
        if cl.exists():
            out.clusters_img[c] = cl
        out.logp[c] = {p.name[len(c) + len(LOGP_INFIX): -len(".nii.gz")]: p
                       for p in sorted(d.glob(f"{c}{LOGP_INFIX}*.nii.gz"))}
    tsv = d / "clusters.tsv"
    if tsv.exists():
        try:
            out.clusters = pd.read_csv(tsv, sep="\t")
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise CfhdaskInputError(f"{tsv}: cannot be read as a TSV table ({exc})") from exc
    if not out.contrasts and not tsv.exists():
        raise CfhdaskInputError(
            f"statistics directory {str(d)!r} holds no '*{TSTAT_SUFFIX}' and no clusters.tsv "
            "(run `cfhdask stats` first)")
    for p in sorted(d.rglob("*.npy")):
        out.nulls[p.stem] = np.load(p, allow_pickle=False)
    js = d / "stats.json"
    if js.exists():
        try:
            out.params = json.loads(js.read_text())
        except json.JSONDecodeError as exc:
            raise CfhdaskInputError(f"{js}: invalid JSON ({exc})") from exc
    log.info("statistics directory %s: contrasts %s, %d clusters, %d null files",
             d, out.contrasts, len(out.clusters), len(out.nulls))
    return out


def load_img(img) -> nib.Nifti1Image:
    """A nibabel image from a path or an image."""
    if isinstance(img, (str, Path)):
        return nib.load(str(img))
    return img


def cluster_t_map(outputs: StatsOutputs, contrast: str, threshold: float,
                  clusters: Sequence[int] | None = None) -> nib.Nifti1Image:
    """What a figure of one contrast shows: its t inside some clusters, 0 elsewhere.

    Parameters
    ----------
    outputs : StatsOutputs
    contrast : str
    threshold : float
        Cluster-forming t; with ``clusters=None`` every voxel above it is kept
        (the thresholded map).
    clusters : sequence of int, optional
        Cluster labels to keep (``<contrast>_clusters.nii.gz``); empty keeps nothing.

    Returns
    -------
    nibabel image (float32)
        The contrast's own (one-sided) t-values: ``<contrast>_tstat`` is signed
        so that its clusters are positive.
    """
    timg = load_img(outputs.tstat[contrast])
    t = np.asarray(timg.dataobj, dtype=np.float32)
    if clusters is None:
        keep = t > threshold
    elif contrast in outputs.clusters_img:
        lab = np.asarray(load_img(outputs.clusters_img[contrast]).dataobj)
        keep = np.isin(lab, np.asarray(list(clusters), dtype=lab.dtype)) & (lab > 0)
    else:
        keep = np.zeros(t.shape, bool)
    return nib.Nifti1Image(np.where(keep, t, 0).astype(np.float32), timg.affine)


def observed_for_null(name: str, contrast: str | None, outputs: StatsOutputs) -> list[float]:
    """Observed statistics to mark on a null distribution, guessed from its file name.

    ``*size*``/``*extent*`` -> the contrast's cluster sizes (``size_voxels``),
    ``*mass*`` -> a ``mass`` column of ``clusters.tsv`` when present,
    ``*tfce*`` -> nothing, anything else (max-T) -> the maximum of the t-map.
    """
    low = name.lower()
    table = outputs.clusters
    rows = table[table["contrast"] == contrast] if (
        contrast is not None and "contrast" in table.columns) else table
    if "tfce" in low:
        return []
    if "mass" in low:
        col = next((c for c in ("mass", "cluster_mass") if c in rows.columns), None)
        return [float(v) for v in rows[col]] if col else []
    if "size" in low or "extent" in low or "cluster" in low:
        return [float(v) for v in rows["size_voxels"]] if "size_voxels" in rows.columns else []
    if contrast is not None and contrast in outputs.tstat:
        data = np.asarray(load_img(outputs.tstat[contrast]).dataobj, dtype=np.float64)
        return [float(np.nanmax(data))]
    return []
