"""The simulated brain: grid, tissue, homotopic parcels, loadings and noise bases.

Everything here is shared by all subjects of a cohort and depends only on the
grid, the planted effects and the cohort seed, so it is built once per process
and cached (:func:`build_anatomy`).  Subjects differ only by their time
courses and a few scalar factors (see :mod:`cfhdask.sim.signals`).

Brain
    The MNI152 brain mask that nilearn ships offline, resampled to the grid,
    united with the grey-matter template (> 0.01) so that every voxel of the
    ``gm > 0.2`` analysis mask carries signal.  Outside the brain the images
    are 0.
Homotopic parcels
    Seed points in the left hemisphere (Poisson-disk, >= 14 mm apart), each
    mirrored to the right and displaced by ~3 mm (so the functional
    counterpart is near, not exactly at, the mirror voxel).  Each voxel belongs
    to the nearest seed of its hemisphere; a left parcel and its right partner
    form a *pair* that shares one signal.  Pairs are grouped into a few
    networks (7) whose signals are partly shared.
Loadings
    Each voxel's weight ``w`` on its pair signal is a smooth random field
    mapped to [0.40, 0.85] and attenuated outside grey matter.  Two voxels of
    one pair correlate at about ``w_l * w_r``, so the healthy CFH (max
    contralateral r) lies around 0.3-0.7.
Planted effects
    Each :class:`Effect` is a sphere.  Its parcel pair gets a seed at the
    sphere centre.  In everybody the sphere voxels are weakly coupled
    (``baseline_loading``); in the effect group their loading rises towards
    ``target_loading`` (a swap of private noise for the shared bilateral
    signal: no change of variance).  The rest of the sphere's parcel and the
    contralateral partner parcel are strongly coupled (``>= 0.88`` and
    ``>= 0.85``), so the contralateral voxels already reach their max
    correlation with left voxels *outside* the sphere: their CFH barely
    changes, and the group difference is lateralised to the sphere's side, as
    in the paper.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special
from scipy.spatial import cKDTree

from cfhdask import grid as mni_grid
from cfhdask.errors import CfhdaskInputError

log = logging.getLogger(__name__)

#: Fraction of each voxel's variance from the global signal and from motion.
GLOBAL_VAR = 0.05
MOTION_VAR = 0.03
#: Largest loading: leaves at least 4 % private variance.
MAX_LOADING = float(np.sqrt(1.0 - GLOBAL_VAR - MOTION_VAR - 0.04))
#: Number of shared smooth noise maps and their smoothness (FWHM, mm).
N_NOISE_MAPS = 160
NOISE_FWHM_MM = 6.0
#: Minimum spacing of parcel seeds (mm) and the right seeds' displacement SD (mm).
SEED_SPACING_MM = 14.0
PARTNER_JITTER_MM = 3.0
N_NETWORKS = 7
#: Loading of the effect parcel outside the sphere and of its partner parcel.
EFFECT_PARCEL_LOADING = 0.88
EFFECT_PARTNER_LOADING = 0.85


@dataclass(frozen=True)
class Effect:
    """A planted group difference of CFH in an MNI sphere.

    Attributes
    ----------
    name : str
        Label used in the ground truth (e.g. ``"left_putamen"``).
    center : tuple of float
        Sphere centre, MNI mm.
    radius : float
        Sphere radius, mm.  The increase is full within ``radius / 2`` and
        tapers (cosine) to 0 at ``radius``.
    group : str
        Group whose voxels get the increase (``"patient"`` or ``"control"``).
    baseline_loading, target_loading : float
        Loading on the bilateral pair signal at the centre in the other group
        and (at ``effect_size = 1``) in the effect group.
    """

    name: str
    center: tuple[float, float, float]
    radius: float = 7.0
    group: str = "patient"
    baseline_loading: float = 0.45
    target_loading: float = 0.80


#: The paper's result: increased CFH in patients at the left putamen and left precentral gyrus.
DEFAULT_EFFECTS: tuple[Effect, ...] = (
    Effect("left_putamen", (-30.0, -2.0, 10.0), radius=10.0),
    Effect("left_precentral", (-42.0, 0.0, 54.0), radius=9.0),
)


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Everything a cohort's subjects share (all per-voxel arrays are over brain voxels).

    Brain voxels are ordered by their Fortran-order flat index on the grid,
    which is the order of a NIfTI file's data block.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    ijk: np.ndarray            # (n, 3) int32
    xyz: np.ndarray            # (n, 3) float32, MNI mm
    hemisphere: np.ndarray     # (n,) int8
    flat_f: np.ndarray         # (n,) int64 Fortran-order flat index
    runs: np.ndarray           # (r, 3): start in flat_f, start in volume, length
    gm: np.ndarray             # (n,) float32 grey-matter probability
    wm_mask: np.ndarray        # (n,) bool: white matter (confound signal)
    csf_mask: np.ndarray       # (n,) bool: CSF (confound signal)
    pair: np.ndarray           # (n,) int32 parcel pair of each voxel
    pair_network: np.ndarray   # (P,) int32 network of each pair
    loading: np.ndarray        # (n,) float32 loading on the pair signal (no effect)
    effect_delta: np.ndarray   # (E, n) float32 loading increase per effect at effect_size=1
    effects: tuple[Effect, ...]
    noise_maps: np.ndarray     # (K, n) float32, sum of squares over K = 1 per voxel
    motion_maps: np.ndarray    # (6, n) float32, sum of squares over 6 = 1 per voxel
    baseline: np.ndarray       # (n,) float32 mean intensity
    amplitude: np.ndarray      # (n,) float32 SD of the fluctuations
    info: dict = field(default_factory=dict)

    @property
    def n_voxels(self) -> int:
        """Number of brain voxels."""
        return int(self.flat_f.size)

    @property
    def n_pairs(self) -> int:
        """Number of homotopic parcel pairs."""
        return int(self.pair_network.size)

    def to_volume(self, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Put per-voxel values (n,) or (..., n) back on the grid (..., X, Y, Z)."""
        values = np.asarray(values)
        lead = values.shape[:-1]
        out = np.full(lead + (int(np.prod(self.shape)),), fill, dtype=values.dtype)
        out[..., self.flat_f] = values
        return out.reshape(lead + self.shape[::-1]).transpose(
            tuple(range(len(lead))) + (len(lead) + 2, len(lead) + 1, len(lead)))


