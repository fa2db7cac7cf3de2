"""Cohort scale: ingest, cfh and stats on 10 / 100 / 1000 simulated subjects on a tiny grid.

For each cohort size, in one run, this tree and a baseline tree
(``--baseline REF``, default ``main``, extracted with ``git archive``) each run
ingest -> cfh (the default group counterpart) -> stats in a fresh process on
the same kind of LocalCluster, with more single-threaded workers than cores
(``--workers``, default 3 x cores: this measures concurrency, not speed).
Every stage asked for (``--stages``) is measured on its own:

* **workers busy**: the scheduler is sampled every 0.2 s (``--interval``) and
  counts the workers with a task assigned (``WorkerState.processing``); the
  median over the stage's run, the mean share of the workers, and that share
  by tenth of the stage (idle time at the start is client-side preparation,
  at the end a tail);
* **client RSS**: the peak resident memory of the client process (workers
  excluded), and its growth over the stage;
* **seconds per subject** (marginal: the slope between cohort sizes);
* **workers' CPU**: the cores the workers kept busy over the stage (their CPU
  seconds, from every worker, over the stage's seconds).

The child hands each stage's figures to the parent as soon as that stage
ends, and the parent prints them at once (flushed), with the marginal seconds
per subject and the client RSS against the smaller cohorts where those are
known, and the ratios (this tree / baseline) once both trees ran the stage:
a run stopped by a time limit (``timeout``, SIGTERM, Ctrl-C) still shows every
stage it finished, and stops its child and the child's cluster.  A summary
table of every finished stage closes the run.  All figures come from the
same run.  Inputs: tiny 4D NIfTIs (a
shared signal plus noise on a box mask straddling the midline), written once
per cohort size and shared by both trees.

Usage::

    .venv/bin/python benchmarks/bench_scale.py --sizes 10,100,1000 --stages ingest,cfh,stats
    .venv/bin/python benchmarks/bench_scale.py --sizes 1000 --workers 12 --volumes 40
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from _bench_util import (  # benchmarks/ is sys.path[0]
    REPO,
    BusySampler,
    close_cluster,
    cores_text,
    extract_tree,
    warm_kernels,
)

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SHAPE = (12, 14, 10)
AFFINE = np.array([[-4.0, 0, 0, 22.0], [0, 4.0, 0, -28.0], [0, 0, 4.0, -20.0], [0, 0, 0, 1]])
N_VOLUMES = 60


# ---------------------------------------------------------------- inputs
def write_inputs(folder: Path, n: int, n_volumes: int = N_VOLUMES,
                 seed: int = 0, rank: int = 0) -> tuple[list[str], str, str]:
    """``n`` tiny BOLD images, a box mask and a participants table (two groups).

    ``rank`` > 0: each voxel's series mixes only the ``rank`` slowest cosines
    of the run (band-limited, as band-passed series are), so the group
    counterpart takes its low-rank path; 0: white noise plus one shared
    signal (full rank)."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[1:-1, 1:-1, 1:-1] = 1
    mask_path = folder / "mask.nii.gz"
    nib.save(nib.Nifti1Image(mask, AFFINE), mask_path)
    paths = []
    for i in range(n):
        if rank:
            t = (np.arange(n_volumes) + 0.5) / n_volumes
            slow = np.cos(np.pi * np.arange(1, rank + 1)[:, None] * t)  # (rank, T)
            data = (100 + rng.standard_normal((*SHAPE, rank)) @ slow).astype(np.float32)
        else:
            shared = rng.standard_normal(n_volumes)
            data = (100 + rng.standard_normal((*SHAPE, n_volumes))
                    + rng.random(SHAPE)[..., None] * shared).astype(np.float32)
        img = nib.Nifti1Image(data, AFFINE)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_zooms((4.0, 4.0, 4.0, 2.0))
        p = folder / f"sub-{i:04d}_task-rest_bold.nii.gz"
        nib.save(img, p)
        paths.append(str(p))
    table = folder / "participants.tsv"
    rows = ["participant_id\tgroup"] + [f"sub-{i:04d}\t{'patient' if i % 2 else 'control'}"
                                        for i in range(n)]
    table.write_text("\n".join(rows) + "\n")
    return paths, str(mask_path), str(table)


# ---------------------------------------------------------------- child: the stages, one tree
STAGE_ORDER = ("ingest", "cfh", "stats")
STAGE_LINE = "bench-scale-stage "  # prefix of the child's stdout line for one finished stage


