"""Benchmark of group-counterpart CFH and of the autonomy index against their GEMM floors.

On a cohort store (by default the demo cohort: 30 + 30 subjects, 3 mm, 230
volumes of which 10 are dropped, simulated and ingested under /tmp when
missing), in one run:

* ``floor``: the float32 GEMM of the same concatenated product, ``L_cat @ R_cat.T``
  with ``L_cat`` (n_left x sum T) the standardised left series of every
  subject side by side, in this process with every core to BLAS (row pieces
  of 64 MiB output, as ``bench_cfh.py``);
* ``group``: group-mode ``compute_cfh`` (counterpart from every subject, then
  every subject's map, written to the store) on the embedded LocalCluster;
  ratio group / floor;
* peak resident memory of all processes during group-mode CFH of several
  numbers of subjects (memory flat in subjects), and the time per subject;
* time per subject of group mode next to subject mode (``--counterpart
  subject`` on a few subjects);
* with ``--profile``: the seconds the workers spent per kind of task (task
  prefix; computing, and fetching inputs) during the full group-mode run,
  each as a share of the floor's CPU seconds;
* ``ai``: the autonomy index of one subject (series already on the workers)
  against the GEMM floor of its three products ``L L^T``, ``R R^T``, ``L R^T``
  (the engine computes only the upper triangles of the first two, so the
  ratio to the floor of what it actually multiplies is printed too).

Prints medians where repeated and every ratio measured in this run::

    python benchmarks/bench_group_cfh.py                    # the demo cohort
    python benchmarks/bench_group_cfh.py --quick            # 8 subjects, 6 mm, seconds
    python benchmarks/bench_group_cfh.py --store S.zarr --memory-sizes 15,30
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from contextlib import nullcontext

import distributed
import numpy as np
from _bench_util import CpuTime, PeakMemory, gemm_floor, median_time  # benchmarks/ is sys.path[0]
from threadpoolctl import threadpool_limits

from cfhdask.cfh.compute import compute_cfh
from cfhdask.cfh.graph import autonomy_graph
from cfhdask.cfh.kernels import standardize
from cfhdask.cluster import available_cores, dask_client
from cfhdask.io.store import open_store
from cfhdask.settings import resolve


def make_store(path: str, quick: bool, sim: str) -> str:
    """Simulate the demo cohort (or a small one) into ``sim`` and ingest it into ``path``
    with the paper's denoising (``cfhdask ingest --bids-derivatives``), once."""
    if os.path.exists(os.path.join(path, "zarr.json")):
        return path
    from cfhdask.cli import main as cli
    from cfhdask.sim.cohort import simulate_cohort

    if not os.path.isdir(sim):
        kw = dict(n_patients=4, n_controls=4, n_volumes=80, grid="6mm") if quick else {}
        print(f"simulating the cohort into {sim} (once)")
        simulate_cohort(sim, layout="fmriprep", **kw)
    print(f"ingesting {sim} into {path} with the paper's denoising (once)")
    if cli(["ingest", "--bids-derivatives", sim, "--out", path, "-q"]) != 0:
        raise SystemExit(f"ingest into {path} failed")
    return path


def concatenated(store, subjects, side: slice) -> np.ndarray:
    """Standardised series of one hemisphere of every subject, side by side in time."""
    parts = [standardize(np.asarray(store.bold(s)[side]))[0] for s in subjects]
    return np.concatenate(parts, axis=1)


def task_profile(data: list[dict], floor_cpu: float) -> None:
    """Worker seconds per task prefix and action (compute, transfer) of a task stream."""
    from dask.utils import key_split

    agg: dict = defaultdict(lambda: [0, 0.0])
    for d in data:
        for ss in d["startstops"]:
            row = agg[(key_split(d["key"]), ss["action"])]
            row[0] += 1
            row[1] += ss["stop"] - ss["start"]
    total = sum(v[1] for v in agg.values())
    print(f"[profile] worker seconds by task prefix (total {total:.1f} s = "
          f"{total / floor_cpu:.3f} x the floor's CPU seconds):")
    for (prefix, action), (n, sec) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        if sec >= 0.001 * total:
            print(f"  {prefix:>22s} {action:<9s} {n:5d} tasks {sec:8.1f} s "
                  f"({sec / floor_cpu:.3f} x floor CPU)")


