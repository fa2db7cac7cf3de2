"""``cfhdask ingest``: 4D BOLD NIfTI images -> a Zarr cohort store."""

from __future__ import annotations

import argparse

from cfhdask.cli.logs import one_line
from cfhdask.cli.options import (
    add_cluster_options,
    add_setting,
    cluster_kwargs,
    overrides,
    parse_storage_options,
)
from cfhdask.cli.prep_options import add_denoise_options
from cfhdask.errors import CfhdaskInputError


def add_parser(subparsers) -> None:
    """Register the ``ingest`` sub-command."""
    p = subparsers.add_parser(
        "ingest", help="ingest 4D BOLD NIfTI images into a Zarr cohort store",
        description="Denoise and mask 4D BOLD images (local paths or fsspec URLs, one grid; "
                    "BOLD files, an fMRIPrep derivatives folder or a DPABI folder) and write "
                    "their time series into a Zarr v3 cohort store, one subject per Dask "
                    "task.  Subjects already in the store are skipped unless --overwrite.  "
                    "With --bids-derivatives, --dpabi, --confounds or --denoise the paper's "
                    "denoising runs (drop 10 volumes, 4 mm smoothing, Friston-24 + WM + CSF + "
                    "global signal regression, 0.01-0.1 Hz band-pass); otherwise the series "
                    "are stored as given after dropping --drop-volumes.  A subject that "
                    "fails is skipped and listed; the exit status is then 1.")
    p.add_argument("bold", nargs="*", metavar="BOLD",
                   help="4D NIfTI (.nii/.nii.gz) path or URL; subject id from the BIDS "
                        "name (sub-<label>[_ses-<label>][_run-<n>]) or the file stem")
    p.add_argument("--out", required=True, metavar="STORE",
                   help="cohort store directory or URL (created if absent, else extended)")
    add_setting(p, "--mask", "mask", "source", dest="mask", metavar="gm|MASK.nii.gz",
                help="'gm' (MNI152 grey-matter template > --gm-threshold) or a mask NIfTI on "
                     "the data grid, for a new store; an existing store keeps its mask")
    add_setting(p, "--gm-threshold", "mask", type=float, metavar="P")
    p.add_argument("--overwrite", action="store_true",
                   help="re-ingest subjects that are already complete in the store")
    add_setting(p, "--voxel-chunk", "store", type=int, metavar="N")
    add_denoise_options(p)
    add_cluster_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``cfhdask ingest``: 0 when every run was ingested, 1 when some were skipped."""
    from cfhdask.cli.prep_options import (
        denoise_params_from_args,
        denoise_requested,
        inputs_from_args,
    )
    from cfhdask.cluster import dask_client
    from cfhdask.io.nifti import check_bold, read_header
    from cfhdask.prep.ingest import SubjectsFailed, check_out, ingest, subject_tr
    from cfhdask.prep.pipeline import make_prepare
    from cfhdask.prep.summary import format_plan_table, plan_inputs
    from cfhdask.settings import resolve

    so = parse_storage_options(args.storage_options)
    mask = resolve("mask", overrides(args, ("gm_threshold",)), style="cli")
    if not (args.bold or args.bids_derivatives or args.dpabi):
        raise CfhdaskInputError("give BOLD files, --bids-derivatives DIR or --dpabi DIR")
    params = denoise_params_from_args(args)
    inputs, skipped = inputs_from_args(args, args.bold, so)
    denoise = denoise_requested(args)
    problems = [(s.subject, s.reason) for s in skipped]
    if denoise:
        rows = plan_inputs(inputs, params, skipped, so)
        if args.dry_run:
            print(format_plan_table(rows))
            return 1 if any(not r.ok for r in rows) else 0
        problems = [(r.subject, r.problem) for r in rows if not r.ok]
        bad = {subject for subject, _ in problems}
        inputs = [i for i in inputs if i.subject not in bad]
    else:
        for inp in inputs:  # cheap header checks before any cluster starts
            header = read_header(inp.bold, so)
            check_bold(header, params.drop_volumes)
            subject_tr(inp, header, so)
        if args.dry_run:
            for inp in inputs:
                print(f"{inp.subject}\t{inp.bold}\t(no denoising)")
            for subject, reason in problems:
                print(f"SKIPPED {subject}\t{reason}")
            return 1 if problems else 0
    failed = ""
    if inputs:
        check_out(args.out, so)  # an unwritable store stops here, before any cluster
        with dask_client(**cluster_kwargs(args)) as client:
            try:
                store = ingest(inputs, args.out, mask=args.mask,
                               gm_threshold=mask.gm_threshold,
                               drop_volumes=params.drop_volumes, overwrite=args.overwrite,
                               client=client, voxel_chunk=args.voxel_chunk,
                               storage_options=so,
                               prepare=make_prepare(params) if denoise else None)
            except SubjectsFailed as exc:
                failed, store = exc, exc.store
        if store is not None:
            subjects = store.subjects()
            print(f"cohort store {store.url}: {len(subjects)} subject(s), {store.n_voxels} "
                  f"voxels ({store.n_left} left, {store.n_right} right, {store.n_midline} "
                  f"midline), grid {'x'.join(map(str, store.grid_shape))}")
    for subject, reason in problems:
        print(f"skipped {subject}: {reason}")
    if failed:
        for subject, exc in sorted(failed.failures.items()):
            print(f"failed {subject}: {one_line(exc)}")
    return 1 if (problems or failed) else 0

