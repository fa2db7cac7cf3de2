"""Ingest + denoise throughput of one demo subject: this tree vs the previous pipeline vs nilearn.

Simulates one subject of the demo (``cfhdask simulate --layout fmriprep``: 3 mm
MNI grid 61 x 73 x 61, 230 volumes of int16 ``.nii.gz``, TR 2 s, an fMRIPrep
confounds table) in a temporary folder, then times, each in a fresh process
with one thread (BLAS included) and interleaved repeat by repeat:

* ``cfhdask`` (this tree) and ``baseline`` (the package as it was at
  ``--baseline REF``, default the pipeline before issue 11, extracted with
  ``git archive``): the paper's denoising (drop 10, 4 mm smoothing, Friston-24
  + WM + CSF + global signal regression, detrend, 0.01-0.1 Hz Butterworth) of
  the grey-matter voxels, alone (``denoise``: the Dask graph computed) and
  written into a fresh Zarr cohort store (``ingest``: ``cfhdask.ingest``);
* the peer: ``nibabel.load`` + ``get_fdata``, ``nilearn.image.smooth_img``,
  masking and ``nilearn.signal.clean`` (regress, then filter) of the same
  subject with the same regressors.

Prints the medians and the throughput ratios (median of the per-repeat
ratios, > 1: this tree is faster), and how far the three results are apart.
``--cohort N`` also ingests N simulated subjects on the default embedded
LocalCluster (one worker per core), as ``make demo`` does, with either package.
``--plain`` instead compares ingest without denoising to nibabel load +
``np.save`` (several synthetic images).  ``--quick``: a small grid, seconds.

Usage::

    python benchmarks/bench_ingest.py [--repeats 5] [--baseline REF] [--cohort N] [--quick]
    python benchmarks/bench_ingest.py --plain
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _bench_util import REPO, extract_tree  # benchmarks/ is sys.path[0]

#: The commit whose pipeline this tree is compared with (main before issue 11).
BASELINE_REF = "e224d65"
ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                               "NUMEXPR_NUM_THREADS")}


# ------------------------------------------------------------------ children


def _subject(sim: str):
    from cfhdask.prep.discover import discover_inputs

    inputs, _ = discover_inputs(bids_derivatives=sim)
    return inputs[0]


def child_cfhdask(sim: str, out: str, save: str) -> dict:
    """Denoise (graph computed) and ingest (into a store) one subject; wall times."""
    import dask

    import cfhdask
    from cfhdask.grid import voxel_table
    from cfhdask.io.nifti import read_header
    from cfhdask.prep.ingest import ingest
    from cfhdask.prep.mask import gm_mask
    from cfhdask.prep.pipeline import DenoiseParams, denoise_graph, make_prepare, plan_subject

    inp = _subject(sim)
    params = DenoiseParams()
    first = read_header(inp.bold)  # the grey-matter mask, made once per study: not timed
    ijk = voxel_table(gm_mask(first.grid_shape, first.affine), first.affine).ijk
    with dask.config.set(scheduler="sync"):
        for _ in range(2):  # the first run imports and warms up: the second is timed
            t0 = time.perf_counter()
            header = read_header(inp.bold)
            plan = plan_subject(inp, header, params)
            series = denoise_graph(plan, header, ijk, params).compute()
            t_denoise = time.perf_counter() - t0
        t0 = time.perf_counter()
        ingest([inp], out, drop_volumes=params.drop_volumes, prepare=make_prepare(params))
        t_ingest = time.perf_counter() - t0
    if save:
        np.save(save, series)
    return {"denoise": t_denoise, "ingest": t_ingest, "package": cfhdask.__file__}


def child_cohort(sim: str, out: str) -> dict:
    """Ingest + denoise every subject of ``sim`` on the default embedded LocalCluster."""
    import cfhdask
    from cfhdask.cluster import dask_client
    from cfhdask.prep.discover import discover_inputs
    from cfhdask.prep.ingest import ingest
    from cfhdask.prep.pipeline import DenoiseParams, make_prepare

    inputs, _ = discover_inputs(bids_derivatives=sim)
    params = DenoiseParams()
    with dask_client() as client:
        n_workers = len(client.scheduler_info()["workers"])
        t0 = time.perf_counter()
        ingest(inputs, out, drop_volumes=params.drop_volumes, prepare=make_prepare(params),
               client=client)
        wall = time.perf_counter() - t0
    return {"ingest": wall, "n_subjects": len(inputs), "n_workers": n_workers,
            "package": cfhdask.__file__}


def child_nilearn(sim: str, save: str) -> dict:
    """nibabel load, smooth_img, mask, signal.clean (regress, then filter)."""
    from _bench_util import nilearn_denoise

    from cfhdask.grid import voxel_table
    from cfhdask.io.nifti import read_header
    from cfhdask.prep.mask import gm_mask
    from cfhdask.prep.pipeline import DenoiseParams, plan_subject

    inp = _subject(sim)
    p = DenoiseParams()
    header = read_header(inp.bold)  # the same regressors and mask (not timed)
    plan = plan_subject(inp, header, p)
    ijk = voxel_table(gm_mask(header.grid_shape, header.affine), header.affine).ijk
    clean, times = nilearn_denoise(inp.bold, ijk, plan.table, drop=p.drop_volumes,
                                   fwhm=p.smoothing_fwhm, tr=plan.tr, high_pass=p.high_pass,
                                   low_pass=p.low_pass)
    if save:
        np.save(save, clean.T.astype(np.float32))
    return times


# ---------------------------------------------------------------- measuring


def run_child(kind: str, package_root: Path, *args: str) -> dict:
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(package_root)}
    out = subprocess.run([sys.executable, __file__, "--_child", kind, *args], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def extract_baseline(ref: str, dest: Path) -> Path | None:
    """The ``cfhdask`` package at git ``ref`` under ``dest``; None when git cannot."""
    try:
        return extract_tree(ref, dest)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"(no baseline: git archive {ref} failed: {exc})")
        return None


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


def bench_denoise(args) -> None:
    from cfhdask.sim.cohort import simulate_cohort

    tmp = Path(tempfile.mkdtemp(prefix="cfhdask-bench-ingest-"))
    try:
        sim = tmp / "sim"
        grid = "9mm" if args.quick else "3mm"
        simulate_cohort(sim, n_patients=1, n_controls=0, grid=grid, layout="fmriprep",
                        n_volumes=60 if args.quick else None, n_jobs=1)
        bold = next(sim.rglob("*_bold.nii.gz"))
        base = extract_baseline(args.baseline, tmp / "baseline") if args.baseline else None
        kinds = {"cfhdask": REPO, **({"baseline": base} if base else {})}
        times: dict[str, list[dict]] = {k: [] for k in [*kinds, "nilearn"]}
        for r in range(args.repeats):
            for kind, root in kinds.items():
                store = tmp / f"{kind}-{r}.zarr"
                save = str(tmp / f"{kind}.npy") if r == 0 else ""
                res = run_child("cfhdask", root, str(sim), str(store), save)
                assert Path(res["package"]).resolve().is_relative_to(Path(root).resolve()), res
                times[kind].append(res)
                shutil.rmtree(store, ignore_errors=True)
            if r < args.peer_repeats:  # nilearn's signal.clean filters one series at a time
                times["nilearn"].append(run_child(
                    "nilearn", REPO, str(sim), str(tmp / "nilearn.npy") if r == 0 else ""))
        print(f"demo subject {bold.name}: grid {grid}, {bold.stat().st_size / 1e6:.1f} MB "
              f"int16 .nii.gz; the paper's denoising; {args.repeats} repeats "
              f"({len(times['nilearn'])} of the peer), each in a fresh process with 1 thread; "
              "medians")
        med = {k: {s: statistics.median(t[s] for t in v) for s in v[0] if s != "package"}
               for k, v in times.items()}
        for kind in kinds:
            label = "cfhdask (this tree)" if kind == "cfhdask" else f"baseline ({args.baseline})"
            print(f"  {label:26s} denoise {med[kind]['denoise']:6.2f} s   ingest + denoise "
                  f"(into a Zarr store) {med[kind]['ingest']:6.2f} s")
        nl = med["nilearn"]
        print(f"  {'nilearn peer':26s} denoise {nl['denoise']:6.2f} s   (nibabel load + "
              f"get_fdata {nl['load']:.2f} s, smooth_img + mask {nl['smooth']:.2f} s, "
              f"signal.clean {nl['clean']:.2f} s)")

        def ratio(num: str, den: str, stage: str) -> float:
            return statistics.median(b[stage] / a[stage]
                                     for a, b in zip(times[num], times[den], strict=True))

        print("throughput ratios (> 1: this tree is faster; vs the baseline the median of "
              "the per-repeat ratios):")
        if base:
            print(f"  this tree / baseline : denoise {ratio('cfhdask', 'baseline', 'denoise'):.2f}x"
                  f", ingest + denoise {ratio('cfhdask', 'baseline', 'ingest'):.2f}x")
        ours = med["cfhdask"]
        print(f"  this tree / nilearn  : denoise {nl['denoise'] / ours['denoise']:.2f}x, "
              f"ingest + denoise (incl. the Zarr write) {nl['denoise'] / ours['ingest']:.2f}x;"
              f" nilearn's load + smoothing alone / this tree's denoise "
              f"{(nl['load'] + nl['smooth']) / ours['denoise']:.2f}x (medians)")
        series = np.load(tmp / "cfhdask.npy")
        agree = [f"vs nilearn {rel(series, np.load(tmp / 'nilearn.npy')):.1e}"]
        if base:
            agree.insert(0, f"vs baseline {rel(series, np.load(tmp / 'baseline.npy')):.1e}")
        print("agreement, max |difference| / max |reference|: " + ", ".join(agree))
        if args.cohort:
            bench_cohort(args, tmp, grid, kinds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_cohort(args, tmp: Path, grid: str, kinds: dict) -> None:
    """Ingest + denoise of ``--cohort`` subjects on the default LocalCluster, as the demo."""
    from cfhdask.sim.cohort import simulate_cohort

    sim = tmp / "cohort"
    n_p = args.cohort // 2
    simulate_cohort(sim, n_patients=n_p, n_controls=args.cohort - n_p, grid=grid,
                    layout="fmriprep", n_volumes=60 if args.quick else None)
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    info = {}
    for r in range(args.cohort_repeats):
        for kind, root in kinds.items():
            store = tmp / f"cohort-{kind}-{r}.zarr"
            info = run_child("cohort", root, str(sim), str(store))
            walls[kind].append(info["ingest"])
            shutil.rmtree(store, ignore_errors=True)
    print(f"cohort of {info['n_subjects']} demo subjects on the default LocalCluster "
          f"({info['n_workers']} workers), {args.cohort_repeats} repeats (medians):")
    for kind in kinds:
        wall = statistics.median(walls[kind])
        print(f"  {kind:10s} ingest + denoise {wall:7.2f} s  "
              f"({wall / info['n_subjects']:.2f} s per subject)")
    if "baseline" in kinds:
        ratio = statistics.median(b / a for a, b in zip(walls["cfhdask"], walls["baseline"],
                                                           strict=True))
        print(f"  throughput ratio this tree / baseline: {ratio:.2f}x")


# ------------------------------------------------------------ plain ingest


def bench_plain(args) -> None:
    """Ingest without denoising vs nibabel load + np.save (synthetic images)."""
    import nibabel as nib

    from cfhdask.cluster import dask_client
    from cfhdask.grid import MNI_3MM_AFFINE, MNI_3MM_SHAPE
    from cfhdask.prep.ingest import ingest
    from cfhdask.prep.mask import gm_mask

    shape, affine = MNI_3MM_SHAPE, MNI_3MM_AFFINE
    n_subjects, n_vol, repeats = 4, 120, args.repeats
    if args.quick:
        shape = (31, 37, 31)
        affine = np.array([[-6.0, 0, 0, 90], [0, 6.0, 0, -126], [0, 0, 6.0, -72], [0, 0, 0, 1]])
        n_subjects, n_vol, repeats = 2, 20, 2
    tmp = Path(tempfile.mkdtemp(prefix="cfhdask-bench-ingest-"))
    try:
        rng = np.random.default_rng(0)
        paths = []
        for s in range(n_subjects):
            data = (1000 + 50 * rng.standard_normal((*shape, n_vol))).astype(np.int16)
            img = nib.Nifti1Image(data, affine)
            img.header.set_xyzt_units("mm", "sec")
            paths.append(str(tmp / f"sub-{s + 1:02d}_task-rest_bold.nii.gz"))
            nib.save(img, paths[-1])
        mb = n_subjects * int(np.prod(shape)) * n_vol * 2 / 1e6  # int16 on disk
        mask = gm_mask(shape, affine)
        t_ours, t_peer = [], []
        with dask_client(n_workers=args.n_workers) as client:
            for r in range(repeats):
                out = tmp / f"store-{r}.zarr"
                t0 = time.perf_counter()
                ingest(paths, str(out), client=client)
                t_ours.append(time.perf_counter() - t0)
                shutil.rmtree(out)
                npy = tmp / f"npy-{r}"
                npy.mkdir()
                t0 = time.perf_counter()
                for i, p in enumerate(paths):
                    np.save(npy / f"{i}.npy", nib.load(p).get_fdata(dtype=np.float32)[mask])
                t_peer.append(time.perf_counter() - t0)
                shutil.rmtree(npy)
        ours, theirs = statistics.median(t_ours), statistics.median(t_peer)
        print(f"grid {shape}, {n_subjects} images x {n_vol} volumes ({mb:.1f} MB int16), "
              f"mask {int(mask.sum())} voxels, {repeats} repeats")
        print(f"cfhdask ingest       : {ours:7.2f} s  {mb / ours:8.1f} MB/s")
        print(f"nibabel + np.save    : {theirs:7.2f} s  {mb / theirs:8.1f} MB/s")
        print(f"throughput ratio cfhdask/peer: {theirs / ours:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="repeats (medians reported)")
    ap.add_argument("--peer-repeats", type=int, default=1,
                    help="repeats of the nilearn peer (~1.5 min each on 1 core; default 1)")
    ap.add_argument("--baseline", default=BASELINE_REF, metavar="REF",
                    help="git ref of the pipeline to compare with ('' : none; default "
                         f"{BASELINE_REF}, main before issue 11)")
    ap.add_argument("--cohort", type=int, default=0, metavar="N",
                    help="also ingest N subjects on the default LocalCluster, as the demo "
                         "does (default 0: not run)")
    ap.add_argument("--cohort-repeats", type=int, default=2, help="repeats of --cohort")
    ap.add_argument("--quick", action="store_true", help="a small grid (seconds)")
    ap.add_argument("--plain", action="store_true",
                    help="ingest without denoising vs nibabel load + np.save instead")
    ap.add_argument("--n-workers", type=int, default=None, help="LocalCluster workers (--plain)")
    ap.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        kind, *rest = args._child
        child = {"cfhdask": child_cfhdask, "cohort": child_cohort, "nilearn": child_nilearn}
        res = child[kind](*rest)
        print(json.dumps(res))
        return
    if args.plain:
        bench_plain(args)
    else:
        bench_denoise(args)


if __name__ == "__main__":
    main()
