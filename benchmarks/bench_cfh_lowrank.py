"""Exact low-rank CFH of one simulated demo-like subject vs the full-rank float32 GEMM floor.

One subject of the simulated cohort (``cfhdask.sim``: 3 mm MNI grid, 230
volumes at TR 2 s, the first 10 dropped: T = 220) is denoised as in the paper
with the package's own kernels (smoothing 4 mm, Friston-24 + white matter +
CSF + global signal regressed, linear detrend, Butterworth band-pass
0.01-0.1 Hz, or DPABI's ideal one with ``--filter ideal``), restricted to the grey-matter voxels (probability > 0.2) of each
hemisphere and standardised.  Then, in this process with one BLAS thread (as
one Dask worker thread runs a block):

* ``floor``: the float32 product ``L @ R.T`` at full T (``gemm_floor`` of
  ``bench_cfh.py``: row pieces of 64 MiB);
* ``lowrank``: :func:`cfhdask.cfh.lowrank.lowrank_maxcorr` (``mode="auto"``), everything
  included: Gram matrix, eigen-decomposition, rank choice, pilot, projection,
  low-rank product with the fused bound passes, exact candidates;
* ``onerank``: the same with a single rank, that of
  :data:`~cfhdask.cfh.lowrank.RESIDUAL_TOL` (the plan before the rank ladder
  :data:`~cfhdask.cfh.lowrank.RESIDUAL_LADDER`);
* ``full``: the same loop with ``mode="off"`` (today's kernel,
  :func:`cfhdask.cfh.kernels.block_maxcorr`);
* ``unfiltered``: ``mode="auto"`` on the same subject without denoising (only
  the dropped volumes): the plan must fall back to full rank.

Each repeat times all of them in turn; the medians and the ratios to the floor
of this run are printed, with the rank, the rungs the pilot tried, candidates and
the largest difference to the full-rank kernel (values and counterparts).

    python benchmarks/bench_cfh_lowrank.py              # 3 mm, T = 220 (about a minute)
    python benchmarks/bench_cfh_lowrank.py --filter ideal   # DPABI's ideal band-pass
    python benchmarks/bench_cfh_lowrank.py --quick      # the 6 mm grid, seconds
    python benchmarks/bench_cfh_lowrank.py --hcp        # + 2 mm-like, T = 1200, TR 0.72 s
    # one band-passed 2 mm subject, T = 1200 at TR 0.72 s, unsmoothed, low rank only,
    # the floor timed on 1/8 of the left rows and scaled (a few minutes)
    python benchmarks/bench_cfh_lowrank.py --grid 2mm --volumes 1210 --tr 0.72 --fwhm 0 \\
        --cases lowrank --floor-rows 11125 --repeats 1

The peak RSS of this process during each call is printed too (the data are included:
compare it with the RSS printed before the runs).  ``--profile`` adds one more
``lowrank`` call after the timed ones, with the kernel's stage timers on
(:func:`cfhdask.cfh.lowrank.stage_times`), and prints each stage's CPU time as a share
of the floor's median CPU time.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import psutil
from _bench_util import DROP, PeakMemory, demo_subject, gemm_floor  # benchmarks/ is sys.path[0]
from threadpoolctl import threadpool_limits

from cfhdask.cfh.lowrank import RESIDUAL_TOL, lowrank_maxcorr, stage_times


def _diff(res, ref) -> tuple[float, int]:
    """Largest |Δr| and number of differing counterparts, both sides."""
    dr = max(float(np.nanmax(np.abs(res.row_max - ref.row_max))),
             float(np.nanmax(np.abs(res.col_max - ref.col_max))))
    nd = int((res.row_arg != ref.row_arg).sum() + (res.col_arg != ref.col_arg).sum())
    return dr, nd


CASES = ("floor", "lowrank", "onerank", "full", "unfiltered")


def run_case(label: str, subject, unfiltered, repeats: int, cases=CASES,
             floor_rows: int | None = None, profile: bool = False) -> None:
    """Time ``cases`` (always with the floor) on one subject, interleaved, and print the ratios.

    ``floor_rows``: the floor is timed on that many left rows and scaled by
    ``nL / floor_rows`` (a GEMM's time is linear in its rows), for subjects whose
    full floor takes minutes.
    """
    zl, zr, lv, rv = subject
    keys = ("floor", *(k for k in CASES[1:] if k in cases))
    times: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    peak: dict[str, int] = {}
    out = {}
    n_floor = zl.shape[0] if floor_rows is None else max(1, min(int(floor_rows), zl.shape[0]))
    scale = zl.shape[0] / n_floor
    runs = {"floor": lambda: gemm_floor(zl[:n_floor], zr),
            "lowrank": lambda: lowrank_maxcorr(zl, zr, lv, rv),
            "onerank": lambda: lowrank_maxcorr(zl, zr, lv, rv, tol=RESIDUAL_TOL),
            "full": lambda: lowrank_maxcorr(zl, zr, lv, rv, mode="off")}
    if unfiltered is not None:
        runs["unfiltered"] = lambda: lowrank_maxcorr(*unfiltered)

    def timed(key):
        with PeakMemory(children=False) as mem:  # no child processes here
            t0, c0 = time.perf_counter(), time.process_time()
            out[key] = runs[key]()
            times[key].append((time.perf_counter() - t0) * (scale if key == "floor" else 1))
            cpu[key].append((time.process_time() - c0) * (scale if key == "floor" else 1))
        peak[key] = max(peak.get(key, 0), mem.peak)

    with threadpool_limits(limits=1, user_api="blas"):
        lowrank_maxcorr(zl[:512], zr[:512], lv[:512], rv[:512])  # compile / warm up
        gemm_floor(zl[:2048], zr[:2048])
        base = psutil.Process().memory_info().rss
        for _ in range(repeats):
            for key in keys:
                timed(key)
        if profile:
            with stage_times() as stages:
                c0 = time.process_time()
                lowrank_maxcorr(zl, zr, lv, rv)
                stages["total"] = time.process_time() - c0
    med = {k: float(np.median(v)) for k, v in times.items()}
    mcpu = {k: float(np.median(v)) for k, v in cpu.items()}
    n_t = zl.shape[1]
    floor_note = "" if n_floor == zl.shape[0] else \
        f"; floor timed on {n_floor} left rows, scaled x{scale:.2f}"
    print(f"[{label}] {zl.shape[0]} x {zr.shape[0]} voxels, T {n_t}, 1 BLAS thread, "
          f"median of {repeats}{floor_note}; load average {os.getloadavg()[0]:.1f}")
    print("  (wall s, ratio to the floor; then the same for this process's CPU time, less "
          "sensitive to other users of the machine; peak RSS of this process during the call)")

    def row(key):
        return (f"{med[key]:8.3f} s  {med[key] / med['floor']:.3f} | cpu {mcpu[key]:8.3f} s  "
                f"{mcpu[key] / mcpu['floor']:.3f} | peak {peak[key] / 2**30:.2f} GiB")
    print(f"  float32 GEMM floor (full T)     {row('floor')}")
    print(f"  (RSS before the runs, data included: {base / 2**30:.2f} GiB)")
    if "lowrank" in out:
        res, info = out["lowrank"]
        n_vox = zl.shape[0] + zr.shape[0]
        print(f"  exact low-rank CFH              {row('lowrank')}  ({_what(info, n_vox)})")
    if "onerank" in out:
        n_vox = zl.shape[0] + zr.shape[0]
        print(f"  one rank (residual {RESIDUAL_TOL:g})        {row('onerank')}  "
              f"({_what(out['onerank'][1], n_vox)})")
    if "full" in out:
        print(f"  full-rank kernel (today)        {row('full')}")
    if "unfiltered" in out:
        uinfo = out["unfiltered"][1]
        print(f"  unfiltered, auto -> fallback    {row('unfiltered')}  ({uinfo['strategy']}: "
              f"{uinfo['reason']})")
    if "lowrank" in out and "full" in out:
        dr, nd = _diff(out["lowrank"][0], out["full"][0])
        print(f"  low rank vs full-rank kernel: {mcpu['lowrank'] / mcpu['full']:.3f}x cpu time; "
              f"max |dr| {dr:.2e}, {nd} counterparts differ")
    if "lowrank" in out and "onerank" in out:
        dr, nd = _diff(out["lowrank"][0], out["onerank"][0])
        print(f"  rank ladder vs one rank: {mcpu['lowrank'] / mcpu['onerank']:.3f}x cpu time; "
              f"max |dr| {dr:.2e}, {nd} counterparts differ")
    if profile:
        _print_stages(stages, mcpu["floor"])


def _print_stages(stages: dict, floor_cpu: float) -> None:
    """Stage CPU times of one profiled ``lowrank`` call as shares of the floor's CPU time."""
    total = stages.pop("total")
    plan = {k: v for k, v in stages.items() if k.startswith("plan.")}
    rest = total - sum(stages.values())
    print(f"  stages of one more lowrank call (timers on), cpu time / floor cpu time: "
          f"total {total / floor_cpu:.3f}")
    print("    plan " + f"{sum(plan.values()) / floor_cpu:.3f} (" + ", ".join(
        f"{k[5:]} {v / floor_cpu:.3f}" for k, v in plan.items()) + ")")
    for k, v in stages.items():
        if k not in plan:
            print(f"    {k:<11} {v / floor_cpu:.3f}")
    print(f"    rest        {rest / floor_cpu:.3f} (outside the timed stages)")


def _what(info: dict, n_vox: int) -> str:
    """What a low-rank call ran: strategy, rank, the pilot's rungs, candidates."""
    rungs = ", ".join(f"{k}: {p:.2f}" for k, p in info["pilots"])
    return (f"{info['strategy']}, rank {info['rank']}, pilot rungs [{rungs}] candidates per "
            f"row, {info['n_candidates'] / n_vox:.2f} candidates per voxel, "
            f"{info['full_rank_blocks']} full-rank blocks")


def _cases(text: str) -> tuple[str, ...]:
    names = tuple(c.strip() for c in text.split(",") if c.strip())
    bad = [c for c in names if c not in CASES[1:]]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(bad) or 'none given'}; choose from {', '.join(CASES[1:])}")
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 6 mm grid (seconds)")
    ap.add_argument("--hcp", action="store_true",
                    help="also 2 mm, T = 1200 at TR 0.72 s (no smoothing; all cases, the "
                         "full floor: tens of minutes on one core)")
    ap.add_argument("--grid", choices=("6mm", "3mm", "2mm"), default=None,
                    help="grid of the simulated subject (default 3mm; 6mm with --quick)")
    ap.add_argument("--volumes", type=int, default=None,
                    help="volumes simulated, the first 10 dropped (default 230: T = 220)")
    ap.add_argument("--tr", type=float, default=2.0, help="repetition time, s (default 2)")
    ap.add_argument("--fwhm", type=float, default=4.0,
                    help="smoothing FWHM in mm, 0 for none (default 4, as the paper)")
    ap.add_argument("--cases", type=_cases, default=CASES[1:],
                    help="comma-separated cases timed with the floor: lowrank, onerank "
                         "(a single rank, as before the rank ladder), full, unfiltered "
                         "(default all)")
    ap.add_argument("--floor-rows", type=int, default=None,
                    help="time the floor on this many left rows and scale it by rows "
                         "(default: all rows)")
    ap.add_argument("--filter", default="butterworth", choices=("butterworth", "ideal"),
                    help="band-pass of the denoising (default butterworth, as nilearn; "
                         "ideal: DPABI's, whose band rank is exact)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats (median; default 3)")
    ap.add_argument("--profile", action="store_true",
                    help="one more lowrank call with the kernel's stage timers: each "
                         "stage's share of the floor")
    args = ap.parse_args(argv)
    grid = args.grid or ("6mm" if args.quick else "3mm")
    volumes = 230 if args.volumes is None else args.volumes
    if volumes <= DROP + 2:
        ap.error(f"--volumes {volumes}: at least {DROP + 3} (the first {DROP} are dropped)")
    fwhm = args.fwhm or None
    print(f"simulating and denoising one subject ({grid}, {volumes} volumes, TR {args.tr} s, "
          f"{args.filter}) ...", flush=True)
    subject = demo_subject(grid, volumes, args.tr, fwhm=fwhm, band_filter=args.filter)
    unfiltered = None
    if "unfiltered" in args.cases:
        unfiltered = demo_subject(grid, volumes, args.tr, denoise=False)
    run_case(f"{grid} T={volumes - DROP} {args.filter}", subject, unfiltered,
             1 if args.quick else args.repeats, args.cases, args.floor_rows, args.profile)
    if args.hcp:
        del subject, unfiltered
        print("simulating a 2 mm, T = 1200 subject ...", flush=True)
        subject = demo_subject("2mm", 1210, 0.72, fwhm=None, band_filter=args.filter)
        unfiltered = demo_subject("2mm", 1210, 0.72, denoise=False)
        run_case("2mm T=1200", subject, unfiltered, 1)


if __name__ == "__main__":
    main()