def resolve_grid(grid: str | tuple) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of a grid given as ``"3mm"``, ``"2mm"``, ``"<N>mm"`` or ``(shape, affine)``.

    ``"<N>mm"`` (N dividing 180 and 216, e.g. ``"6mm"``) is the SPM bounding
    box x 90..-90, y -126..90, z -72..108 at N mm, x-flipped like the 3 mm grid:
    coarse grids for fast tests.
    """
    if isinstance(grid, str):
        if grid == "3mm":
            return mni_grid.MNI_3MM_SHAPE, mni_grid.MNI_3MM_AFFINE.copy()
        if grid == "2mm":
            return mni_grid.MNI_2MM_SHAPE, mni_grid.MNI_2MM_AFFINE.copy()
        m = re.fullmatch(r"(\d+)mm", grid)
        if not m or int(m.group(1)) == 0 or 180 % int(m.group(1)) or 216 % int(m.group(1)):
            raise CfhdaskInputError(
                f"grid: {grid!r} is not a known grid (3mm, 2mm, or Nmm with N dividing 180 and 216)")
        v = float(m.group(1))
        shape = (int(180 / v) + 1, int(216 / v) + 1, int(180 / v) + 1)
        affine = np.array([[-v, 0, 0, 90.0], [0, v, 0, -126.0], [0, 0, v, -72.0], [0, 0, 0, 1]])
        return shape, affine
    try:
        shape, affine = grid
        shape = tuple(int(s) for s in shape)
        affine = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CfhdaskInputError("grid: give '3mm', '2mm', 'Nmm' or (shape, affine)") from exc
    if len(shape) != 3 or min(shape) < 1 or affine.shape != (4, 4):
        raise CfhdaskInputError(f"grid: shape must be 3 positive ints and affine 4x4, got {shape}")
    return shape, affine


@functools.lru_cache(maxsize=4)
def _tissue_on_grid(shape: tuple[int, int, int], affine_key: tuple) -> tuple[np.ndarray, ...]:
    """MNI152 brain mask and GM/WM probabilities resampled to a grid (cached)."""
    import warnings

    from nilearn.datasets import (
        load_mni152_brain_mask,
        load_mni152_gm_template,
        load_mni152_wm_template,
    )
    from nilearn.image import resample_img

    affine = np.array(affine_key, dtype=np.float64).reshape(4, 4)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for loader in (load_mni152_brain_mask, load_mni152_gm_template, load_mni152_wm_template):
            img = loader(resolution=1)
            res = resample_img(img, target_affine=affine, target_shape=shape,
                               interpolation="continuous", force_resample=True,
                               copy_header=True)
            out.append(np.nan_to_num(np.asarray(res.dataobj, dtype=np.float32)))
    brain, gm, wm = out
    return brain, gm, wm


def _smooth_field(rng: np.random.Generator, shape, sigma_vox, mask_flat) -> np.ndarray:
    """A Gaussian-smoothed white-noise field, standardised over the brain voxels."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox)
    v = f.ravel(order="F")[mask_flat]
    return (v - v.mean()) / (v.std() + 1e-12)


