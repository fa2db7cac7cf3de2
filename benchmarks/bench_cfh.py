"""Benchmark of the CFH engine against the float32 GEMM floor and a naive NumPy peer.

For one subject (random series, T = 220 by default) at each size:

* ``gemm``: the raw float32 product ``L @ R.T`` in this process with every core
  to BLAS, in row pieces of 64 MiB output (the machine's floor);
* ``cfh``: standardisation + the CFH block graph (:func:`cfhdask.cfh.graph.cfh_graph`)
  computed on the embedded LocalCluster (series already in worker memory);
* peak resident memory of all processes (this one and the workers) while the
  CFH runs, sampled by psutil in a thread;
* ``peer``: ``np.corrcoef`` + max/argmax in float64, at a size where it fits,
  against cfhdask on the same data.

Prints medians of repeats and the ratios measured in this run::

    python benchmarks/bench_cfh.py --sizes 3mm        # ~32k voxels per hemisphere
    python benchmarks/bench_cfh.py --sizes 3mm,2mm    # 2 mm: ~100k, takes minutes
    python benchmarks/bench_cfh.py --quick            # a few seconds
"""

from __future__ import annotations

import argparse

import dask.array as da
import distributed
import numpy as np
from _bench_util import PeakMemory, median_time  # benchmarks/ is sys.path[0]
from threadpoolctl import threadpool_limits

from cfhdask.cfh.graph import cfh_graph, standardize_graph
from cfhdask.cluster import available_cores, dask_client

#: voxels per hemisphere of the MNI grey-matter mask on each grid
SIZES = {"quick": 3000, "3mm": 32000, "2mm": 100000}


def gemm_floor(left: np.ndarray, right: np.ndarray, max_bytes: float = 1 << 26) -> None:
    """``left @ right.T`` in float32, in row pieces of at most ``max_bytes`` output (64 MiB: the
    fastest piece size here; a 1 GiB output buffer made BLAS 2x slower)."""
    rows = max(1, int(max_bytes // (4 * right.shape[0])))
    out = np.empty((min(rows, left.shape[0]), right.shape[0]), dtype=np.float32)
    rt = right.T
    for s in range(0, left.shape[0], rows):
        e = min(s + rows, left.shape[0])
        np.matmul(left[s:e], rt, out=out[: e - s])


def naive_peer(left: np.ndarray, right: np.ndarray):
    """What one writes without cfhdask: the full corrcoef matrix, then max/argmax."""
    n = left.shape[0]
    c = np.corrcoef(np.vstack([left, right]))[:n, n:]
    return c.max(axis=1), c.argmax(axis=1), c.max(axis=0), c.argmax(axis=0)


def cfh_on_client(client, left: da.Array, right: da.Array, block: int) -> dict:
    zl, vl = standardize_graph(left, block=block)
    zr, vr = standardize_graph(right, block=block)
    return client.compute(cfh_graph(zl, zr, vl, vr, block=block), sync=True)


def random_series(n: int, t: int, block: int, seed: int) -> da.Array:
    rng = da.random.default_rng(seed)
    return rng.standard_normal((n, t), chunks=(block, t), dtype=np.float32)


def run_size(client, size: str, args: argparse.Namespace, reps: int, cores: int) -> None:
    """CFH on the cluster vs the GEMM floor in this process, for one subject size."""
    n = SIZES[size]
    left = client.persist(random_series(n, args.t, args.block, 1))
    right = client.persist(random_series(n, args.t, args.block, 2))
    distributed.wait([left, right])
    cfh_on_client(client, left[:2 * args.block], right[:args.block], args.block)  # warm up
    with PeakMemory() as mem:
        t_cfh = median_time(lambda: cfh_on_client(client, left, right, args.block), reps)
    client.cancel([left, right])
    ln = random_series(n, args.t, args.block, 1).compute(scheduler="sync")
    rn = random_series(n, args.t, args.block, 2).compute(scheduler="sync")
    with threadpool_limits(limits=cores, user_api="blas"):
        gemm_floor(ln[:2048], rn[:2048])
        t_gemm = median_time(lambda: gemm_floor(ln, rn), reps)
    print(f"[{size}] {n} x {n} voxels: CFH {t_cfh:.2f} s, float32 GEMM floor "
          f"{t_gemm:.2f} s -> ratio CFH/GEMM {t_cfh / t_gemm:.3f}; peak memory of all "
          f"processes during CFH {mem.peak / 2**30:.2f} GiB")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3mm", help="comma list of 3mm, 2mm (default 3mm)")
    ap.add_argument("--quick", action="store_true", help="a few-seconds smoke run")
    ap.add_argument("--t", type=int, default=220, help="volumes (default 220)")
    ap.add_argument("--block", type=int, default=4096, help="CFH block (default 4096)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats (median)")
    ap.add_argument("--peer-size", type=int, default=6000,
                    help="voxels per hemisphere for the naive peer (default 6000)")
    args = ap.parse_args(argv)
    sizes = ["quick"] if args.quick else [s.strip() for s in args.sizes.split(",")]
    peer_n = 1500 if args.quick else args.peer_size
    repeats = 1 if args.quick else args.repeats
    cores = available_cores()
    print(f"cores {cores}, T {args.t}, block {args.block}, repeats {repeats} (median)")

    with dask_client() as client:
        print(f"cluster: {len(client.scheduler_info()['workers'])} workers; "
              f"dashboard {client.dashboard_link}")
        for size in sizes:
            run_size(client, size, args, 1 if size == "2mm" else repeats, cores)

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
