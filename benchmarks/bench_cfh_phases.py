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
kind ran (from the first start to the last stop, seconds into the run); a
scheduler plugin adds how many graphs (update-graph messages) brought that
kind's tasks and when the first and the last reached the scheduler: a kind
that arrives long after the client sent it waits behind the scheduler's
handling of the graphs before it.  ``--timeline`` prints each worker's tasks
and input fetches in time order.  The
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
import contextlib
import cProfile
import os
import pstats
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


def arrivals(events: list[tuple[float, list]], t0: float) -> dict[str, list[float]]:
    """``{kind: [update-graph messages, first arrival, last arrival]}`` of a run's graphs."""
    out: dict[str, list[float]] = defaultdict(lambda: [0, float("inf"), 0.0])
    for when, keys in events:
        for kind in {kind_of(k) for k in keys}:
            row = out[kind]
            row[0] += 1
            row[1] = min(row[1], when - t0)
            row[2] = max(row[2], when - t0)
    return dict(out)


def timeline(records: list[dict], t0: float, wall: float) -> list[str]:
    """One line per worker: its tasks in time order (kind, start-stop seconds into the run),
    the fetches of their inputs ("(fetch)"), and its seconds without a task in compute."""
    per: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for rec in records:
        for s in rec["startstops"]:
            if s["action"] in ("compute", "transfer"):
                kind = kind_of(rec["key"]) + ("" if s["action"] == "compute" else "(fetch)")
                per[rec["worker"]].append((s["start"] - t0, s["stop"] - t0, kind))
    lines = []
    for k, w in enumerate(sorted(per)):
        spans = sorted(per[w])
        busy = sum(b - a for a, b, kind in spans if not kind.endswith("(fetch)"))
        shown = " ".join(f"{kind.removeprefix('grp-')}:{a:.1f}-{b:.1f}" for a, b, kind in spans
                         if b - a >= 0.05)
        lines.append(f"  worker {k:2d} idle {max(0.0, wall - busy):5.2f} s | {shown}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", default="4mm", help="grid of the simulated cohort (6mm, 4mm, 3mm)")
    p.add_argument("--subjects", type=int, default=24, help="subjects (half patients)")
    p.add_argument("--volumes", type=int, default=100, help="volumes per run")
    p.add_argument("--workers", type=int, default=16, help="single-threaded worker processes")
    p.add_argument("--repeats", type=int, default=1, help="reported runs after the warm-up")
    p.add_argument("--timeline", action="store_true",
                   help="also print each worker's tasks and input fetches of 50 ms or more in "
                        "time order, and its seconds with no task in compute")
    p.add_argument("--cold", action="store_true",
                   help="also report the first run, on fresh workers and a store without maps "
                        "(as in a study), as run 0; the later runs recompute (overwrite)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile the client's thread (cProfile) in the reported runs and "
                        "print its N functions of most cumulative time (default 0: none)")
    a = p.parse_args()
    os.environ.update(ONE_THREAD)
    from distributed import Client, LocalCluster, get_task_stream
    from distributed.diagnostics.plugin import SchedulerPlugin

    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.cli import main as cli
    from cfhdask.sim.cohort import simulate_cohort

    class Arrivals(SchedulerPlugin):
        """When each graph reached the scheduler, and its tasks' keys."""

        name = "bench-cfh-phases-arrivals"

        def __init__(self):
            self.events: list[tuple[float, list]] = []

        def update_graph(self, scheduler, *, tasks, **kwargs):
            self.events.append((time.time(), list(tasks)))

    with tempfile.TemporaryDirectory(prefix="bench-cfh-phases-") as work:
        sim, store = str(Path(work, "sim")), str(Path(work, "cohort.zarr"))
        simulate_cohort(sim, n_patients=a.subjects // 2, n_controls=a.subjects - a.subjects // 2,
                        n_volumes=a.volumes, grid=a.grid, layout="fmriprep", seed=0)
        lc = LocalCluster(n_workers=a.workers, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None)
        client = Client(lc)
        graphs = Arrivals()
        lc.scheduler.add_plugin(graphs)  # the scheduler runs in this process
        try:
            rc = cli(["ingest", "--out", store, "--bids-derivatives", sim, "-q",
                      "--scheduler", lc.scheduler_address])
            if rc:
                sys.exit(f"bench_cfh_phases: ingest failed ({rc})")
            if not a.cold:
                t_warm = time.perf_counter()
                compute_cfh(store, client=client, show_progress=False)  # warm-up, not profiled
                warm = f"warm-up run (fresh workers) {time.perf_counter() - t_warm:.1f} s"
            else:
                warm = "run 0 on the fresh workers, as a study's first cfh stage"
            print(f"bench_cfh_phases: {a.grid}, {a.subjects} subjects x {a.volumes} volumes, "
                  f"{a.workers} single-threaded workers on {os.cpu_count()} cores; {warm}; "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
            for k in range(0 if a.cold else 1, a.repeats + 1):
                graphs.events.clear()
                with get_task_stream(client) as ts, BusySampler(client, 0.2) as sampler:
                    prof = cProfile.Profile() if a.profile else contextlib.nullcontext()
                    t0 = time.time()
                    with prof:
                        compute_cfh(store, client=client, show_progress=False, overwrite=k > 0)
                    wall = time.time() - t0
                r = {"seconds": wall, **sampler.summary(a.workers)}
                kinds, sent = by_kind(ts.data, t0), arrivals(graphs.events, t0)
                total = sum(v[1] for v in kinds.values()) or 1.0
                print(f"run {k}: {wall:.2f} s, workers busy mean "
                      f"{100 * r['busy_share']:.0f} %, {cores_text(r)}, client CPU "
                      f"{r['client_cpu_s']:.1f} s; task compute seconds summed {total:.1f} "
                      f"(= {total / wall:.1f} workers on average); {len(graphs.events)} "
                      "graphs sent to the scheduler")
                print(f"  {'task kind':28s} {'tasks':>6s} {'compute s':>10s} {'share':>6s} "
                      f"{'mean ms':>8s} {'ran from':>9s} {'to':>6s} {'graphs':>7s} "
                      f"{'sent from':>10s} {'to':>6s}")
                for kind, (n, cs, t_a, t_b) in sorted(kinds.items(), key=lambda kv: kv[1][2]):
                    g, s_a, s_b = sent.get(kind, (0, float("nan"), float("nan")))
                    print(f"  {kind:28s} {n:6d} {cs:10.2f} {100 * cs / total:5.1f}% "
                          f"{1e3 * cs / max(n, 1):8.1f} {t_a:9.2f} {t_b:6.2f} {g:7d} "
                          f"{s_a:10.2f} {s_b:6.2f}", flush=True)
                if a.timeline:
                    print("\n".join(timeline(ts.data, t0, wall)), flush=True)
                if a.profile:
                    pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(
                        a.profile)
        finally:
            close_cluster(client, lc)


if __name__ == "__main__":
    main()
