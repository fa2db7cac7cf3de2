"""What the workers' malloc trimming costs: glibc's default vs Dask's ``MALLOC_TRIM_THRESHOLD_=65536``.

Dask's nanny starts its worker processes with ``MALLOC_TRIM_THRESHOLD_=65536``
unless told otherwise; setting any trim threshold turns off glibc's dynamic mmap
threshold, so every allocation over 128 KiB is a fresh ``mmap`` whose pages fault
in again. cfhdask gives every cluster it starts one worker environment
(``cfhdask.cluster.malloc-trim-threshold``, default null: glibc's default). This
script runs the same tasks on cfhdask's embedded cluster (``--workers``
single-threaded workers) with the setting null and 65536, the two taking turns
(``--repeats``), and prints per task the median CPU time (user + system of the
task's thread), system time and minor page faults, with the ratio 65536 / null,
and, as the floor, the same task in this process (no Dask, the environment's allocator settings, run
alone: it has both cores). Tasks:

* ``gemm-chain``: 10 products of (n, n) float64 with a new array each (``--n``);
* ``block-maxcorr``: :func:`cfhdask.cfh.kernels.block_maxcorr` of (``--voxels``, T)
  float32 blocks, the CFH engine's kernel (it reuses its strip buffer);
* ``denoise``: :func:`cfhdask.prep.denoise.clean_series` (detrend, 0.01-0.1 Hz
  Butterworth, 26 confounds regressed out) of (``--voxels``, T) series, the ingest kernel.

Usage::

    .venv/bin/python benchmarks/bench_worker_env.py
    .venv/bin/python benchmarks/bench_worker_env.py --tasks 400 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np

SETTINGS = (None, 65536)


def _usage():
    import resource

    r = resource.getrusage(resource.RUSAGE_THREAD)
    return r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt


def timed(kind: str, seed: int, args) -> tuple[float, float, int]:
    """(CPU s, system s, minor faults) of one task, measured in the thread that runs it."""
    rng = np.random.default_rng(seed)
    if kind == "gemm-chain":
        x = rng.standard_normal((args.n, args.n))
        c0 = _usage()
        for _ in range(10):
            x = x @ x
            x /= np.abs(x).max()
    elif kind == "block-maxcorr":
        from cfhdask.cfh.kernels import block_maxcorr, standardize

        a = standardize(rng.standard_normal((args.voxels, args.volumes), dtype=np.float32))[0]
        b = standardize(rng.standard_normal((args.voxels, args.volumes), dtype=np.float32))[0]
        c0 = _usage()
        block_maxcorr(a, b)
    else:
        from cfhdask.prep.denoise import clean_series

        y = rng.standard_normal((args.voxels, args.volumes)).astype(np.float32)
        conf = rng.standard_normal((args.volumes, 26))
        c0 = _usage()
        clean_series(y, conf, tr=2.0, high_pass=0.01, low_pass=0.1)
    c1 = _usage()
    return c1[0] - c0[0], c1[1] - c0[1], c1[2] - c0[2]


def run_on_cluster(trim, kind: str, args) -> list[tuple]:
    """The tasks on a fresh embedded cluster, from a child process: a nanny writes its
    pre-spawn environment into the process that runs it, so one process cannot run
    both settings (and the child starts without ``MALLOC_TRIM_THRESHOLD_``)."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    cmd = [sys.executable, __file__, "--child", "null" if trim is None else str(trim),
           f"--kernels={kind}", f"--workers={args.workers}", f"--tasks={args.tasks}",
           f"--n={args.n}", f"--voxels={args.voxels}", f"--volumes={args.volumes}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return [tuple(r) for r in json.loads(out.strip().splitlines()[-1])]


def child(trim, kind: str, args) -> None:
    import dask

    from cfhdask.cluster import dask_client

    with dask.config.set({"cfhdask.cluster.malloc-trim-threshold": trim}):
        with dask_client(n_workers=args.workers, threads_per_worker=1,
                         dashboard_address=None) as client:
            client.gather(client.map(timed, [kind] * args.workers, range(args.workers),
                                     args=args, pure=False))  # warm-up: imports
            futures = client.map(timed, [kind] * args.tasks, range(args.tasks), args=args,
                                 pure=False)
            print(json.dumps(client.gather(futures)), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="single-threaded workers (default 2)")
    p.add_argument("--tasks", type=int, default=200, help="tasks per kernel and run (200)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each setting, taking turns (default 3)")
    p.add_argument("--n", type=int, default=300, help="matrix side of gemm-chain (300)")
    p.add_argument("--voxels", type=int, default=2048,
                   help="voxels of a block-maxcorr block and of a denoise subject (2048)")
    p.add_argument("--volumes", type=int, default=200, help="time points (200)")
    p.add_argument("--kernels", default="gemm-chain,block-maxcorr,denoise",
                   help="comma-separated kernels to run (default all three)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return child(None if args.child == "null" else int(args.child), args.kernels, args)
    print(f"{args.workers} single-threaded workers, {args.tasks} tasks a run, {args.repeats} "
          f"runs of each setting; medians per task", flush=True)
    print(f"{'kernel':14s} {'trim':>6s} {'CPU ms':>8s} {'sys ms':>7s} {'faults':>7s}  "
          f"{'vs null':>7s}", flush=True)
    for kind in args.kernels.split(","):
        per = {t: [] for t in SETTINGS}
        for rep in range(args.repeats):
            for trim in (SETTINGS if rep % 2 == 0 else SETTINGS[::-1]):
                per[trim] += run_on_cluster(trim, kind, args)
        floor = [timed(kind, s, args) for s in range(min(args.tasks, 50))]
        rows = {"in-process": floor, **{str(t): v for t, v in per.items()}}
        base = statistics.median(r[0] for r in per[None])
        for name, res in rows.items():
            cpu = statistics.median(r[0] for r in res)
            print(f"{kind:14s} {name if name != 'None' else 'null':>6s} {1e3 * cpu:8.2f} "
                  f"{1e3 * statistics.median(r[1] for r in res):7.2f} "
                  f"{statistics.median(r[2] for r in res):7.0f}  {cpu / base:7.2f}", flush=True)


if __name__ == "__main__":
    main()