def child(stages: list[str], inputs: str, work: str, n_workers: int, interval: float,
          n_perm: int, emit: Callable[[str, dict], None]) -> None:
    """ingest -> cfh -> stats on one LocalCluster; the asked stages sampled, each apart.

    ``emit(stage, figures)`` is called as soon as a measured stage ends.  A
    stage that is not asked for but feeds a later one runs unmeasured.
    """
    from distributed import Client, LocalCluster

    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.io.store import open_store
    from cfhdask.prep.ingest import ingest
    from cfhdask.stats.inference import group_inference

    paths = json.loads(Path(inputs, "paths.json").read_text())
    store = str(Path(work, "cohort.zarr"))
    run = {
        "ingest": lambda c: ingest(paths, store, mask=str(Path(inputs, "mask.nii.gz")),
                                   client=c),
        "cfh": lambda c: compute_cfh(store, client=c, show_progress=False),
        "stats": lambda c: group_inference(open_store(store),
                                           str(Path(inputs, "participants.tsv")),
                                           group="group", n_perm=n_perm, client=c, atlases=[],
                                           tfce=False),
    }
    last = max(STAGE_ORDER.index(s) for s in stages)
    lc = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None)
    client = Client(lc)
    try:
        for stage in STAGE_ORDER[:last + 1]:
            if stage not in stages:
                run[stage](client)
                continue
            t0 = time.perf_counter()
            with BusySampler(client, interval) as sampler:
                run[stage](client)
            emit(stage, {"seconds": time.perf_counter() - t0, **sampler.summary(n_workers)})
    finally:
        close_cluster(client, lc)


def emit_stage(stage: str, figures: dict) -> None:
    """One finished stage, as one flushed stdout line for the parent."""
    print(STAGE_LINE + json.dumps({"stage": stage, **figures}), flush=True)


# ---------------------------------------------------------------- parent
def run_child(tree: Path, stages: list[str], inputs: Path, n_workers: int, interval: float,
              n_perm: int) -> Iterator[tuple[str, dict]]:
    """``(stage, figures)`` of ``tree``'s child, each as soon as the child finishes the stage.

    The child is terminated (its cluster closed) if the parent stops early.
    """
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as work, \
            tempfile.TemporaryFile("w+") as err:
        env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(tree),
               "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen([sys.executable, __file__, "--_child", ",".join(stages),
                                 str(inputs), work, str(n_workers), str(interval), str(n_perm)],
                                env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            for line in proc.stdout:
                if line.startswith(STAGE_LINE):
                    figures = json.loads(line[len(STAGE_LINE):])
                    yield figures.pop("stage"), figures
            proc.wait()
        finally:
            stop_child(proc)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"child ({tree}) failed:\n{err.read()[-3000:]}")


def stop_child(proc: subprocess.Popen, grace: float = 60.0) -> None:
    """Terminate ``proc`` if it still runs (SIGTERM: it closes its cluster), then kill it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so ``finally`` blocks (child, cluster, temp dirs) run."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def stage_line(stage: str, n: int, name: str, r: dict, n_workers: int) -> str:
    """One stage's figures: time, s/subject, workers busy, client RSS and CPU."""
    return (f"{stage:6s} n={n:5d} {name:>6s}: {r['seconds']:8.1f} s, "
            f"{r['seconds'] / n:7.3f} s/subject, workers busy median "
            f"{r['busy_median']:.1f} of {n_workers} (mean "
            f"{100 * r['busy_share']:.0f} %; by tenth of the stage: "
            f"{' '.join(f'{100 * t:.0f}' for t in r['busy_tenths'])}), client RSS "
            f"peak {r['client_rss_peak_mib']:.0f} MiB "
            f"(+{r['client_rss_growth_mib']:.0f}), client CPU "
            f"{r['client_cpu_s']:.1f} s, {cores_text(r)}")


def across_sizes_lines(results: dict, stage: str, n: int, name: str, sizes: list[int]) -> list[str]:
    """Marginal s/subject from the next smaller finished size to ``n``, and client RSS peak
    against the smallest finished size."""
    done = [m for m in sizes if m < n and (stage, m, name) in results]
    if not done:
        return []
    r, prev, first = (results[(stage, m, name)] for m in (n, done[-1], done[0]))
    return [f"{stage:6s} {name:>6s}: marginal "
            f"{(r['seconds'] - prev['seconds']) / (n - done[-1]):.4f} s/subject from "
            f"{done[-1]} to {n}; client RSS peak {r['client_rss_peak_mib']:.0f} MiB at {n} vs "
            f"{first['client_rss_peak_mib']:.0f} MiB at {done[0]} "
            f"(+{r['client_rss_peak_mib'] - first['client_rss_peak_mib']:.0f})"]


