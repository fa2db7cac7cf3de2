"""``cfhdask cfh STORE``: compute the CFH maps of every subject that lacks them.

Also the conventions shared with ``cfhdask vmhc`` and ``cfhdask autonomy``
(:func:`add_map_options`, :func:`run_map`): the store, ``--export``,
``--subjects``, ``--overwrite``, the block engine and the cluster options.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from cfhdask.cli.options import (
    add_cluster_options,
    add_setting,
    cluster_kwargs,
    overrides,
    parse_storage_options,
)

#: Options of ``cfhdask cfh`` -> fields of the ``cfh`` settings.
CFH_FIELDS = ("counterpart", "reference_subjects", "subject_batch", "block", "split_every",
              "backend", "kernel")


def add_map_options(p: argparse.ArgumentParser, export_help: str, *,
                    split_every: bool = True) -> None:
    """STORE and the options every per-subject map command shares."""
    p.add_argument("store", metavar="STORE", help="cohort store (directory or fsspec URL)")
    add_setting(p, "--block", "cfh", type=int, metavar="N")
    if split_every:
        add_setting(p, "--split-every", "cfh", type=int, metavar="K")
    p.add_argument("--export", metavar="DIR", default=None, help=export_help)
    p.add_argument("--subjects", nargs="+", metavar="SUBJECT", default=None,
                   help="only these subjects (default: every ingested subject)")
    p.add_argument("--overwrite", action="store_true",
                   help="recompute subjects that already have complete results")
    add_setting(p, "--backend", "cfh", choices=["numpy", "cupy"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help='fsspec options of a remote STORE (credentials, endpoint), e.g. '
                        '\'{"anon": false, "client_kwargs": {"endpoint_url": "http://..."}}\'')
    add_cluster_options(p)


def cohort_mean(maps) -> tuple[int, float]:
    """(subjects, mean of the finite values) of lazily read (subject, voxel) maps.

    A chunked Dask reduction (a sum and a count per chunk): the maps are
    never all loaded at once in this process.
    """
    import dask
    import dask.array as da

    data = maps.data if isinstance(maps.data, da.Array) else da.from_array(np.asarray(maps))
    total, count = dask.compute(da.nansum(data, dtype=np.float64), da.isfinite(data).sum())
    return int(data.shape[0]), float(total / count) if count else float("nan")


def run_map(args: argparse.Namespace, compute: Callable, kwargs: dict,
            describe: Callable) -> int:
    """Run a per-subject map command on the cluster the options name; print a summary.

    ``describe(ds)`` returns the command's own summary lines.
    """
    from cfhdask.cluster import dask_client
    from cfhdask.io.export import check_export_dir
    from cfhdask.io.store import open_store

    t0 = time.perf_counter()
    kwargs = dict(kwargs, subjects=args.subjects, export=args.export,
                  overwrite=args.overwrite, show_progress=not args.no_progress,
                  storage_options=parse_storage_options(args.storage_options))
    ckw = cluster_kwargs(args)
    # a missing, incomplete or unwritable store, or an --export directory that cannot be
    # written, stops here, before any cluster starts
    open_store(args.store, mode="r+", storage_options=kwargs["storage_options"])
    if args.export:
        check_export_dir(args.export)
    if set(ckw) - {"scheduler", "scheduler_file"}:  # more than where the scheduler is
        with dask_client(**ckw) as client:
            ds = compute(args.store, client=client, **kwargs)
    else:
        ds = compute(args.store, scheduler=args.scheduler,
                     scheduler_file=args.scheduler_file, **kwargs)
    print(f"cfhdask {args.command}: {ds.attrs['store']}")
    for line in describe(ds):
        print(f"  {line}")
    print(f"  subjects computed: {len(ds.attrs['computed'])}, skipped (complete): "
          f"{len(ds.attrs['skipped'])}")
    n_subjects, mean = cohort_mean(ds[ds.attrs["metric"] if ds.attrs["metric"] in ds
                                      else "cfh"])
    print(f"  mean over {n_subjects} subject(s): {mean:.4f}")
    if args.export:
        print(f"  NIfTI maps in {args.export}")
    print(f"  time: {time.perf_counter() - t0:.1f} s")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``cfh`` sub-command."""
    p = subparsers.add_parser(
        "cfh", help="compute per-subject CFH maps in a cohort store",
        description="CFH (connectivity between functionally homotopic voxels) of every "
                    "subject of STORE without complete results. With --counterpart group "
                    "(the default, as the CFH literature computes it) each voxel's "
                    "counterpart is the voxel of the other hemisphere whose correlation, "
                    "summed over the reference subjects, is largest; each subject's map is "
                    "the Fisher z of its own r with that counterpart. With --counterpart "
                    "subject each subject's voxel takes its own maximal contralateral r. "
                    "Both are Dask graphs of left x right blocks; the full matrix is never "
                    "materialised. Complete subjects are skipped (see --overwrite).")
    add_map_options(p, "also write <subject>_cfh.nii.gz (group) or <subject>_cfh_subject.nii.gz "
                       "and <subject>_counterpart_subject.nii.gz (subject), and in group mode "
                       "group_counterpart.nii.gz (its x, y, z) and "
                       "group_counterpart_displacement.nii.gz (mm from the mirror voxel) into "
                       "DIR")
    g = p.add_argument_group("counterpart")
    add_setting(g, "--counterpart", "cfh", choices=["group", "subject"])
    add_setting(g, "--reference-subjects", "cfh", kind="list", metavar="REF",
                help="Reference set of the group counterpart: subject ids (sub-01,sub-02), "
                     "a participants filter (group==control; with --participants) or "
                     "another cohort store on the same grid; none: every ingested subject "
                     "(label-free)")
    g.add_argument("--participants", metavar="FILE", default=None,
                   help="participants table for a --reference-subjects filter")
    add_setting(g, "--subject-batch", "cfh", type=int, metavar="N")
    add_setting(g, "--kernel", "cfh", choices=["auto", "lowrank", "full"])
    p.set_defaults(func=run)
    return p


def _describe(ds) -> list[str]:
    if ds.attrs["counterpart"] == "subject":
        return ["counterpart: per-subject maximum (metric cfh_subject)"]
    ref = ds.attrs["reference"]
    kind = {"all": "every ingested subject", "subjects": "the named subjects",
            "filter": "filter " + ", ".join(ref.get("filters", [])),
            "store": f"store {ref.get('store')}"}.get(ref.get("kind"), ref.get("kind"))
    return [f"counterpart: group (metric cfh), reference {kind}: {ref.get('n_subjects')} "
            f"subject(s), fingerprint {ds.attrs['fingerprint']}"]


def run(args: argparse.Namespace) -> int:
    """Run ``cfhdask cfh``; prints a short summary."""
    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.settings import resolve

    cfg = resolve("cfh", overrides(args, CFH_FIELDS), style="cli")
    kwargs = {k: getattr(cfg, k) for k in CFH_FIELDS}
    kwargs["participants"] = args.participants
    return run_map(args, compute_cfh, kwargs, _describe)
