"""Wall time and peak memory of every stage of ``cfhdask demo``.

Runs the demo (simulate -> ingest + denoise -> CFH -> permutation inference ->
clinical -> report) on the embedded LocalCluster and prints, per stage, the
seconds, the share of the total, and the peak summed RSS of this process and
its workers; the slowest stage is named.

    python benchmarks/bench_study.py                 # the full demo: 30 vs 30, 3 mm, 5000 perms
    python benchmarks/bench_study.py --quick         # 6 mm grid, 8 vs 8, 80 volumes, 200 perms
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from _bench_util import PeakMemory  # benchmarks/ is sys.path[0]

from cfhdask.cluster import dask_client
from cfhdask.study.demo import run_demo


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small cohort on a 6 mm grid")
    ap.add_argument("--out", default=None, help="output folder (default: a temporary one)")
    ap.add_argument("--n-perm", type=int, default=None, help="permutations (default 5000)")
    args = ap.parse_args(argv)
    kw = (dict(n_patients=8, n_controls=8, n_volumes=80, n_perm=200, grid="6mm")
          if args.quick else dict(n_patients=30, n_controls=30, n_volumes=230, n_perm=5000,
                                  grid="3mm"))
    if args.n_perm:
        kw["n_perm"] = args.n_perm
    out = args.out or tempfile.mkdtemp(prefix="cfhdask-bench-study-")
    peaks: dict[str, float] = {}
    state: dict = {}

    def on_stage(name: str, event: str) -> None:
        if event == "start":
            state["mem"] = PeakMemory().__enter__()
        else:
            state["mem"].__exit__(None, None, None)
            peaks[name] = state["mem"].peak / 2**30

    t0 = time.perf_counter()
    try:
        with PeakMemory() as total_mem, dask_client() as client:
            startup = time.perf_counter() - t0
            res, timings = run_demo(out, client=client, on_stage=on_stage, **kw)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    total = time.perf_counter() - t0
    print(f"cfhdask demo: {kw}, cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    print(f"{'stage':10s} {'seconds':>9s} {'share':>7s} {'peak GiB':>9s}")
    print(f"{'cluster':10s} {startup:9.1f} {startup / total:7.1%} {'':>9s}")
    for name, sec in timings.items():
        peak = f"{peaks[name]:9.2f}" if name in peaks else f"{'':>9s}"
        print(f"{name:10s} {sec:9.1f} {sec / total:7.1%} {peak}")
    print(f"{'total':10s} {total:9.1f} {1:7.1%} {total_mem.peak / 2**30:9.2f}")
    slowest = max(timings, key=timings.get)
    print(f"slowest stage: {slowest} ({timings[slowest] / total:.0%} of the total)")
    print(f"clusters found: {len(res.clusters)}")


if __name__ == "__main__":
    main()
