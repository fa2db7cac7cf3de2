"""Benchmark of ``cfhdask.stats.group_inference`` against nilearn ``permuted_ols``.

60 subjects x the 3 mm grey-matter mask (nilearn's MNI152 GM template
resampled to the DPABI 3 mm grid, > 0.2; ~64k voxels), smooth null maps
with 5 covariates, cluster-forming p < 0.001 (both signs), 18-connectivity.

Reported (all measured in this run, medians of ``--repeats``):
* cfhdask wall time with 1 and 2 Dask workers (``--n-perm`` permutations);
* nilearn ``permuted_ols`` (same design, same threshold, two-sided max-T,
  cluster size and mass, ``n_jobs`` = workers) run with ``--nilearn-perm``
  permutations and extrapolated linearly to ``--n-perm`` (said in the output);
* the same with TFCE (cfhdask ``--tfce-cfh-perm``, nilearn ``--tfce-perm``
  permutations, each extrapolated linearly to ``--n-perm``);
* peak traced memory of the in-process run for 1x and 4x the permutations;
* the load average at start and end (shared machine), and a summary of the ratios.

Usage: ``python benchmarks/bench_stats.py [--quick] [--n-perm 5000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc
import warnings

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy import stats as sstats

from cfhdask.grid import MNI_3MM_AFFINE, MNI_3MM_SHAPE


def gm_mask() -> np.ndarray:
    """nilearn's GM template on the 3 mm grid, > 0.2 (shipped with nilearn)."""
    import nibabel as nib
    from nilearn.datasets import load_mni152_gm_template
    from nilearn.image import resample_img

    tpl = load_mni152_gm_template(resolution=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = resample_img(tpl, target_affine=MNI_3MM_AFFINE, target_shape=MNI_3MM_SHAPE,
                           interpolation="continuous", force_resample=True, copy_header=True)
    return np.asarray(nib.Nifti1Image.get_fdata(img)) > 0.2


def make_data(mask: np.ndarray, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ijk = np.argwhere(mask)
    Y = np.empty((n, len(ijk)), dtype=np.float32)
    for s in range(n):
        vol = ndimage.gaussian_filter(rng.standard_normal(MNI_3MM_SHAPE), 1.0)
        Y[s] = vol[mask] / vol[mask].std()
    table = pd.DataFrame({
        "participant_id": [f"sub-{i + 1:02d}" for i in range(n)],
        "group": ["patient"] * (n // 2) + ["control"] * (n - n // 2),
        "age": rng.normal(40, 10, n), "sex": rng.choice(["F", "M"], n),
        "education": rng.normal(12, 3, n), "SDS": rng.normal(40, 8, n),
        "SAS": rng.normal(38, 8, n),
    })
    return Y, ijk, table


def run_cfhdask(Y, ijk, table, n_perm, n_workers, tfce=False, compute="dask"):
    from distributed import Client, LocalCluster

    from cfhdask.stats.inference import group_inference

    kw = dict(group="group", groups=["patient", "control"], n_perm=n_perm, tfce=tfce,
              ijk=ijk, grid_shape=MNI_3MM_SHAPE, affine=MNI_3MM_AFFINE, atlases=None,
              batch_size=max(8, n_perm // (8 * n_workers)))
    if compute == "local":
        t0 = time.perf_counter()
        group_inference(Y, table, compute="local", **kw)
        return time.perf_counter() - t0
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as lc, Client(lc) as client:
        t0 = time.perf_counter()
        group_inference(Y, table, client=client, **kw)
        return time.perf_counter() - t0


def run_nilearn(Y, ijk, table, n_perm, n_jobs, tfce=False):
    import nibabel as nib
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols

    mask = np.zeros(MNI_3MM_SHAPE, bool)
    mask[tuple(ijk.T)] = True
    masker = NiftiMasker(nib.Nifti1Image(mask.astype(np.int8), MNI_3MM_AFFINE)).fit()
    x = (table.group == "patient").to_numpy(float)[:, None]
    cov = table[["age", "education", "SDS", "SAS"]].to_numpy(float)
    cov = np.column_stack([cov - cov.mean(0), (table.sex == "M").to_numpy(float)])
    df = len(x) - 1 - 1 - cov.shape[1]
    thr = float(sstats.t.isf(0.001, df))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        permuted_ols(x, Y.astype(np.float64), confounding_vars=cov, model_intercept=True,
                     n_perm=n_perm, two_sided_test=True, random_state=0, n_jobs=n_jobs,
                     masker=masker, threshold=thr, tfce=tfce, output_type="dict", verbose=0)
    return time.perf_counter() - t0


def peak_memory(Y, ijk, table, n_perm) -> float:
    tracemalloc.start()
    run_cfhdask(Y, ijk, table, n_perm, 1, compute="local")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    ap.add_argument("--n-perm", type=int, default=5000, help="cfhdask permutations")
    ap.add_argument("--nilearn-perm", type=int, default=200,
                    help="nilearn permutations (extrapolated linearly to --n-perm)")
    ap.add_argument("--tfce-perm", type=int, default=40,
                    help="nilearn TFCE permutations (extrapolated linearly to --n-perm)")
    ap.add_argument("--tfce-cfh-perm", type=int, default=1000,
                    help="cfhdask TFCE permutations (extrapolated linearly to --n-perm)")
    ap.add_argument("--n-subjects", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=1, help="repeats (medians reported)")
    ap.add_argument("--tfce-repeats", type=int, default=1, help="repeats of the TFCE runs")
    ap.add_argument("--skip-tfce", action="store_true")
    args = ap.parse_args()
    mask = gm_mask()
    if args.quick:
        args.n_perm, args.nilearn_perm, args.tfce_perm, args.tfce_cfh_perm = 64, 16, 8, 32
        mask[:, :, 30:] = False
        mask[:30] = False
    Y, ijk, table = make_data(mask, args.n_subjects)
    print(f"data: {Y.shape[0]} subjects x {Y.shape[1]} voxels (3 mm GM > 0.2), "
          f"cluster p < 0.001, connectivity 18, two contrasts")
    print(f"load average at start: {os.getloadavg()} on {os.cpu_count()} cores")

    def med(f, *a, repeats=None, **k):
        return statistics.median(f(*a, **k) for _ in range(repeats or args.repeats))

    def extrapolate(f, n_small, n_big, *a, repeats=None, **k):
        """Time at n_small/2 and n_small; linear fit (start-up + per-perm) to n_big."""
        t_half = med(f, Y, ijk, table, n_small // 2, *a, repeats=repeats, **k)
        t_full = med(f, Y, ijk, table, n_small, *a, repeats=repeats, **k)
        if t_full <= t_half:  # timing noise: fall back to proportional scaling
            return t_full, t_full * n_big / n_small
        per = (t_full - t_half) / (n_small - n_small // 2)
        return t_full, t_full + per * (n_big - n_small)

    res = {}
    for w in (1, 2):
        res[("cfh", w)] = med(run_cfhdask, Y, ijk, table, args.n_perm, w)
        print(f"cfhdask  {args.n_perm} perms, {w} worker(s): {res[('cfh', w)]:8.1f} s")
    print(f"cfhdask scaling 1 -> 2 workers: {res[('cfh', 1)] / res[('cfh', 2)]:.2f}x")
    for w in (1, 2):
        t, res[("nil", w)] = extrapolate(run_nilearn, args.nilearn_perm, args.n_perm, w)
        print(f"nilearn  {args.nilearn_perm} perms, n_jobs={w}: {t:8.1f} s  -> extrapolated "
              f"(linear fit on {args.nilearn_perm // 2} and {args.nilearn_perm} perms) to "
              f"{args.n_perm}: {res[('nil', w)]:8.1f} s;  cfhdask is "
              f"{res[('nil', w)] / res[('cfh', w)]:.1f}x faster")
    if not args.skip_tfce:
        for w in (1, 2):
            a, res[("cfh_tfce", w)] = extrapolate(run_cfhdask, args.tfce_cfh_perm, args.n_perm,
                                                  w, tfce=True, repeats=args.tfce_repeats)
            b, res[("nil_tfce", w)] = extrapolate(run_nilearn, args.tfce_perm, args.n_perm, w,
                                                  tfce=True, repeats=args.tfce_repeats)
            print(f"TFCE, {w} worker(s): cfhdask {args.tfce_cfh_perm} perms {a:8.1f} s, "
                  f"nilearn {args.tfce_perm} perms {b:8.1f} s; extrapolated (linear fit on "
                  f"half and full) to {args.n_perm}: {res[('cfh_tfce', w)]:.0f} s vs "
                  f"{res[('nil_tfce', w)]:.0f} s; cfhdask is "
                  f"{res[('nil_tfce', w)] / res[('cfh_tfce', w)]:.1f}x faster")
    small = max(16, args.n_perm // 20)
    m1, m4 = peak_memory(Y, ijk, table, small), peak_memory(Y, ijk, table, 4 * small)
    print(f"peak traced memory (in-process): {small} perms {m1:.0f} MiB, "
          f"{4 * small} perms {m4:.0f} MiB (ratio {m4 / m1:.2f})")
    print(f"load average at end: {os.getloadavg()}")
    nil_best = min(res[("nil", 1)], res[("nil", 2)])
    print(f"SUMMARY cluster inference, {args.n_perm} perms, {Y.shape[0]} x {Y.shape[1]} "
          f"(medians of {args.repeats}): cfhdask {res[('cfh', 1)]:.1f} s (1 worker), "
          f"{res[('cfh', 2)]:.1f} s (2 workers); vs nilearn n_jobs=1: "
          f"{res[('nil', 1)] / res[('cfh', 1)]:.1f}x, n_jobs=2: "
          f"{res[('nil', 2)] / res[('cfh', 2)]:.1f}x, 2 workers vs best nilearn: "
          f"{nil_best / res[('cfh', 2)]:.1f}x; scaling 1 -> 2 workers "
          f"{res[('cfh', 1)] / res[('cfh', 2)]:.2f}x")
    if not args.skip_tfce:
        nil_best = min(res[("nil_tfce", 1)], res[("nil_tfce", 2)])
        print(f"SUMMARY TFCE (extrapolated to {args.n_perm}): cfhdask "
              f"{res[('cfh_tfce', 1)]:.0f} s / {res[('cfh_tfce', 2)]:.0f} s (1 / 2 workers); "
              f"vs nilearn n_jobs=1: {res[('nil_tfce', 1)] / res[('cfh_tfce', 1)]:.1f}x, "
              f"n_jobs=2: {res[('nil_tfce', 2)] / res[('cfh_tfce', 2)]:.1f}x, 2 workers vs "
              f"best nilearn: {nil_best / res[('cfh_tfce', 2)]:.1f}x; scaling 1 -> 2 workers "
              f"{res[('cfh_tfce', 1)] / res[('cfh_tfce', 2)]:.2f}x")
    print(f"SUMMARY memory: peak {m1:.0f} MiB at {small} perms, {m4:.0f} MiB at "
          f"{4 * small} perms (ratio {m4 / m1:.2f})")


if __name__ == "__main__":
    main()
