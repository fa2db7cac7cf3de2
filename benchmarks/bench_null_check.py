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
measured in this run, and the time of ``--target-splits`` x ``--n-perm``
(the issue's 1000 x 1000) extrapolated from the measured null-check
throughput when fewer splits were run (said so in the output).
``--profile N`` first times the parts of N permutations of one split in this
process (float32 GEMM, float64 refinement, cluster labelling, TFCE).
``--store DIR`` keeps the null cohort in DIR (made once, reused).  The
issue's configuration is ``--grid 3mm --n-controls 30 --n-perm 1000``;
``--quick`` is a small smoke run.
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


def cohort(path: Path | None, tmp: Path, grid: str, n: int, client) -> tuple:
    """The null cohort in ``path`` (made there once) or in ``tmp``."""
    from cfhdask.io.store import open_store

    root = path if path is not None else tmp
    if path is not None and (root / "null.zarr").exists():
        return open_store(str(root / "null.zarr")), root / "sim" / "participants.tsv"
    root.mkdir(parents=True, exist_ok=True)
    return make_null_cohort(root, grid, n, client)


def profile_split(store, participants, n_perm: int, tfce: bool) -> dict[str, float]:
    """CPU seconds of this process per part over ``n_perm`` permutations of one split
    (CPU time: less sensitive than wall time to other work on a shared machine)."""
    import numpy as np
    import pandas as pd

    from cfhdask.stats.clusters import voxel_graph
    from cfhdask.stats.design import build_design
    from cfhdask.stats.glm import MICRO_BATCH, permuted_t_fast
    from cfhdask.stats.inference import analysis_mask
    from cfhdask.stats.null import (
        map_maxima,
        null_settings,
        refine_decisions,
        tfce_maxima,
    )
    from cfhdask.stats.permute import make_schedule

    table = pd.read_csv(participants, sep="\t")
    table["group"] = ["A" if i % 2 == 0 else "B" for i in range(len(table))]
    subs = list(table.participant_id)
    design = build_design(table, subs, group="group", covariates=["age", "sex"],
                          categorical=["sex"])
    Y = np.asarray(store.cfh_maps(subs).values, dtype=np.float64)
    keep, prep, _ = analysis_mask(Y, np.asarray(store.hemisphere), design.x, design.Z)
    graph = voxel_graph(np.asarray(store.ijk)[keep], store.grid_shape, 18)
    schedule = make_schedule(design.x, n_perm, 0, "freedman-lane")
    settings = null_settings(prep.df, scheme="freedman-lane", cluster_p=0.001, tfce=tfce)
    parts = dict.fromkeys(("float32 GEMM", "float64 refinement", "clusters", "TFCE"), 0.0)
    for mb in range(0, n_perm, MICRO_BATCH):
        perms = schedule.batch(mb, mb + MICRO_BATCH)
        t0 = time.process_time()
        t32 = permuted_t_fast(prep, perms, "freedman-lane")
        t1 = time.process_time()
        ts = np.stack([refine_decisions(prep, p, t, settings)
                       for p, t in zip(perms, t32, strict=True)])
        t2 = time.process_time()
        for t in ts:
            map_maxima(graph, t, settings, with_tfce=False)
        t3 = time.process_time()
        if tfce:
            tfce_maxima(graph, ts, settings)
        t4 = time.process_time()
        for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[k] += dt
    return parts


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
    ap.add_argument("--target-splits", type=int, default=1000,
                    help="splits of the full run whose time is extrapolated")
    ap.add_argument("--store", type=Path, default=None,
                    help="folder keeping the null cohort (made once, then reused)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="first time the parts of N permutations of one split")
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
        store, participants = cohort(a.store, Path(tmp), a.grid, a.n_controls, client)
        if a.profile:
            parts = profile_split(store, participants, a.profile, not a.no_tfce)
            total = sum(parts.values())
            print(f"one split, {a.profile} permutations in this process: {total:.2f} CPU s: "
                  + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f}%)"
                              for k, v in parts.items()), flush=True)
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
    if a.n_splits < a.target_splits:
        full = a.target_splits * a.n_perm * n_vox / thr_nc
        print(f"EXTRAPOLATED from the measured null-check throughput (not run): "
              f"{a.target_splits} splits x {a.n_perm} permutations would take "
              f"{full:.0f} s = {full / 3600:.2f} h on these {a.n_workers} workers")
    print(nc.summary[["method", "n_tests", "fwer", "ci_low", "ci_high"]].to_string(index=False))


if __name__ == "__main__":
    main()