def _poisson_seeds(rng, candidates: np.ndarray, forced: list[np.ndarray], spacing: float,
                   keep_clear: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Greedy Poisson-disk sample of seed points among candidate coordinates."""
    seeds = [np.asarray(f, dtype=np.float64) for f in forced]
    order = rng.permutation(len(candidates))[: min(len(candidates), 4000)]
    for idx in order:
        p = candidates[idx]
        if any(np.linalg.norm(p - c) < r for c, r in keep_clear):
            continue
        if seeds and np.min(np.linalg.norm(np.asarray(seeds) - p, axis=1)) < spacing:
            continue
        seeds.append(p)
    return np.asarray(seeds, dtype=np.float64).reshape(-1, 3)


def _taper(d: np.ndarray, radius: float) -> np.ndarray:
    """1 within radius/2, cosine taper to 0 at radius."""
    half = radius / 2.0
    t = np.clip((d - half) / max(radius - half, 1e-9), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def build_anatomy(grid: str | tuple = "3mm", effects: tuple[Effect, ...] = DEFAULT_EFFECTS,
                  seed: int = 0) -> Anatomy:
    """Build (or fetch from the cache) the shared anatomy of a simulated cohort.

    Parameters
    ----------
    grid : str or (shape, affine)
        See :func:`resolve_grid`.
    effects : tuple of Effect
        Planted effects; each centre must fall inside the brain on this grid.
    seed : int
        Cohort seed (the anatomy uses its own stream of it).

    Returns
    -------
    Anatomy
    """
    shape, affine = resolve_grid(grid)
    effects = tuple(effects)
    return _build_anatomy_cached(shape, tuple(np.round(affine, 9).ravel().tolist()), effects,
                                 int(seed))


@functools.lru_cache(maxsize=4)
def _build_anatomy_cached(shape, affine_key, effects, seed) -> Anatomy:
    affine = np.array(affine_key, dtype=np.float64).reshape(4, 4)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    brain3, gm3, wm3 = _tissue_on_grid(shape, affine_key)
    mask3 = (brain3 > 0.5) | (gm3 > 0.01)
    mask_flat = mask3.ravel(order="F")
    flat_f = np.flatnonzero(mask_flat)
    if flat_f.size < 20:
        raise CfhdaskInputError(f"grid: only {flat_f.size} brain voxels on this grid; "
                                "it must cover the MNI brain")
    ijk = np.stack(np.unravel_index(flat_f, shape, order="F"), axis=1).astype(np.int32)
    xyz = mni_grid.ijk_to_xyz(ijk, affine)
    hemi = mni_grid.hemisphere_of(xyz[:, 0])
    gm = gm3.ravel(order="F")[flat_f]
    wm = wm3.ravel(order="F")[flat_f]
    vox = float(np.mean(np.abs(np.linalg.svd(affine[:3, :3], compute_uv=False))))

    # runs of consecutive flat indices: fast scatter into the volume
    brk = np.flatnonzero(np.diff(flat_f) != 1) + 1
    starts = np.concatenate([[0], brk])
    ends = np.concatenate([brk, [flat_f.size]])
    runs = np.stack([starts, flat_f[starts], ends - starts], axis=1).astype(np.int64)

    # --- homotopic parcels ---------------------------------------------------
    for e in effects:
        ijk_e = mni_grid.xyz_to_ijk(np.asarray(e.center), affine)[0]
        inside = np.all((ijk_e >= 0) & (ijk_e < np.asarray(shape)))
        if not inside or not mask3[tuple(ijk_e)] or abs(e.center[0]) < vox:
            raise CfhdaskInputError(
                f"effects: {e.name!r} centre {e.center} is not a lateral brain voxel of this grid")
        if e.group not in ("patient", "control"):
            raise CfhdaskInputError(f"effects: {e.name!r} group must be patient or control")
    left_fx = [np.array([-abs(e.center[0]), e.center[1], e.center[2]]) for e in effects]
    keep_clear = [(c, e.radius + SEED_SPACING_MM / 2) for c, e in zip(left_fx, effects, strict=True)]
    left_seeds = _poisson_seeds(rng, xyz[hemi == mni_grid.LEFT], left_fx, SEED_SPACING_MM,
                                keep_clear)
    n_half = len(left_seeds)
    jitter = rng.normal(0.0, PARTNER_JITTER_MM, size=(n_half, 3))
    right_seeds = left_seeds * np.array([-1.0, 1.0, 1.0]) + jitter
    pair = np.zeros(flat_f.size, dtype=np.int32)
    for code, seeds in ((mni_grid.LEFT, left_seeds), (mni_grid.RIGHT, right_seeds)):
        sel = hemi == code
        if sel.any():
            pair[sel] = cKDTree(seeds).query(xyz[sel])[1]
    mid = hemi == mni_grid.MIDLINE
    if mid.any():
        pair[mid] = cKDTree(np.vstack([left_seeds, right_seeds])).query(xyz[mid])[1] % n_half
    pair_network = rng.integers(0, N_NETWORKS, size=n_half).astype(np.int32)

    # --- loadings --------------------------------------------------------------
    sigma_vox = 20.0 / 2.3548 / vox
    z = _smooth_field(rng, shape, sigma_vox, flat_f)
    loading = 0.40 + 0.45 * special.ndtr(z)
    loading *= 0.35 + 0.65 * np.clip(gm / 0.5, 0.0, 1.0)
    effect_delta = np.zeros((len(effects), flat_f.size), dtype=np.float32)
    for k, e in enumerate(effects):
        center = np.asarray(e.center, dtype=np.float64)
        d = np.linalg.norm(xyz - center, axis=1)
        prof = _taper(d, e.radius)
        own_side = hemi == int(np.sign(center[0]))
        p_idx = pair[np.argmin(d)]
        in_pair = pair == p_idx
        ring = in_pair & own_side & (d > e.radius) & (gm > 0.2)
        partner = in_pair & ~own_side & (hemi != mni_grid.MIDLINE) & (gm > 0.2)
        loading[ring] = np.maximum(loading[ring], EFFECT_PARCEL_LOADING)
        loading[partner] = np.maximum(loading[partner], EFFECT_PARTNER_LOADING)
        loading = loading * (1.0 - prof) + e.baseline_loading * prof
        effect_delta[k] = (e.target_loading - e.baseline_loading) * prof
    loading = np.clip(loading, 0.0, MAX_LOADING).astype(np.float32)

    # --- shared noise and motion maps -------------------------------------------
    sig_n = NOISE_FWHM_MM / 2.3548 / vox
    maps = np.empty((N_NOISE_MAPS + 6, flat_f.size), dtype=np.float32)
    for k in range(maps.shape[0]):
        f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sig_n)
        maps[k] = f.ravel(order="F")[flat_f]
    noise_maps = maps[:N_NOISE_MAPS]
    noise_maps /= np.sqrt(np.sum(noise_maps.astype(np.float64) ** 2, axis=0)).astype(np.float32)
    motion_maps = maps[N_NOISE_MAPS:]
    motion_maps /= np.sqrt(np.sum(motion_maps.astype(np.float64) ** 2, axis=0)).astype(np.float32)

    # --- intensities ---------------------------------------------------------------
    bias = _smooth_field(rng, shape, 40.0 / 2.3548 / vox, flat_f)
    baseline = (1000.0 * (0.75 + 0.3 * np.clip(gm, 0, 1)) * (1.0 + 0.03 * bias)).astype(np.float32)
    amplitude = (0.012 * baseline * (0.6 + 0.6 * np.clip(gm, 0, 1))).astype(np.float32)
    csf = (gm < 0.2) & (wm < 0.2) & (brain3.ravel(order="F")[flat_f] > 0.5)
    wm_mask = wm > 0.9
    if not wm_mask.any():
        wm_mask = wm >= wm.max()
    if not csf.any():
        csf = gm <= gm.min()
    log.debug("Anatomy: %d brain voxels, %d parcel pairs", flat_f.size, n_half)
    return Anatomy(
        shape=tuple(shape), affine=affine, ijk=ijk, xyz=xyz.astype(np.float32), hemisphere=hemi,
        flat_f=flat_f, runs=runs, gm=gm.astype(np.float32), wm_mask=wm_mask, csf_mask=csf,
        pair=pair, pair_network=pair_network, loading=loading, effect_delta=effect_delta,
        effects=effects, noise_maps=noise_maps, motion_maps=motion_maps, baseline=baseline,
        amplitude=amplitude, info={"n_pairs": n_half, "n_voxels": int(flat_f.size)},
    )


def effect_mask(grid: str | tuple = "3mm", effects: tuple[Effect, ...] = DEFAULT_EFFECTS,
                min_profile: float = 0.5) -> np.ndarray:
    """Ground truth: 3D int map of the planted spheres (k+1 for effect k, 0 elsewhere).

    Voxels whose taper profile is >= ``min_profile`` are labelled (no brain masking).
    """
    shape, affine = resolve_grid(grid)
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = mni_grid.ijk_to_xyz(ijk, affine)
    out = np.zeros(int(np.prod(shape)), dtype=np.int16)
    for k, e in enumerate(effects):
        prof = _taper(np.linalg.norm(xyz - np.asarray(e.center), axis=1), e.radius)
        out[(prof >= min_profile) & (out == 0)] = k + 1
    return out.reshape(shape)
