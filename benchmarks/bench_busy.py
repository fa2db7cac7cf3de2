"""Workers busy in every stage of the demo study, on the paper's grids, on one LocalCluster.

For each grid asked (``--grids``, default ``6mm,4mm,3mm``) a simulated cohort
(``cfhdask.sim``, fMRIPrep layout, ``--subjects`` split into patients and
controls, ``--volumes`` volumes) is written once, then the demo's study
(:func:`cfhdask.study.demo.run_demo`: ingest with the paper's denoising -> CFH
with the group counterpart -> permutation inference -> clinical -> report; it
stops after the stages of ``--stages``, default ingest, cfh and stats) runs
on one LocalCluster of ``--workers`` single-threaded worker processes (default
16: more workers than cores on purpose, this measures concurrency, not
speed).  Each stage is sampled apart (the study's ``on_stage`` hook starts and
stops a :class:`BusySampler`): the scheduler is asked every ``--interval``
seconds how many workers have a task assigned.  Printed per stage: seconds, the
median of workers busy, their mean share and that share by tenth of the stage
(idle time at the start is client-side preparation, at the end a tail), client
RSS and CPU seconds, and the cores the workers kept busy (their CPU seconds over
the stage's: near every core, the stage is short of cores, not of tasks).  Each
grid runs in a fresh process, its cohort simulated before the cluster is sampled.  With ``--baseline REF`` the same cohort also
runs on the ``cfhdask`` of git ``REF`` (extracted with ``git archive``), the two
trees taking turns per grid, and the ratios this / baseline are printed from
the same run.

Usage::

    .venv/bin/python benchmarks/bench_busy.py --grids 6mm,4mm,3mm --subjects 24
    .venv/bin/python benchmarks/bench_busy.py --grids 3mm --n-perm 5000 --volumes 100
    .venv/bin/python benchmarks/bench_busy.py --grids 6mm,3mm --baseline main
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench_util import (  # benchmarks/ is sys.path[0]
    BusySampler,
    close_cluster,
    cores_text,
    extract_tree,
    warm_kernels,
)

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
LINE = "bench-busy-stage "  # prefix of the child's stdout line for one finished stage


def simulate(grid: str, n_subjects: int, n_volumes: int, sim: str) -> None:
    """The cohort of one grid, written once for every tree."""
    from cfhdask.sim.cohort import simulate_cohort

    t0 = time.perf_counter()
    simulate_cohort(sim, n_patients=n_subjects // 2, n_controls=n_subjects - n_subjects // 2,
                    n_volumes=n_volumes, grid=grid, layout="fmriprep", seed=0)
    print(f"bench_busy: {grid}: simulated {n_subjects} subjects in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)


class _Enough(Exception):
    """Every stage asked for was measured: the study stops here."""


def child(n_perm: int, n_workers: int, interval: float, work: str, stages: list[str]) -> None:
    """The demo study on the cohort in ``work/sim``, every stage sampled; one line per stage.

    The study stops when a stage starts after every stage of ``stages`` ended."""
    from distributed import Client, LocalCluster

    from cfhdask.study.demo import run_demo

    lc = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None)
    client = Client(lc)
    samplers: dict[str, tuple[float, BusySampler]] = {}

    seen: set[str] = set()

    def on_stage(name: str, event: str) -> None:
        if event == "start" and seen >= set(stages):
            raise _Enough
        seen.add(name)
        if event == "start":
            samplers[name] = (time.perf_counter(), BusySampler(client, interval).__enter__())
            return
        t_start, sampler = samplers.pop(name)
        sampler.__exit__(None, None, None)
        figures = {"stage": name, "seconds": time.perf_counter() - t_start,
                   **sampler.summary(n_workers)}
        print(LINE + json.dumps(figures), flush=True)

    try:
        run_demo(work, n_perm=n_perm, seed=0, client=client, on_stage=on_stage)  # reuses sim/
    except _Enough:
        pass
    finally:
        close_cluster(client, lc)


def stage_line(grid: str, tree: str, r: dict, n_workers: int) -> str:
    return (f"{grid:>4s} {tree:>8s} {r['stage']:10s} {r['seconds']:8.1f} s  workers busy median "
            f"{r['busy_median']:4.1f} of {n_workers} (mean {100 * r['busy_share']:3.0f} %; by "
            f"tenth: {' '.join(f'{100 * t:.0f}' for t in r['busy_tenths'])}), client RSS peak "
            f"{r['client_rss_peak_mib']:.0f} MiB, client CPU {r['client_cpu_s']:.1f} s, "
            f"{cores_text(r)}")


def run_tree(tree: Path | None, work: str, a: argparse.Namespace) -> list[dict]:
    """The study of ``work/sim`` by ``tree`` (None: this checkout) in a fresh process."""
    env = {**os.environ, **ONE_THREAD, "PYTHONDONTWRITEBYTECODE": "1"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    for sub in ("results", "study.yaml"):  # each tree ingests from scratch
        path = os.path.join(work, sub)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    proc = subprocess.Popen([sys.executable, __file__, "--_child", str(a.n_perm),
                             str(a.workers), str(a.interval), work, a.stages],
                            env=env, stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        for line in proc.stdout:
            if line.startswith(LINE):
                rows.append(json.loads(line[len(LINE):]))
                yield rows[-1]
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
    if proc.returncode:
        raise SystemExit(f"bench_busy: the run of {tree or 'this tree'} failed "
                         f"(exit {proc.returncode})")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        n_perm, workers, interval, work, stages = sys.argv[2:7]
        child(int(n_perm), int(workers), float(interval), work, stages.split(","))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", default="6mm,4mm,3mm", help="grids (comma-separated)")
    p.add_argument("--subjects", type=int, default=24, help="subjects (half patients)")
    p.add_argument("--volumes", type=int, default=100,
                   help="volumes per subject, the first 10 dropped by the study")
    p.add_argument("--n-perm", type=int, default=5000, help="permutations of the stats stage")
    p.add_argument("--workers", type=int, default=16, help="single-threaded worker processes")
    p.add_argument("--interval", type=float, default=0.2, help="scheduler sampling period (s)")
    p.add_argument("--stages", default="ingest,cfh,stats",
                   help="stages measured; the study stops after them (all: "
                        "ingest,cfh,stats,clinical,report)")
    p.add_argument("--baseline", default="",
                   help="git ref run on the same cohorts, in turn, for ratios (default: none)")
    a = p.parse_args()
    print(f"bench_busy: {a.subjects} subjects x {a.volumes} volumes, {a.n_perm} permutations, "
          f"{a.workers} single-threaded workers on {os.cpu_count()} cores; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    rows: dict[tuple[str, str, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-busy-") as tmp:
        trees: dict[str, Path | None] = {"this": None}
        if a.baseline:
            trees[a.baseline] = extract_tree(a.baseline, Path(tmp, "baseline"))
        for tree in trees.values():  # no measured run pays numba's compilation
            print(warm_kernels(tree), flush=True)
        for grid in a.grids.split(","):
            work = os.path.join(tmp, grid)
            simulate(grid, a.subjects, a.volumes, os.path.join(work, "sim"))
            for name, tree in trees.items():
                for r in run_tree(tree, work, a):
                    rows[(grid, name, r["stage"])] = r
                    print(stage_line(grid, name, r, a.workers), flush=True)
            shutil.rmtree(work)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print("grid     tree stage      seconds  busy mean %  worker cores" + ("  time ratio  busy ratio"
                                                          if a.baseline else ""))
    for (grid, name, stage), r in rows.items():
        line = (f"{grid:>4s} {name:>8s} {stage:10s} {r['seconds']:7.1f}  "
                f"{100 * r['busy_share']:5.0f}  {r.get('worker_cores', float('nan')):12.2f}")
        base = rows.get((grid, a.baseline, stage)) if name == "this" and a.baseline else None
        if base:
            line += (f"  {r['seconds'] / base['seconds']:10.2f}  "
                     f"{r['busy_share'] / max(base['busy_share'], 1e-9):10.2f}")
        print(line)


if __name__ == "__main__":
    main()
