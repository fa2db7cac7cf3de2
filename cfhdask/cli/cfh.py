"""``cfhdask cfh STORE``: compute the CFH maps of every subject that lacks them."""

from __future__ import annotations

import argparse
import time

import numpy as np

from cfhdask.cli.options import (
    add_cluster_options,
    add_setting,
    cluster_kwargs,
    parse_storage_options,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``cfh`` sub-command."""
    p = subparsers.add_parser(
        "cfh", help="compute per-subject CFH maps in a cohort store",
        description="For every subject of STORE without complete CFH results: standardise "
                    "the series, compute the maximum correlation of each grey-matter voxel "
                    "with the other hemisphere as a Dask graph of left x right blocks, and "
                    "write the Fisher-z CFH map and the counterpart index into the store. "
                    "Complete subjects are skipped (see --overwrite).")
    p.add_argument("store", metavar="STORE", help="cohort store (directory or fsspec URL)")
    add_setting(p, "--block", "cfh", type=int, metavar="N")
    add_setting(p, "--split-every", "cfh", type=int, metavar="K")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="also write <subject>_cfh.nii.gz and <subject>_counterpart.nii.gz "
                        "into DIR")
    p.add_argument("--subjects", nargs="+", metavar="SUBJECT", default=None,
                   help="only these subjects (default: every ingested subject)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute subjects that already have complete CFH results")
    add_setting(p, "--backend", "cfh", choices=["numpy", "cupy"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help='fsspec options of a remote STORE (credentials, endpoint), e.g. '
                        '\'{"anon": false, "client_kwargs": {"endpoint_url": "http://..."}}\'')
    add_cluster_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``cfhdask cfh``; prints a short summary."""
    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.cluster import dask_client

    t0 = time.perf_counter()
    kwargs = dict(subjects=args.subjects, block=args.block, split_every=args.split_every,
                  export=args.export, overwrite=args.overwrite, backend=args.backend,
                  show_progress=not args.no_progress,
                  storage_options=parse_storage_options(args.storage_options))
    ckw = cluster_kwargs(args)
    if set(ckw) - {"scheduler", "scheduler_file"}:  # more than where the scheduler is
        with dask_client(**ckw) as client:
            ds = compute_cfh(args.store, client=client, **kwargs)
    else:
        ds = compute_cfh(args.store, scheduler=args.scheduler,
                         scheduler_file=args.scheduler_file, **kwargs)
    cfh = ds["cfh"].values
    mean = float(np.nanmean(cfh)) if np.isfinite(cfh).any() else float("nan")
    n_const = ds.attrs["n_constant"]
    print(f"cfhdask cfh: {ds.attrs['store']}")
    print(f"  subjects computed: {len(ds.attrs['computed'])}, skipped (complete): "
          f"{len(ds.attrs['skipped'])}")
    if n_const:
        print(f"  constant voxels excluded: {sum(n_const.values())} over {len(n_const)} "
              "subject(s)")
    print(f"  mean CFH (Fisher z) over {cfh.shape[0]} subject(s): {mean:.4f}")
    if args.export:
        print(f"  NIfTI maps in {args.export}")
    print(f"  time: {time.perf_counter() - t0:.1f} s")
    return 0
