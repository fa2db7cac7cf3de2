"""Per-subject BOLD time series of the simulated cohort (pure kernels, no I/O).

For subject *s* and brain voxel *v* (unit-variance fluctuation ``x``)::

    x[t, v] = w_s(v) * g[t, pair(v)]                     bilateral pair signal
            + sqrt(GLOBAL_VAR) * glob[t]                 global signal
            + sqrt(MOTION_VAR) * (m[t] @ motion_maps)[v]  motion artefact
            + a_s(v) * (c[t] @ noise_maps)[v]            smooth spatially correlated noise
            + b_s(v) * e[t, v]                           white noise (uniform, var 1)
    y[t, v] = baseline(v) + amplitude(v) * x[t, v]

* ``g[:, p] = sqrt(0.3) * net[:, network(p)] + sqrt(0.7) * own[:, p]``: band-limited
  (0.008-0.1 Hz, 1/f-shaped) signals, subject-specific; networks make some
  long-range heterotopic correlation too.
* ``w_s = clip(f_s * (1 + PAIR_JITTER_SD u_s[pair]) * (loading + effect))``: a subject
  coupling factor ``f_s ~ N(1, COUPLING_SD)``, a per-pair jitter, and for subjects of an
  effect's group ``effect_size * k_s * effect_delta`` with ``k_s ~ N(1, 0.25)``
  (clipped at 0.2) per effect.
* ``c``: AR(1) time courses (phi ~ U(0.3, 0.6) per subject) mixing the shared
  smooth maps (FWHM 6 mm); ``e``: white.  ``a_s**2 + b_s**2 = 1 - w_s**2 -
  GLOBAL_VAR - MOTION_VAR`` with a 60/40 split, so every voxel has unit
  variance and the effect changes coupling, not variance.
* ``m``: six rigid-body parameters (mm, rad), random walks with a drift, scaled
  by a per-subject motion level; the artefact uses their standardised values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cfhdask.sim.anatomy import GLOBAL_VAR, MAX_LOADING, MOTION_VAR, N_NETWORKS, Anatomy

NETWORK_SHARE = 0.3
#: Between-subject SD of the whole-brain coupling factor and of each pair's jitter.  A
#: whole-brain factor shifts every voxel's CFH together; too large, it makes permutation
#: nulls of cluster size heavy-tailed (whole-brain clusters whenever the permuted labels
#: happen to follow it).
COUPLING_SD = 0.03
PAIR_JITTER_SD = 0.03
SMOOTH_SHARE = 0.6
BAND_HZ = (0.008, 0.1)


@dataclass(frozen=True)
class SubjectSeries:
    """One simulated subject.

    Attributes
    ----------
    data : ndarray (n_volumes, n_voxels) float32
        BOLD intensities of the brain voxels (order of ``Anatomy.flat_f``).
    motion : ndarray (n_volumes, 6) float64
        trans_x, trans_y, trans_z (mm), rot_x, rot_y, rot_z (rad).
    loading : ndarray (n_voxels,) float32
        This subject's loading on the pair signals (ground truth).
    """

    data: np.ndarray
    motion: np.ndarray
    loading: np.ndarray


def band_limited(rng: np.random.Generator, n_volumes: int, n_series: int, tr: float,
                 band: tuple[float, float] = BAND_HZ, exponent: float = 0.5) -> np.ndarray:
    """Standardised random series with power in ``band`` (Hz) and a 1/f**(2*exponent) shape.

    Returns an (n_volumes, n_series) float64 array with mean 0 and SD 1 per column.
    """
    n_fft = max(2 * n_volumes, 64)
    freqs = np.fft.rfftfreq(n_fft, d=tr)
    lo, hi = band
    amp = np.zeros_like(freqs)
    pos = freqs > 0
    amp[pos] = freqs[pos] ** (-exponent)
    # cosine roll-offs: lo/2 -> lo and hi -> 1.5 hi
    amp *= np.clip((freqs - lo / 2) / (lo / 2), 0, 1)
    amp *= np.clip((1.5 * hi - freqs) / (0.5 * hi), 0, 1)
    spec = (rng.standard_normal((freqs.size, n_series))
            + 1j * rng.standard_normal((freqs.size, n_series))) * amp[:, None]
    x = np.fft.irfft(spec, n=n_fft, axis=0)[:n_volumes]
    x -= x.mean(axis=0)
    x /= x.std(axis=0) + 1e-12
    return x


def ar1(rng: np.random.Generator, n_volumes: int, n_series: int, phi: float) -> np.ndarray:
    """Standardised stationary AR(1) series, (n_volumes, n_series) float64."""
    e = rng.standard_normal((n_volumes, n_series))
    x = np.empty_like(e)
    x[0] = e[0]
    s = np.sqrt(1.0 - phi * phi)
    for t in range(1, n_volumes):
        x[t] = phi * x[t - 1] + s * e[t]
    x -= x.mean(axis=0)
    x /= x.std(axis=0) + 1e-12
    return x


def motion_traces(rng: np.random.Generator, n_volumes: int, level: float) -> np.ndarray:
    """Six rigid-body parameters (mm, mm, mm, rad, rad, rad), starting at 0."""
    step = np.array([0.02, 0.03, 0.04, 4e-4, 3e-4, 3e-4]) * level
    walk = np.cumsum(rng.standard_normal((n_volumes, 6)) * step, axis=0)
    drift = np.linspace(0.0, 1.0, n_volumes)[:, None] * rng.normal(0.0, 10.0, 6) * step
    m = walk + drift
    return m - m[0]


def simulate_subject_series(anatomy: Anatomy, rng: np.random.Generator, group: str,
                            n_volumes: int = 230, tr: float = 2.0,
                            effect_size: float = 1.0) -> SubjectSeries:
    """Simulate one subject's brain-voxel time series on a shared anatomy.

    Parameters
    ----------
    anatomy : Anatomy
        From :func:`cfhdask.sim.anatomy.build_anatomy`.
    rng : numpy.random.Generator
        The subject's own generator (seed it from the cohort seed and the subject).
    group : {"patient", "control"}
        Effects whose ``group`` matches are applied.
    n_volumes : int
        Number of volumes.
    tr : float
        Repetition time (s); sets the frequency content.
    effect_size : float
        Scale of the planted loading increases (0: no effect).

    Returns
    -------
    SubjectSeries
    """
    n = anatomy.n_voxels
    t_len = int(n_volumes)
    # --- scalar subject factors ---------------------------------------------
    coupling = float(np.clip(rng.normal(1.0, COUPLING_SD), 0.7, 1.3))
    pair_jitter = 1.0 + PAIR_JITTER_SD * rng.standard_normal(anatomy.n_pairs)
    effect_k = np.clip(rng.normal(1.0, 0.25, size=len(anatomy.effects)), 0.2, None)
    phi = float(rng.uniform(0.3, 0.6))
    motion_level = float(np.exp(rng.normal(0.0, 0.4)))

    w = anatomy.loading.astype(np.float32).copy()
    for k, e in enumerate(anatomy.effects):
        if e.group == group and effect_size:
            w += np.float32(effect_size * effect_k[k]) * anatomy.effect_delta[k]
    w *= (coupling * pair_jitter[anatomy.pair]).astype(np.float32)
    np.clip(w, 0.0, MAX_LOADING, out=w)
    private = np.maximum(1.0 - w * w - GLOBAL_VAR - MOTION_VAR, 0.0)
    a_smooth = np.sqrt(SMOOTH_SHARE * private).astype(np.float32)
    b_white = np.sqrt((1.0 - SMOOTH_SHARE) * private).astype(np.float32)

    # --- time courses ----------------------------------------------------------
    net = band_limited(rng, t_len, N_NETWORKS, tr)
    own = band_limited(rng, t_len, anatomy.n_pairs, tr)
    g = (np.sqrt(NETWORK_SHARE) * net[:, anatomy.pair_network]
         + np.sqrt(1.0 - NETWORK_SHARE) * own).astype(np.float32)
    glob = band_limited(rng, t_len, 1, tr, band=(0.005, 0.15))[:, 0].astype(np.float32)
    c = ar1(rng, t_len, anatomy.noise_maps.shape[0], phi).astype(np.float32)
    motion = motion_traces(rng, t_len, motion_level)
    m_std = motion - motion.mean(axis=0)
    m_std = (m_std / (m_std.std(axis=0) + 1e-12)).astype(np.float32)

    # --- mix (in place, float32) -------------------------------------------------
    x = c @ anatomy.noise_maps
    x *= a_smooth
    # white noise: uniform with unit variance (3x faster to draw than Gaussian; the sum
    # of all components is close to Gaussian anyway)
    tmp = rng.random((t_len, n), dtype=np.float32)
    tmp -= np.float32(0.5)
    tmp *= b_white * np.float32(np.sqrt(12.0))
    x += tmp
    np.take(g, anatomy.pair, axis=1, out=tmp)
    tmp *= w
    x += tmp
    del tmp
    x += (np.float32(np.sqrt(MOTION_VAR)) * m_std) @ anatomy.motion_maps
    x += np.float32(np.sqrt(GLOBAL_VAR)) * glob[:, None]
    x *= anatomy.amplitude
    x += anatomy.baseline
    return SubjectSeries(data=x, motion=motion, loading=w)
