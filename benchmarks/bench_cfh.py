"""Benchmark of the CFH engine against the float32 GEMM floor and a naive NumPy peer.

For one subject at each size:

* ``gemm``: the raw float32 product ``L @ R.T`` in this process with every core
  to BLAS, in row pieces of 64 MiB output (the machine's floor);
* ``cfh``: standardisation + the CFH block graph computed on the embedded
  LocalCluster, with each kernel of ``--kernel`` (``full``:
  :func:`cfhdask.cfh.graph.cfh_graph`; ``auto``/``lowrank``: the exact low-rank
  kernel :func:`cfhdask.cfh.lowrank_graph.cfh_kernel_graph`, its plan included),
  each timed in turn, median of the repeats;
* peak resident memory of all processes (this one and the workers) while the
  CFH runs, sampled by psutil in a thread;
* ``peer``: ``np.corrcoef`` + max/argmax in float64, at a size where it fits,
  against cfhdask on the same data.

``--data random`` (default) uses white-noise series (T = 220: the low-rank
kernels fall back to full rank).  ``--data demo`` uses one subject of the
simulated demo cohort, denoised as in the paper (``bench_cfh_lowrank.py``):
3 mm, T = 220, TR 2 s; ``2mm``: T = 1200, TR 0.72 s, band-passed, no
smoothing (the HCP-like case of issue 11; the series are kept in a temporary
.npy file and read by the workers, so this process holds none of them while
the CFH runs); ``--unfiltered`` adds the same subject without denoising
(``auto`` must fall back).  Prints the ratios measured in this run::

    python benchmarks/bench_cfh.py --sizes 3mm        # ~32k voxels per hemisphere
    python benchmarks/bench_cfh.py --sizes 3mm,2mm    # 2 mm: ~100k, takes minutes
    python benchmarks/bench_cfh.py --data demo --kernel full,auto --unfiltered
    python benchmarks/bench_cfh.py --data demo --sizes 2mm --kernel auto
    python benchmarks/bench_cfh.py --quick            # a few seconds
"""

from __future__ import annotations

import argparse
import os
import tempfile

import dask
import dask.array as da
import distributed
import numpy as np
from _bench_util import (  # benchmarks/ is sys.path[0]
    PeakMemory,
    demo_subject,
    gemm_floor,
    median_time,
)
from threadpoolctl import threadpool_limits

from cfhdask.cfh.graph import standardize_graph
from cfhdask.cfh.lowrank_graph import KERNELS, cfh_kernel_graph
from cfhdask.cluster import available_cores, dask_client

#: voxels per hemisphere of the MNI grey-matter mask on each grid
SIZES = {"quick": 3000, "3mm": 32000, "2mm": 100000}


def naive_peer(left: np.ndarray, right: np.ndarray):
    """What one writes without cfhdask: the full corrcoef matrix, then max/argmax."""
    n = left.shape[0]
    c = np.corrcoef(np.vstack([left, right]))[:n, n:]
    return c.max(axis=1), c.argmax(axis=1), c.max(axis=0), c.argmax(axis=0)


def cfh_on_client(client, left: da.Array, right: da.Array, block: int,
                  kernel: str = "full") -> dict:
    zl, vl = standardize_graph(left, block=block)
    zr, vr = standardize_graph(right, block=block)
    return client.compute(cfh_kernel_graph(zl, zr, vl, vr, block=block, kernel=kernel),
                          sync=True)


def random_series(n: int, t: int, block: int, seed: int) -> da.Array:
    rng = da.random.default_rng(seed)
    return rng.standard_normal((n, t), chunks=(block, t), dtype=np.float32)


def _read_rows(path: str, start: int, stop: int) -> np.ndarray:
    return np.array(np.load(path, mmap_mode="r")[start:stop])


def npy_series(path: str, block: int) -> da.Array:
    """A (voxel, time) .npy file as a dask array whose tasks read their rows themselves."""
    n, t = np.load(path, mmap_mode="r").shape
    parts = [da.from_delayed(dask.delayed(_read_rows, pure=True)(path, s, min(s + block, n)),
                             shape=(min(s + block, n) - s, t), dtype=np.float32)
             for s in range(0, n, block)]
    return da.concatenate(parts)


