"""Null-check throughput (permutations x voxels / s) next to ``cfhdask stats``', one run.

A null cohort is made by the real pipeline (simulate with effect 0, ingest,
CFH) on ``--grid``; then, on the same machine, the same cluster and the same
maps:

* ``stats``: :func:`cfhdask.stats.inference.group_inference` of the controls
  split once into two groups, ``--stats-perm`` permutations;
* ``null-check``: :func:`cfhdask.stats.nullcheck.null_check`, ``--n-splits``
  splits x ``--n-perm`` permutations, fanned out as independent tasks.

Both with the study's settings (Freedman-Lane, covariates age and sex, TFCE
on unless ``--no-tfce``).  Printed: wall times (medians of ``--repeats``),
throughput in permutations x voxels / s, and the ratio null-check / stats,
measured in this run.  The issue's figure is ``--grid 3mm --n-controls 30
--n-splits 1000 --n-perm 1000``; ``--quick`` is a small smoke run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path


def make_null_cohort(root: Path, grid: str, n: int, client) -> tuple:
    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.prep.ingest import ingest
    from cfhdask.sim.cohort import simulate_cohort

    table = simulate_cohort(root / "sim", n_patients=0, n_controls=n, effect_size=0.0,
                            grid=grid, seed=3, layout="bids", client=client)
    files = table.attrs["files"]
    store = ingest([files[s]["bold"] for s in sorted(files)], str(root / "null.zarr"),
                   client=client)
    compute_cfh(store, client=client, show_progress=False)
    return store, root / "sim" / "participants.tsv"


def _median_time(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="3mm")
    ap.add_argument("--n-controls", type=int, default=30)
    ap.add_argument("--n-splits", type=int, default=1000)
    ap.add_argument("--n-perm", type=int, default=1000)
    ap.add_argument("--stats-perm", type=int, default=5000)
    ap.add_argument("--n-workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-tfce", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="12mm grid, 20 controls, 20 splits x 100, stats 2000")
    a = ap.parse_args()
    if a.quick:
        a.grid, a.n_controls, a.n_splits, a.n_perm, a.stats_perm = "12mm", 20, 20, 100, 2000
    logging.basicConfig(level=logging.WARNING)
    import pandas as pd
    from distributed import Client, LocalCluster
    from threadpoolctl import threadpool_limits

    from cfhdask.stats.inference import group_inference
    from cfhdask.stats.nullcheck import null_check

    threadpool_limits(1)
    common = dict(group="group", covariates=["age", "sex"], scheme="freedman-lane",
                  tfce=not a.no_tfce)
    with tempfile.TemporaryDirectory() as tmp, \
            LocalCluster(n_workers=a.n_workers, threads_per_worker=1,
                         dashboard_address=None) as cluster, Client(cluster) as client:
        store, participants = make_null_cohort(Path(tmp), a.grid, a.n_controls, client)
        table = pd.read_csv(participants, sep="\t")
        half = table.copy()
        half["group"] = ["A" if i % 2 == 0 else "B" for i in range(len(half))]
        t_stats, res = _median_time(lambda: group_inference(
            store, half, n_perm=a.stats_perm, client=client, atlases=None, **common),
            a.repeats)
        n_vox = res.params["mask"]["n_voxels_analysed"]
        t_nc, nc = _median_time(lambda: null_check(
            store, table, level="control", n_splits=a.n_splits, n_perm=a.n_perm,
            client=client, **common), a.repeats)
    perms_nc = int(nc.splits.drop_duplicates("split").n_perm.sum())
    thr_stats = res.params["n_perm"] * n_vox / t_stats
    thr_nc = perms_nc * n_vox / t_nc
    print(f"null cohort: {a.n_controls} controls, grid {a.grid}, {n_vox} voxels analysed; "
          f"{a.n_workers} workers x 1 thread; TFCE {'off' if a.no_tfce else 'on'}")
    print(f"stats      : {res.params['n_perm']} permutations in {t_stats:.1f} s -> "
          f"{thr_stats:.3g} permutations x voxels / s")
    print(f"null-check : {a.n_splits} splits x {a.n_perm} = {perms_nc} permutations in "
          f"{t_nc:.1f} s -> {thr_nc:.3g} permutations x voxels / s")
    print(f"ratio null-check / stats throughput: {thr_nc / thr_stats:.2f} (same run)")
    print(nc.summary[["method", "n_tests", "fwer", "ci_low", "ci_high"]].to_string(index=False))


if __name__ == "__main__":
    main()
