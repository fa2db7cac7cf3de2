"""Simulated signals: the planted effect, healthy CFH range, participants table."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sps

from cfhdask.sim.anatomy import DEFAULT_EFFECTS, build_anatomy, effect_mask
from cfhdask.sim.cohort import subject_rng
from cfhdask.sim.participants import simulate_participants
from cfhdask.sim.signals import band_limited, simulate_subject_series


def _max_contra_r(data: np.ndarray, seeds: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Brute-force float64 max Pearson r of each seed voxel over target voxels."""
    x = data.astype(np.float64)
    x = x - x.mean(axis=0)
    x /= np.linalg.norm(x, axis=0)
    return (x[:, targets].T @ x[:, seeds]).max(axis=0)


@pytest.fixture(scope="module")
def cfh_at_effects():
    an = build_anatomy("6mm")
    centres = np.array([np.argmin(np.linalg.norm(an.xyz - np.array(e.center), axis=1))
                        for e in an.effects])
    mirrors = np.array([np.argmin(np.linalg.norm(an.xyz - an.xyz[c] * [-1, 1, 1], axis=1))
                        for c in centres])
    left = np.flatnonzero((an.hemisphere == -1) & (an.gm > 0.2))
    right = np.flatnonzero((an.hemisphere == 1) & (an.gm > 0.2))
    rand = np.random.default_rng(0).choice(left, 30, replace=False)
    out = {"patient": [], "control": [], "patient_mirror": [], "control_mirror": [], "rand": []}
    for group in ("patient", "control"):
        for k in range(8):
            ss = simulate_subject_series(an, subject_rng(0, group, k), group, 120, 2.0)
            out[group].append(np.arctanh(_max_contra_r(ss.data, centres, right)))
            out[f"{group}_mirror"].append(np.arctanh(_max_contra_r(ss.data, mirrors, left)))
            if group == "control":
                out["rand"].append(_max_contra_r(ss.data, rand, right))
    return {k: np.array(v) for k, v in out.items()}


def test_planted_effect_is_strong_and_left_lateralised(cfh_at_effects):
    r = cfh_at_effects
    for k in range(len(DEFAULT_EFFECTS)):
        p, c = r["patient"][:, k], r["control"][:, k]
        d = (p.mean() - c.mean()) / np.sqrt((p.var(ddof=1) + c.var(ddof=1)) / 2)
        assert d > 1.5, (k, d)
        assert p.min() > np.median(c)
        # contralateral (right) mirror voxels change much less
        dm = r["patient_mirror"][:, k].mean() - r["control_mirror"][:, k].mean()
        assert dm < 0.5 * (p.mean() - c.mean())


def test_no_effect_when_effect_size_zero():
    an = build_anatomy("6mm")
    a = simulate_subject_series(an, subject_rng(0, "patient", 0), "patient", 20, 2.0, 0.0)
    b = simulate_subject_series(an, subject_rng(0, "patient", 0), "control", 20, 2.0, 1.0)
    np.testing.assert_array_equal(a.data, b.data)


def test_healthy_cfh_is_realistic(cfh_at_effects):
    r = cfh_at_effects["rand"].ravel()
    assert 0.3 < np.median(r) < 0.8
    assert np.quantile(r, 0.05) > 0.2 and np.quantile(r, 0.95) < 0.95


def test_band_limited_spectrum():
    x = band_limited(np.random.default_rng(1), 230, 200, tr=2.0)
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(x.std(axis=0), 1, rtol=1e-10)
    f, pxx = sps.welch(x, fs=0.5, axis=0, nperseg=64)
    pxx = pxx.mean(axis=1)
    inband = pxx[(f >= 0.01) & (f <= 0.1)].sum()
    assert inband / pxx.sum() > 0.65
    assert pxx[f <= 0.15].sum() / pxx.sum() > 0.97


def test_effect_mask_sizes():
    from cfhdask.sim.anatomy import DEFAULT_EFFECTS

    m = effect_mask("3mm")
    for k, e in enumerate(DEFAULT_EFFECTS, 1):
        # profile >= 0.5 inside 0.75 * radius: a ball of that radius in 27 mm^3 voxels
        expected = 4 / 3 * np.pi * (0.75 * e.radius) ** 3 / 27.0
        assert 0.75 * expected <= (m == k).sum() <= 1.25 * expected
    from cfhdask.grid import MNI_3MM_AFFINE, xyz_to_ijk
    assert m[tuple(xyz_to_ijk([-30, -2, 10], MNI_3MM_AFFINE)[0])] == 1
    assert m[tuple(xyz_to_ijk([30, -2, 10], MNI_3MM_AFFINE)[0])] == 0


def test_participants_table():
    df = simulate_participants(30, 30, seed=0)
    assert list(df.columns) == ["participant_id", "group", "age", "sex", "education", "SAS",
                                "SDS", "illness_duration", "JRS_total", "JRS_severity",
                                "JRS_frequency"]
    pat, con = df[df.group == "patient"], df[df.group == "control"]
    assert len(pat) == 30 and len(con) == 30
    assert (pat.sex == "M").sum() == 12 and (con.sex == "M").sum() == 12
    assert abs(pat.age.mean() - 51.07) < 0.5 and abs(pat.age.std() - 6.46) < 0.5
    assert abs(con.age.mean() - 49.93) < 0.5
    assert abs(pat.SAS.mean() - 43.33) < 0.5 and abs(con.SAS.mean() - 36.67) < 0.5
    assert abs(pat.SDS.mean() - 44.97) < 0.5 and abs(con.SDS.mean() - 38.40) < 0.5
    assert abs(pat.education.mean() - 9.40) < 0.6 and (df.education >= 0).all()
    assert abs(pat.illness_duration.mean() - 12.33) < 0.6 and (pat.illness_duration >= 1).all()
    for c in ("JRS_severity", "JRS_frequency"):
        assert set(pat[c].unique()) <= {1.0, 2.0, 3.0}
    assert (pat.JRS_total == pat.JRS_severity + pat.JRS_frequency).all()
    assert pat.JRS_severity.median() in (1.0, 1.5, 2.0) and pat.JRS_frequency.median() == 2.0
    for c in ("illness_duration", "JRS_total", "JRS_severity", "JRS_frequency"):
        assert con[c].isna().all() and pat[c].notna().all()
    assert df.participant_id.is_unique
    assert simulate_participants(30, 30, seed=0).equals(df)
    assert not simulate_participants(30, 30, seed=1).equals(df)
