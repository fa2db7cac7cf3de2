"""``cfhdask ingest``: 4D BOLD NIfTI images -> a Zarr cohort store."""

from __future__ import annotations

import argparse
import json

from cfhdask.cli import add_cluster_options, cluster_kwargs
from cfhdask.errors import CfhdaskInputError
from cfhdask.prep.options import add_denoise_options


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
    p.add_argument("--mask", default=None, metavar="gm|MASK.nii.gz",
                   help="'gm' (MNI152 grey-matter template > --gm-threshold; default for a "
                        "new store) or a mask NIfTI on the data grid; an existing store "
                        "keeps its mask")
    p.add_argument("--gm-threshold", type=float, default=0.2, metavar="P",
                   help="grey-matter probability threshold of the gm mask (default 0.2)")
    p.add_argument("--overwrite", action="store_true",
                   help="re-ingest subjects that are already complete in the store")
    p.add_argument("--voxel-chunk", type=int, default=None, metavar="N",
                   help="voxels per Zarr chunk of a new store (default from cfhdask.yaml)")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help='fsspec options for remote URLs, e.g. \'{"anon": true}\'')
    add_denoise_options(p)
    add_cluster_options(p)
    p.set_defaults(func=run)


def parse_storage_options(text: str | None) -> dict:
    """The ``--storage-options`` JSON object as a dict."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CfhdaskInputError(f"--storage-options: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CfhdaskInputError("--storage-options: must be a JSON object")
    return value


def run(args: argparse.Namespace) -> int:
    """Run ``cfhdask ingest``."""
    from cfhdask.cluster import dask_client
    from cfhdask.io.ingest import SubjectsFailed, ingest
    from cfhdask.io.nifti import check_bold, read_header
    from cfhdask.prep.options import (
        denoise_params_from_args,
        denoise_requested,
        inputs_from_args,
    )
    from cfhdask.prep.pipeline import make_prepare
    from cfhdask.prep.summary import format_plan_table, plan_inputs

    so = parse_storage_options(args.storage_options)
    if not (args.bold or args.bids_derivatives or args.dpabi):
        raise CfhdaskInputError("give BOLD files, --bids-derivatives DIR or --dpabi DIR")
    params = denoise_params_from_args(args)
    inputs, skipped = inputs_from_args(args, args.bold)
    denoise = denoise_requested(args)
    problems = [(s.subject, s.reason) for s in skipped]
    if denoise:
        rows = plan_inputs(inputs, params, skipped, so)
        if args.dry_run:
            print(format_plan_table(rows))
            return 1 if any(not r.ok for r in rows) else 0
        bad = {r.subject: r.problem for r in rows if not r.ok}
        problems = [(k, v) for k, v in bad.items()]
        inputs = [i for i in inputs if i.subject not in bad]
    else:
        for inp in inputs:  # cheap header checks before any cluster starts
            check_bold(read_header(inp.bold, so), args.drop_volumes)
        if args.dry_run:
            for inp in inputs:
                print(f"{inp.subject}\t{inp.bold}\t(no denoising)")
            return 0
    failed = ""
    if inputs:
        with dask_client(**cluster_kwargs(args)) as client:
            try:
                store = ingest(inputs, args.out, mask=args.mask,
                               gm_threshold=args.gm_threshold,
                               drop_volumes=params.drop_volumes, overwrite=args.overwrite,
                               client=client, voxel_chunk=args.voxel_chunk,
                               storage_options=so,
                               prepare=make_prepare(params) if denoise else None)
            except SubjectsFailed as exc:
                failed, store = str(exc), exc.store
        if store is not None:
            subjects = store.subjects()
            print(f"cohort store {store.url}: {len(subjects)} subject(s), {store.n_voxels} "
                  f"voxels ({store.n_left} left, {store.n_right} right, {store.n_midline} "
                  f"midline), grid {'x'.join(map(str, store.grid_shape))}")
    for subject, reason in problems:
        print(f"skipped {subject}: {reason}")
    if failed:
        print(f"failed: {failed}")
    return 1 if (problems or failed) else 0