def time_kernels(client, left: da.Array, right: da.Array, kernels: list[str], block: int,
                 reps: int) -> dict[str, tuple[float, float, dict | None]]:
    """Median seconds, peak GiB and the kernel info of each kernel (timed in turn)."""
    for k in kernels:  # warm up (numba compiles on the workers)
        cfh_on_client(client, left[:2 * block], right[:block], block, k)
    times: dict[str, list[float]] = {k: [] for k in kernels}
    peak = dict.fromkeys(kernels, 0.0)
    info: dict = {}
    for _ in range(reps):
        for k in kernels:
            with PeakMemory() as mem:
                t = median_time(lambda k=k: info.__setitem__(k, cfh_on_client(
                    client, left, right, block, k)), 1)
            times[k].append(t)
            peak[k] = max(peak[k], mem.peak / 2**30)
    return {k: (float(np.median(times[k])), peak[k],
                info[k]["kernel"][0] if "kernel" in info[k] else None) for k in kernels}


def _report(label: str, n: tuple[int, int], res: dict, t_gemm: float) -> None:
    print(f"[{label}] {n[0]} x {n[1]} voxels: float32 GEMM floor {t_gemm:.2f} s")
    for k, (t, peak, info) in res.items():
        what = ""
        if info is not None:
            what = (f"  ({info['kernel_used']}, rank {info['rank']}, "
                    + (f"{info['candidates_per_voxel']:.2f} candidates per voxel"
                       if info["kernel_used"] == "lowrank" else info["reason"]) + ")")
        print(f"  kernel {k:8s} CFH {t:8.2f} s -> ratio CFH/GEMM {t / t_gemm:.3f}; peak "
              f"memory of all processes {peak:.2f} GiB{what}")


def floor_time(ln: np.ndarray, rn: np.ndarray, cores: int, reps: int) -> float:
    with threadpool_limits(limits=cores, user_api="blas"):
        gemm_floor(ln[:2048], rn[:2048])
        return median_time(lambda: gemm_floor(ln, rn), reps)


def run_size(client, size: str, args: argparse.Namespace, reps: int, cores: int) -> None:
    """CFH on the cluster vs the GEMM floor in this process, random series of one size."""
    n = SIZES[size]
    left = client.persist(random_series(n, args.t, args.block, 1))
    right = client.persist(random_series(n, args.t, args.block, 2))
    distributed.wait([left, right])
    res = time_kernels(client, left, right, args.kernels, args.block, reps)
    client.cancel([left, right])
    ln = random_series(n, args.t, args.block, 1).compute(scheduler="sync")
    rn = random_series(n, args.t, args.block, 2).compute(scheduler="sync")
    _report(f"{size} random T={args.t}", (n, n), res, floor_time(ln, rn, cores, reps))


#: (grid, volumes, TR, smoothing FWHM) of the demo subjects
DEMO = {"quick": ("6mm", 230, 2.0, 4.0), "3mm": ("3mm", 230, 2.0, 4.0),
        "2mm": ("2mm", 1210, 0.72, None)}


