"""Where a `cfh` stage's worker time goes: its tasks by kind, and the cores they kept busy.

A simulated cohort (``cfhdask.sim``, fMRIPrep layout, ``--subjects``,
``--volumes``, ``--grid``) is ingested with the paper's denoising
(``cfhdask ingest --bids-derivatives``), then ``compute_cfh`` (the default
group counterpart) runs ``--repeats`` + 1 times on one LocalCluster of
``--workers`` single-threaded worker processes; the first run warms the
workers (imports, compiled kernels): only its time is printed.  For each reported
run, Dask's task stream gives every task kind (its key prefix: ``grp-basis``,
``grp-series``, ``grp-link``, ... ``_compute_write_unit``): how many tasks,
their summed compute seconds and share of all of them, the mean, and when the
kind ran (from the first start to the last stop, seconds into the run).  The
workers' CPU seconds over the run (``Client.run`` on each worker, before and
after) divided by the wall time give the cores they kept busy: with more
workers than cores, a stage near every core is short of cores, not of tasks,
and more concurrency would not make it faster on this machine.

Usage::

    .venv/bin/python benchmarks/bench_cfh_phases.py --grid 4mm --subjects 24
    .venv/bin/python benchmarks/bench_cfh_phases.py --grid 6mm --subjects 64 --workers 8
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _bench_util import BusySampler, close_cluster, cores_text  # benchmarks/ is sys.path[0]

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def kind_of(key) -> str:
    """A task key's kind: its name without the token and the numbers after it."""
    name = str(key[0] if isinstance(key, tuple) else key)
    return re.sub(r"-\d+$", "", re.sub(r"-[0-9a-f]{8,}.*$", "", name))


def by_kind(records: list[dict], t0: float) -> dict[str, list[float]]:
    """``{kind: [tasks, compute s, first start, last stop]}`` of task-stream records."""
    out: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, float("inf"), 0.0])
    for rec in records:
        for s in rec["startstops"]:
            if s["action"] != "compute":
                continue
            row = out[kind_of(rec["key"])]
            row[0] += 1
            row[1] += s["stop"] - s["start"]
            row[2] = min(row[2], s["start"] - t0)
            row[3] = max(row[3], s["stop"] - t0)
    return dict(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="4mm", help="grid of the simulated cohort (6mm, 4mm, 3mm)")
    p.add_argument("--subjects", type=int, default=24, help="subjects (half patients)")
    p.add_argument("--volumes", type=int, default=100, help="volumes per run")
    p.add_argument("--workers", type=int, default=16, help="single-threaded worker processes")
    p.add_argument("--repeats", type=int, default=1, help="reported runs after the warm-up")
    a = p.parse_args()
    os.environ.update(ONE_THREAD)
    from distributed import Client, LocalCluster, get_task_stream

    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.cli import main as cli
    from cfhdask.sim.cohort import simulate_cohort

    with tempfile.TemporaryDirectory(prefix="bench-cfh-phases-") as work:
        sim, store = str(Path(work, "sim")), str(Path(work, "cohort.zarr"))
        simulate_cohort(sim, n_patients=a.subjects // 2, n_controls=a.subjects - a.subjects // 2,
                        n_volumes=a.volumes, grid=a.grid, layout="fmriprep", seed=0)
        lc = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None)
        client = Client(lc)
        try:
            rc = cli(["ingest", "--out", store, "--bids-derivatives", sim, "-q",
                      "--scheduler", lc.scheduler_address])
            if rc:
                sys.exit(f"bench_cfh_phases: ingest failed ({rc})")
            t_warm = time.perf_counter()
            compute_cfh(store, client=client, show_progress=False)  # warm-up, not profiled
            print(f"bench_cfh_phases: {a.grid}, {a.subjects} subjects x {a.volumes} volumes, "
                  f"{a.workers} single-threaded workers on {os.cpu_count()} cores; warm-up run "
                  f"(fresh workers) {time.perf_counter() - t_warm:.1f} s; load average "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
            for k in range(a.repeats):
                with get_task_stream(client) as ts, BusySampler(client, 0.2) as sampler:
                    t0 = time.time()
                    compute_cfh(store, client=client, show_progress=False, overwrite=True)
                    wall = time.time() - t0
                r = {"seconds": wall, **sampler.summary(a.workers)}
                kinds = by_kind(ts.data, t0)
                total = sum(v[1] for v in kinds.values()) or 1.0
                print(f"run {k + 1}: {wall:.2f} s, workers busy mean "
                      f"{100 * r['busy_share']:.0f} %, {cores_text(r)}, client CPU "
                      f"{r['client_cpu_s']:.1f} s; task compute seconds summed {total:.1f} "
                      f"(= {total / wall:.1f} workers on average)")
                print(f"  {'task kind':28s} {'tasks':>6s} {'compute s':>10s} {'share':>6s} "
                      f"{'mean ms':>8s} {'ran from':>9s} {'to':>6s}")
                for kind, (n, cs, t_a, t_b) in sorted(kinds.items(), key=lambda kv: kv[1][2]):
                    print(f"  {kind:28s} {n:6d} {cs:10.2f} {100 * cs / total:5.1f}% "
                          f"{1e3 * cs / max(n, 1):8.1f} {t_a:9.2f} {t_b:6.2f}", flush=True)
        finally:
            close_cluster(client, lc)


if __name__ == "__main__":
    main()