def summary_lines(results: dict, n_workers: int) -> list[str]:
    """A table of every finished stage: s/subject, workers busy share, client RSS peak."""
    rows = ["stage  tree        n   seconds  s/subject  busy median  busy mean %  "
            "client RSS peak MiB"]
    for (stage, n, name), r in sorted(results.items(),
                                      key=lambda kv: (STAGE_ORDER.index(kv[0][0]), kv[0][2],
                                                      kv[0][1])):
        rows.append(f"{stage:6s} {name:>6s} {n:6d} {r['seconds']:9.1f} {r['seconds'] / n:10.4f} "
                    f"{r['busy_median']:7.1f}/{n_workers:<3d} {100 * r['busy_share']:11.0f}  "
                    f"{r['client_rss_peak_mib']:19.0f}")
    return rows


def main() -> None:
    exit_on_sigterm()
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        stages, inputs, work, n_workers, interval, n_perm = sys.argv[2:8]
        child(stages.split(","), inputs, work, int(n_workers), float(interval), int(n_perm),
              emit_stage)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,100,1000", help="cohort sizes (comma-separated)")
    p.add_argument("--stages", default="ingest,cfh,stats", help="stages to measure")
    p.add_argument("--workers", type=int, default=3 * (os.cpu_count() or 1),
                   help="single-threaded LocalCluster workers (more than cores on purpose)")
    p.add_argument("--interval", type=float, default=0.2, help="scheduler sampling period (s)")
    p.add_argument("--n-perm", type=int, default=2000, help="permutations of the stats stage")
    p.add_argument("--volumes", type=int, default=N_VOLUMES, help="volumes per subject")
    p.add_argument("--rank", type=int, default=0,
                   help="band-limited series of this rank (the slowest cosines of the run), "
                        "so the group counterpart takes its low-rank path, as on band-passed "
                        "data (default 0: full-rank noise, the full-rank sum)")
    p.add_argument("--baseline", default="main",
                   help="git ref compared with this tree ('' for this tree only)")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    stages = [s for s in args.stages.split(",") if s]
    results: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            trees = {"this": REPO}
            if args.baseline:
                trees[args.baseline] = extract_tree(args.baseline, Path(tmp, "baseline"))
            for tree in trees.values():  # no measured run pays numba's compilation
                print(warm_kernels(tree), flush=True)
            print(f"{args.workers} single-threaded workers on {os.cpu_count()} cores; "
                  f"scheduler sampled every {args.interval} s; grid {SHAPE}, "
                  f"{args.volumes} volumes"
                  f"{f', band-limited to rank {args.rank}' if args.rank else ', full rank'}",
                  flush=True)
            for n in sizes:
                inputs = Path(tmp, f"in{n}")
                paths, _, _ = write_inputs(inputs, n, args.volumes, rank=args.rank)
                Path(inputs, "paths.json").write_text(json.dumps(paths))
                for name, tree in trees.items():
                    for stage, r in run_child(tree, stages, inputs, args.workers, args.interval,
                                              args.n_perm):
                        results[(stage, n, name)] = r
                        lines = [stage_line(stage, n, name, r, args.workers),
                                 *across_sizes_lines(results, stage, n, name, sizes)]
                        if len(trees) == 2 and all((stage, n, k) in results for k in trees):
                            a, b = (results[(stage, n, k)] for k in trees)
                            lines.append(
                                f"{stage:6s} n={n:5d}  ratio this/{args.baseline}: time "
                                f"{a['seconds'] / b['seconds']:.2f}, workers busy (mean) "
                                f"{a['busy_share'] / max(b['busy_share'], 1e-9):.2f}, client "
                                f"RSS growth {a['client_rss_growth_mib']:.0f} vs "
                                f"{b['client_rss_growth_mib']:.0f} MiB")
                        print("\n".join(lines), flush=True)
    finally:
        if results:
            print("\n".join(summary_lines(results, args.workers)), flush=True)


if __name__ == "__main__":
    main()