def run_demo(client, size: str, args: argparse.Namespace, reps: int, cores: int,
             denoise: bool = True) -> None:
    """CFH of one simulated demo subject; the series live in .npy files read by the workers."""
    grid, n_vol, tr, fwhm = DEMO[size]
    print(f"simulating the {size} demo subject ({n_vol} volumes, TR {tr} s"
          f"{', denoised' if denoise else ', unfiltered'}) ...", flush=True)
    zl, zr, _, _ = demo_subject(grid, n_vol, tr, fwhm=fwhm, denoise=denoise,
                                band_filter=args.filter)
    n = (zl.shape[0], zr.shape[0])
    with tempfile.TemporaryDirectory(prefix="bench-cfh-") as tmp:
        paths = [os.path.join(tmp, f"{side}.npy") for side in ("left", "right")]
        np.save(paths[0], zl)
        np.save(paths[1], zr)
        del zl, zr
        left, right = (client.persist(npy_series(p, args.block)) for p in paths)
        distributed.wait([left, right])
        res = time_kernels(client, left, right, args.kernels, args.block, reps)
        client.cancel([left, right])
        del left, right
        ln, rn = np.load(paths[0]), np.load(paths[1])
    label = f"{size} demo T={ln.shape[1]} {args.filter if denoise else 'unfiltered'}"
    _report(label, n, res, floor_time(ln, rn, cores, reps))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3mm", help="comma list of 3mm, 2mm (default 3mm)")
    ap.add_argument("--quick", action="store_true", help="a few-seconds smoke run")
    ap.add_argument("--data", choices=("random", "demo"), default="random",
                    help="white-noise series (default) or a simulated, denoised demo subject")
    ap.add_argument("--kernel", default="full",
                    help="comma list of the CFH kernels timed in turn: "
                         f"{', '.join(KERNELS)} (default full)")
    ap.add_argument("--unfiltered", action="store_true",
                    help="with --data demo: also the same subject without denoising")
    ap.add_argument("--filter", default="butterworth", choices=("butterworth", "ideal"),
                    help="band-pass of the demo subject's denoising (default butterworth)")
    ap.add_argument("--t", type=int, default=220, help="volumes of random data (default 220)")
    ap.add_argument("--block", type=int, default=4096, help="CFH block (default 4096)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats (median)")
    ap.add_argument("--peer-size", type=int, default=6000,
                    help="voxels per hemisphere for the naive peer (default 6000; 0: none)")
    args = ap.parse_args(argv)
    args.kernels = [k.strip() for k in args.kernel.split(",") if k.strip()]
    bad = [k for k in args.kernels if k not in KERNELS]
    if bad or not args.kernels:
        ap.error(f"--kernel: unknown kernel(s) {', '.join(bad) or '(none)'}; "
                 f"choose from {', '.join(KERNELS)}")
    sizes = ["quick"] if args.quick else [s.strip() for s in args.sizes.split(",")]
    peer_n = 1500 if args.quick else args.peer_size
    repeats = 1 if args.quick else args.repeats
    cores = available_cores()
    print(f"cores {cores}, block {args.block}, repeats {repeats} (median; 2 mm: 1), kernels "
          f"{', '.join(args.kernels)}, load average {os.getloadavg()[0]:.1f}")

    with dask_client() as client:
        print(f"cluster: {len(client.scheduler_info()['workers'])} workers; "
              f"dashboard {client.dashboard_link}")
        for size in sizes:
            reps = 1 if size == "2mm" else repeats
            if args.data == "demo":
                run_demo(client, size, args, reps, cores)
                if args.unfiltered:
                    run_demo(client, size, args, reps, cores, denoise=False)
            else:
                run_size(client, size, args, reps, cores)
        if peer_n:
            run_peer(client, peer_n, args, repeats, cores)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


def run_peer(client, peer_n: int, args: argparse.Namespace, repeats: int, cores: int) -> None:
    rng = np.random.default_rng(3)
    lp = rng.standard_normal((peer_n, args.t)).astype(np.float32)
    rp = rng.standard_normal((peer_n, args.t)).astype(np.float32)
    with threadpool_limits(limits=cores, user_api="blas"):
        t_peer = median_time(lambda: naive_peer(lp, rp), repeats)
    ldl = client.persist(da.from_array(lp, chunks=(args.block, -1)))
    rdl = client.persist(da.from_array(rp, chunks=(args.block, -1)))
    cfh_on_client(client, ldl, rdl, args.block)
    t_ours = median_time(lambda: cfh_on_client(client, ldl, rdl, args.block), repeats)
    print(f"[peer] {peer_n} x {peer_n} voxels: np.corrcoef+max {t_peer:.3f} s, cfhdask "
          f"{t_ours:.3f} s -> cfhdask is {t_peer / t_ours:.1f}x faster "
          f"(peer needs {(2 * peer_n) ** 2 * 8 / 2**30:.2f} GiB for the matrix)")


if __name__ == "__main__":
    main()
