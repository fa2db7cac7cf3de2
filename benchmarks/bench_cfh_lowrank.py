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
* ``full``: the same loop with ``mode="off"`` (today's kernel,
  :func:`cfhdask.cfh.kernels.block_maxcorr`);
* ``unfiltered``: ``mode="auto"`` on the same subject without denoising (only
  the dropped volumes): the plan must fall back to full rank.

Each repeat times all of them in turn; the medians and the ratios to the floor
of this run are printed, with the rank, candidates and the largest difference
to the full-rank kernel (values and counterparts).

    python benchmarks/bench_cfh_lowrank.py              # 3 mm, T = 220 (about a minute)
    python benchmarks/bench_cfh_lowrank.py --filter ideal   # DPABI's ideal band-pass
    python benchmarks/bench_cfh_lowrank.py --quick      # the 6 mm grid, seconds
    python benchmarks/bench_cfh_lowrank.py --hcp        # + 2 mm-like, T = 1200, TR 0.72 s
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _bench_util import demo_subject, gemm_floor  # benchmarks/ is sys.path[0]
from threadpoolctl import threadpool_limits

from cfhdask.cfh.lowrank import lowrank_maxcorr


def _diff(res, ref) -> tuple[float, int]:
    """Largest |Δr| and number of differing counterparts, both sides."""
    dr = max(float(np.nanmax(np.abs(res.row_max - ref.row_max))),
             float(np.nanmax(np.abs(res.col_max - ref.col_max))))
    nd = int((res.row_arg != ref.row_arg).sum() + (res.col_arg != ref.col_arg).sum())
    return dr, nd


def run_case(label: str, subject, unfiltered, repeats: int) -> None:
    zl, zr, lv, rv = subject
    ul, ur, ulv, urv = unfiltered
    keys = ("floor", "lowrank", "full", "unfiltered")
    times: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    out = {}

    def timed(key, fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out[key] = fn()
        times[key].append(time.perf_counter() - t0)
        cpu[key].append(time.process_time() - c0)

    with threadpool_limits(limits=1, user_api="blas"):
        lowrank_maxcorr(zl[:512], zr[:512], lv[:512], rv[:512])  # compile / warm up
        gemm_floor(zl[:2048], zr[:2048])
        for _ in range(repeats):
            timed("floor", lambda: gemm_floor(zl, zr))
            timed("lowrank", lambda: lowrank_maxcorr(zl, zr, lv, rv))
            timed("full", lambda: lowrank_maxcorr(zl, zr, lv, rv, mode="off"))
            timed("unfiltered", lambda: lowrank_maxcorr(ul, ur, ulv, urv))
    med = {k: float(np.median(v)) for k, v in times.items()}
    mcpu = {k: float(np.median(v)) for k, v in cpu.items()}
    res, info = out["lowrank"]
    ref, _ = out["full"]
    _, uinfo = out["unfiltered"]
    dr, nd = _diff(res, ref)
    n_t = zl.shape[1]
    print(f"[{label}] {zl.shape[0]} x {zr.shape[0]} voxels, T {n_t}, 1 BLAS thread, "
          f"median of {repeats}")
    print("  (wall s, ratio to the floor; then the same for this process's CPU time, less "
          "sensitive to other users of the machine)")
    def row(key):
        return (f"{med[key]:8.3f} s  {med[key] / med['floor']:.3f} | cpu {mcpu[key]:8.3f} s  "
                f"{mcpu[key] / mcpu['floor']:.3f}")
    print(f"  float32 GEMM floor (full T)     {row('floor')}")
    print(f"  exact low-rank CFH              {row('lowrank')}  ({info['strategy']}, rank {info['rank']}, "
          f"{info['n_candidates'] / (zl.shape[0] + zr.shape[0]):.2f} candidates per voxel, "
          f"{info['full_rank_blocks']} full-rank blocks)")
    print(f"  full-rank kernel (today)        {row('full')}")
    print(f"  unfiltered, auto -> fallback    {row('unfiltered')}  ({uinfo['strategy']}: {uinfo['reason']})")
    print(f"  low rank vs full-rank kernel: {mcpu['lowrank'] / mcpu['full']:.3f}x cpu time; "
          f"max |dr| {dr:.2e}, {nd} counterparts differ")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 6 mm grid (seconds)")
    ap.add_argument("--hcp", action="store_true",
                    help="also 2 mm, T = 1200 at TR 0.72 s (no smoothing; minutes, ~2 GiB)")
    ap.add_argument("--filter", default="butterworth", choices=("butterworth", "ideal"),
                    help="band-pass of the denoising (default butterworth, as nilearn; "
                         "ideal: DPABI's, whose band rank is exact)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats (median; default 3)")
    args = ap.parse_args(argv)
    grid = "6mm" if args.quick else "3mm"
    print("simulating and denoising one demo subject ...", flush=True)
    subject = demo_subject(grid, 230, 2.0, band_filter=args.filter)
    unfiltered = demo_subject(grid, 230, 2.0, denoise=False)
    run_case(f"{'quick' if args.quick else '3mm'} T=220 {args.filter}", subject, unfiltered,
             1 if args.quick else args.repeats)
    if args.hcp:
        del subject, unfiltered
        print("simulating a 2 mm, T = 1200 subject ...", flush=True)
        subject = demo_subject("2mm", 1210, 0.72, fwhm=None, band_filter=args.filter)
        unfiltered = demo_subject("2mm", 1210, 0.72, denoise=False)
        run_case("2mm T=1200", subject, unfiltered, 1)


if __name__ == "__main__":
    main()
