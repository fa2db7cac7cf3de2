"""SLURM vs the embedded cluster: the same ingest -> cfh -> stats job, in one run.

A small simulated cohort (``--subjects``, 6 mm grid, ``--volumes`` volumes,
fMRIPrep layout) goes through ingest, CFH (the default group counterpart) and
permutation inference twice, with the same number of single-threaded workers
(``--workers``) and the same memory limit per worker:

* **embedded**: cfhdask's LocalCluster (``cfhdask.cluster.dask_client(cluster="local")``);
* **slurm**: ``--cluster slurm`` (``dask_client(cluster="slurm")``, the code path of
  the CLI option): one dask-jobqueue worker job of 1 core per worker, on the
  SLURM of ``SLURM_CONF``; without one, a throwaway single-node SLURM is
  started here with ``deploy/slurm/local_slurm.py`` (root) and stopped at the end.

Each backend keeps one cluster for the three stages (as ``cfhdask run``).  The
benchmark prints, per backend and stage, the wall time and the workers busy
(the scheduler sampled every ``--interval`` s, as ``bench_scale.py``), the
cluster start separately (for SLURM: the queue wait until every job runs, then
until every worker joined), and the ratio SLURM / embedded of every figure, all
from the same run (medians over ``--repeats``, the backends taking turns to go
first: the first run of a process pays its imports and the client's caches).
The stats stage labels no atlas (``atlases=[]``: that is client-side work, the
same on both backends).  It also checks that both backends produced
bit-identical maps.

Usage::

    .venv/bin/python benchmarks/bench_slurm.py                 # 16 subjects, 2 workers
    .venv/bin/python benchmarks/bench_slurm.py --subjects 32 --n-perm 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _bench_util import BusySampler  # benchmarks/ is sys.path[0]

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "cfh", "stats")
BACKENDS = ("embedded", "slurm")


# ---------------------------------------------------------------- SLURM
@contextlib.contextmanager
def slurm_running(folder: Path):
    """``SLURM_CONF`` of the running SLURM, or a local one started (and stopped) here."""
    if os.environ.get("SLURM_CONF"):
        yield os.environ["SLURM_CONF"]
        return
    spec = importlib.util.spec_from_file_location("local_slurm",
                                                  REPO / "deploy" / "slurm" / "local_slurm.py")
    local_slurm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local_slurm)
    conf = local_slurm.start(str(folder))
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        local_slurm.stop(str(folder))
        del os.environ["SLURM_CONF"]


class QueueWatch:
    """When every worker job of this run was first RUNNING (``squeue``, every 0.2 s)."""

    def __init__(self, n_jobs: int):
        self.n_jobs, self.t0 = n_jobs, time.perf_counter()
        self.running_after: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from cfhdask.cluster.batch import JOB_NAME

        while not self._stop.is_set():
            out = subprocess.run(["squeue", "-h", "-n", JOB_NAME, "-o", "%T"],
                                 capture_output=True, text=True)
            if out.stdout.split().count("RUNNING") >= self.n_jobs:
                self.running_after = time.perf_counter() - self.t0
                return
            self._stop.wait(0.2)

    def __enter__(self) -> QueueWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- one backend
def cluster_config(backend: str, args, logs: Path) -> dict:
    """Dask config of the backend: 1-core SLURM jobs of one worker, or the LocalCluster."""
    if backend == "embedded":
        return {"cfhdask.cluster.memory_limit": args.memory}
    return {"cfhdask.cluster.jobqueue": {
        "cores": 1, "processes": 1, "memory": args.memory, "jobs": args.workers,
        "walltime": "01:00:00", "interface": "lo", "log_directory": str(logs)},
        "cfhdask.cluster.wait_timeout": "10m"}


def run_backend(backend: str, bolds: list[str], participants: str, work: Path, args) -> dict:
    """Cluster start, then ingest -> cfh -> stats on one cluster; seconds and workers busy."""
    import dask

    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.cluster import dask_client
    from cfhdask.io.store import open_store
    from cfhdask.prep.ingest import ingest
    from cfhdask.stats.inference import group_inference

    store, out = str(work / "cohort.zarr"), str(work / "stats")
    stages = {
        "ingest": lambda c: ingest(bolds, store, drop_volumes=4, client=c),
        "cfh": lambda c: compute_cfh(store, client=c, show_progress=False),
        "stats": lambda c: group_inference(open_store(store), participants, group="group",
                                           covariates=["age", "sex"], n_perm=args.n_perm,
                                           seed=1, out_dir=out, client=c, atlases=[]),
    }
    kind = "local" if backend == "embedded" else "slurm"
    res: dict = {}
    watch = QueueWatch(args.workers) if backend == "slurm" else contextlib.nullcontext()
    t0 = time.perf_counter()
    with dask.config.set(cluster_config(backend, args, work / "logs")):
        with watch, dask_client(cluster=kind, n_workers=args.workers, threads_per_worker=1,
                                wait_workers=args.workers) as client:
            res["start"] = time.perf_counter() - t0
            if backend == "slurm":
                res["queue_wait"] = watch.running_after
            for name in STAGES:
                t1 = time.perf_counter()
                with BusySampler(client, args.interval) as sampler:
                    stages[name](client)
                res[name] = time.perf_counter() - t1
                res[f"{name}_busy"] = sampler.summary(args.workers)["busy_share"]
    return res


def same_results(work_a: Path, work_b: Path) -> bool:
    """Both backends wrote the same CFH maps and statistical maps, bit for bit."""
    import nibabel as nib

    from cfhdask.io.store import METRICS, open_store

    a, b = open_store(str(work_a / "cohort.zarr")), open_store(str(work_b / "cohort.zarr"))
    if a.subjects("cfh") != b.subjects("cfh"):
        return False
    for var in METRICS["cfh"]:
        if not np.array_equal(a.cfh_maps(var=var).values, b.cfh_maps(var=var).values,
                              equal_nan=True):
            return False
    for path in glob.glob(str(work_a / "stats" / "*.nii.gz")):
        other = work_b / "stats" / os.path.basename(path)
        if not np.array_equal(np.asarray(nib.load(path).dataobj),
                              np.asarray(nib.load(other).dataobj), equal_nan=True):
            return False
    return True


# ---------------------------------------------------------------- report
def report(runs: dict[str, list[dict]], n_subjects: int, workers: int) -> None:
    med = {b: {k: float(np.median([r[k] for r in rs if r.get(k) is not None] or [np.nan]))
               for k in rs[0]} for b, rs in runs.items()}
    e, s = med["embedded"], med["slurm"]
    print(f"\n{'':18s} {'embedded':>10s} {'slurm':>10s} {'slurm/embedded':>15s}")
    print(f"{'cluster start (s)':18s} {e['start']:10.1f} {s['start']:10.1f} "
          f"{s['start'] / e['start']:15.2f}")
    if not np.isnan(s.get("queue_wait", np.nan)):
        print(f"{'  queue wait (s)':18s} {'':>10s} {s['queue_wait']:10.1f}   (submission to "
              f"every job RUNNING; the rest is worker start-up)")
    for name in STAGES:
        print(f"{name + ' (s)':18s} {e[name]:10.1f} {s[name]:10.1f} {s[name] / e[name]:15.2f}")
        print(f"{'  workers busy':18s} {e[name + '_busy']:10.0%} {s[name + '_busy']:10.0%} "
              f"{s[name + '_busy'] / max(e[name + '_busy'], 1e-9):15.2f}")
    te, ts = (sum(m[n] for n in STAGES) for m in (e, s))
    print(f"{'stages (s)':18s} {te:10.1f} {ts:10.1f} {ts / te:15.2f}")
    print(f"{'s / subject':18s} {te / n_subjects:10.3f} {ts / n_subjects:10.3f} "
          f"{ts / te:15.2f}   (stages only, queue wait excluded; {workers} workers each)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=16, help="simulated subjects (two groups)")
    p.add_argument("--volumes", type=int, default=60, help="volumes per run (4 dropped)")
    p.add_argument("--n-perm", type=int, default=400, help="permutations of the stats stage")
    p.add_argument("--workers", type=int, default=2,
                   help="single-threaded workers of each backend (SLURM: one 1-core job each)")
    p.add_argument("--memory", default="2GiB", help="memory limit per worker (both backends)")
    p.add_argument("--repeats", type=int, default=1, help="runs per backend (medians shown)")
    p.add_argument("--interval", type=float, default=0.2, help="scheduler sampling period (s)")
    args = p.parse_args(argv)
    if shutil.which("sbatch") is None:
        raise SystemExit("bench_slurm: sbatch not found (apt-get install slurm-wlm munge)")
    from cfhdask.sim.cohort import simulate_cohort

    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
        tmp = Path(tmp)
        half = args.subjects // 2
        simulate_cohort(str(tmp / "bids"), n_patients=args.subjects - half, n_controls=half,
                        n_volumes=args.volumes, grid="6mm", layout="fmriprep", seed=3)
        bolds = sorted(glob.glob(str(tmp / "bids" / "sub-*" / "func" /
                                     "*_desc-preproc_bold.nii.gz")))
        participants = str(tmp / "bids" / "participants.tsv")
        runs: dict[str, list[dict]] = {b: [] for b in BACKENDS}
        identical = True
        with slurm_running(tmp / "slurm") as conf:
            print(f"{args.subjects} subjects, 6 mm, {args.volumes} volumes, {args.n_perm} "
                  f"permutations; {args.workers} single-threaded workers of {args.memory} "
                  f"per backend on {os.cpu_count()} cores; SLURM {conf}", flush=True)
            for rep in range(args.repeats):
                for backend in BACKENDS[::-1] if rep % 2 else BACKENDS:
                    work = tmp / f"{backend}-{rep}"
                    res = run_backend(backend, bolds, participants, work, args)
                    runs[backend].append(res)
                    print(f"run {rep + 1} {backend:8s}: start {res['start']:.1f} s, "
                          + ", ".join(f"{n} {res[n]:.1f} s ({res[n + '_busy']:.0%} busy)"
                                      for n in STAGES), flush=True)
                identical &= same_results(tmp / f"embedded-{rep}", tmp / f"slurm-{rep}")
                for backend in BACKENDS:
                    shutil.rmtree(tmp / f"{backend}-{rep}", ignore_errors=True)
    report(runs, args.subjects, args.workers)
    print(f"results bit-identical between the backends: {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