def ai_benchmark(client, store, subject: str, block: int, cores: int, reps: int) -> None:
    import dask.array as da

    x = np.asarray(store.bold(subject))
    zl, vl = standardize(x[store.left])
    zr, vr = standardize(x[store.right])
    def floor():
        gemm_floor(zl, zl), gemm_floor(zr, zr), gemm_floor(zl, zr)

    with threadpool_limits(limits=cores, user_api="blas"):
        gemm_floor(zl[:2048], zr[:2048])
        with CpuTime(children=False) as cpu:
            t_floor = median_time(floor, reps)
    c_floor = cpu.seconds / reps
    dl = client.persist(da.from_array(zl, chunks=(block, -1)))
    dr = client.persist(da.from_array(zr, chunks=(block, -1)))
    dvl = client.persist(da.from_array(vl, chunks=(block,)))
    dvr = client.persist(da.from_array(vr, chunks=(block,)))
    distributed.wait([dl, dr, dvl, dvr])

    def run():
        return client.compute(autonomy_graph(dl, dr, dvl, dvr, threshold=0.25, block=block),
                              sync=True)

    run()
    with CpuTime() as cpu:
        t_ai = median_time(run, reps)
    c_ai = cpu.seconds / reps
    nl, nr = store.n_left, store.n_right
    full = nl * nl + nr * nr + nl * nr
    done = (nl * nl + nr * nr) / 2 + nl * nr  # upper triangles only (diagonal blocks whole)
    print(f"[ai] one subject ({nl} + {nr} voxels, T {x.shape[1]}): AI {t_ai:.2f} s wall "
          f"{c_ai:.1f} CPU s, GEMM floor of L L^T + R R^T + L R^T {t_floor:.2f} s wall "
          f"{c_floor:.1f} CPU s -> ratio AI/floor {t_ai / t_floor:.3f} wall, "
          f"{c_ai / c_floor:.3f} CPU; vs the floor of the products it computes (triangles) "
          f"{t_ai / (t_floor * done / full):.3f} wall, {c_ai / (c_floor * done / full):.3f} CPU")
    client.cancel([dl, dr, dvl, dvr])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None, help="cohort store (default: the demo cohort, "
                    "denoised as the paper, under /tmp/cfhdask-bench, created when missing)")
    ap.add_argument("--quick", action="store_true", help="8 subjects on a 6 mm grid")
    ap.add_argument("--subjects", type=int, default=None, help="reference subjects "
                    "(default: all)")
    ap.add_argument("--block", type=int, default=None, help="CFH block (config cfh.block)")
    ap.add_argument("--batch", type=int, default=None, help="subjects per GEMM "
                    "(config cfh.subject-batch)")
    ap.add_argument("--memory-sizes", default=None,
                    help="comma list of smaller cohorts (first subjects) also run, for memory "
                         "and time per subject (default: a quarter and a half)")
    ap.add_argument("--subject-mode", type=int, default=6,
                    help="subjects timed in subject mode (default 6)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the AI timing")
    ap.add_argument("--kernels", default="auto,full",
                    help="comma list of group-sum kernels (config cfh.kernel) timed on the "
                         "whole cohort, each against the floor (default auto,full: the exact "
                         "low-rank sum where the data allow, and the full-rank sum)")
    ap.add_argument("--profile", action="store_true",
                    help="also print the workers' seconds per task prefix of the full run")
    args = ap.parse_args(argv)
    name = "quick" if args.quick else "demo"
    url = make_store(args.store or f"/tmp/cfhdask-bench/{name}-paper.zarr", args.quick,
                     f"/tmp/cfhdask-bench/{name}.zarr.sim")
    store = open_store(url, mode="r+")
    subjects = store.subjects()[: args.subjects] if args.subjects else store.subjects()
    n = len(subjects)
    cfg = resolve("cfh", {"block": args.block, "subject_batch": args.batch})
    cores = available_cores()
    t_total = sum(int(store.subject_attrs(s).get("n_volumes", 0)) for s in subjects)
    print(f"store {url}: {n} subjects, {store.n_left} + {store.n_right} voxels, sum T "
          f"{t_total}; block {cfg.block}, batch {cfg.subject_batch}, cores {cores}")

    # the floor: the same concatenated product, every core to BLAS in this process
    lc = concatenated(store, subjects, store.left)
    rc = concatenated(store, subjects, store.right)
    with threadpool_limits(limits=cores, user_api="blas"):
        gemm_floor(lc[:1024], rc[:1024])
        with CpuTime(children=False) as cpu:
            t0 = time.perf_counter()
            gemm_floor(lc, rc)
            t_floor = time.perf_counter() - t0
    c_floor = cpu.seconds
    del lc, rc
    print(f"[floor] float32 GEMM of L_cat @ R_cat.T ({store.n_left} x {t_total} by "
          f"{store.n_right} x {t_total}): {t_floor:.1f} s wall, {c_floor:.1f} CPU s")

    sizes = ([int(v) for v in args.memory_sizes.split(",")] if args.memory_sizes else
             sorted({max(1, n // 4), max(1, n // 2)}))
    with dask_client() as client:
        print(f"cluster: {len(client.scheduler_info()['workers'])} workers; dashboard "
              f"{client.dashboard_link}")
        kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
        runs = {}
        results = {}

        def group_run(k: int, kernel: str, profile: bool):
            stream = distributed.get_task_stream(client) if profile else nullcontext()
            with PeakMemory() as mem, CpuTime() as cpu, stream as ts:
                t0 = time.perf_counter()
                ds = compute_cfh(store, reference_subjects=subjects[:k], subjects=subjects[:k],
                                 block=cfg.block, subject_batch=cfg.subject_batch,
                                 kernel=kernel, client=client, overwrite=True,
                                 show_progress=False)
                wall = time.perf_counter() - t0
            ds = ds.load()  # the next run overwrites the store
            group = store.group_counterpart()
            if ts is not None:
                task_profile(ts.data, c_floor)
                print("[profile] CPU seconds per process (this one holds the client and the "
                      "scheduler): " + ", ".join(f"{name} {v:.1f} s ({v / c_floor:.3f} x floor)"
                                                 for name, v in cpu.by_process.items()))
            return ds, wall, mem.peak, float(group["seconds"]), cpu.seconds, group["params"]

        for k in sorted({*(v for v in sizes if v < n), n}):
            ds, wall, peak, t_cp, c_group, params = group_run(k, kernels[0],
                                                              args.profile and k == n)
            runs[k] = (wall, peak, t_cp)
            if k == n:
                results[kernels[0]] = (ds, wall, t_cp, c_group, params)
        for kernel in kernels[1:]:
            ds, wall, _, t_cp, c_group, params = group_run(n, kernel, False)
            results[kernel] = (ds, wall, t_cp, c_group, params)
        for kernel, (ds, wall, t_cp, c_group, params) in results.items():
            used = params.get("kernel_used", "full")
            extra = (f"; {params['time_points']} of {params['of']} time points, "
                     f"{params['candidates_per_voxel']} candidates per voxel"
                     if used == "lowrank" else
                     f": {params['reason']}" if params.get("reason") else "")
            print(f"[group] kernel {kernel} (ran {used}{extra}): group-mode CFH of {n} "
                  f"subjects: {wall:.1f} s wall (counterpart {t_cp:.1f} s, maps "
                  f"{wall - t_cp:.1f} s), {c_group:.1f} CPU s -> ratio group/floor "
                  f"{wall / t_floor:.3f} wall, {c_group / c_floor:.3f} CPU (counterpart alone "
                  f"{t_cp / t_floor:.3f} wall); mean CFH z "
                  f"{float(np.nanmean(ds['cfh'].values)):.4f}")
        if len(results) > 1:
            (k1, r1), (k2, r2) = list(results.items())[:2]
            same = np.array_equal(r1[0]["group_counterpart"].values,
                                  r2[0]["group_counterpart"].values)
            dz = float(np.nanmax(np.abs(r1[0]["cfh"].values - r2[0]["cfh"].values)))
            print(f"[same] kernels {k1} and {k2}: identical group counterparts {same}, "
                  f"max |dz| of the maps {dz:.2e}")
        t_group = runs[n][0]
        print("[memory] peak RSS of all processes during group-mode CFH: " + ", ".join(
            f"{k} subjects {v[1] / 2**30:.2f} GiB ({v[0] / k:.2f} s per subject)"
            for k, v in runs.items()) + f" -> ratio {n} / {min(runs)} subjects "
            f"{runs[n][1] / runs[min(runs)][1]:.2f}")
        few = subjects[: max(1, min(args.subject_mode, n))]
        t0 = time.perf_counter()
        compute_cfh(store, counterpart="subject", subjects=few, block=cfg.block,
                    client=client, overwrite=True, show_progress=False)
        t_subj = (time.perf_counter() - t0) / len(few)
        print(f"[per subject] group mode {t_group / n:.2f} s, subject mode {t_subj:.2f} s "
              f"(on {len(few)} subjects) -> ratio {t_group / n / t_subj:.3f}")
        ai_benchmark(client, store, subjects[0], cfg.block, cores, args.repeats)


if __name__ == "__main__":
    main()
