"""``cfhdask ingest``: 4D BOLD NIfTI images -> a Zarr cohort store."""

from __future__ import annotations

import argparse
import json

from cfhdask.cli import add_cluster_options, cluster_kwargs
from cfhdask.errors import CfhdaskInputError


def add_parser(subparsers) -> None:
    """Register the ``ingest`` sub-command."""
    p = subparsers.add_parser(
        "ingest", help="ingest 4D BOLD NIfTI images into a Zarr cohort store",
        description="Mask 4D BOLD images (local paths or fsspec URLs, one grid) and write "
                    "their time series into a Zarr v3 cohort store.  Subjects already in "
                    "the store are skipped unless --overwrite.")
    p.add_argument("bold", nargs="+", metavar="BOLD",
                   help="4D NIfTI (.nii/.nii.gz) path or URL; subject id from the BIDS "
                        "name (sub-<label>[_ses-<label>]) or the file stem")
    p.add_argument("--out", required=True, metavar="STORE",
                   help="cohort store directory or URL (created if absent, else extended)")
    p.add_argument("--mask", default=None, metavar="gm|MASK.nii.gz",
                   help="'gm' (MNI152 grey-matter template > --gm-threshold; default for a "
                        "new store) or a mask NIfTI on the data grid; an existing store "
                        "keeps its mask")
    p.add_argument("--gm-threshold", type=float, default=0.2, metavar="P",
                   help="grey-matter probability threshold of the gm mask (default 0.2)")
    p.add_argument("--drop-volumes", type=int, default=0, metavar="N",
                   help="discard the first N volumes of every series (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="re-ingest subjects that are already complete in the store")
    p.add_argument("--voxel-chunk", type=int, default=None, metavar="N",
                   help="voxels per Zarr chunk of a new store (default from cfhdask.yaml)")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help='fsspec options for remote URLs, e.g. \'{"anon": true}\'')
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
    from cfhdask.io.ingest import as_subject_inputs, ingest
    from cfhdask.io.nifti import check_bold, read_header

    so = parse_storage_options(args.storage_options)
    inputs = as_subject_inputs(args.bold)
    for inp in inputs:  # cheap header checks before any cluster starts
        check_bold(read_header(inp.bold, so), args.drop_volumes)
    with dask_client(**cluster_kwargs(args)) as client:
        store = ingest(inputs, args.out, mask=args.mask, gm_threshold=args.gm_threshold,
                       drop_volumes=args.drop_volumes, overwrite=args.overwrite,
                       client=client, voxel_chunk=args.voxel_chunk, storage_options=so)
    subjects = store.subjects()
    print(f"cohort store {store.url}: {len(subjects)} subject(s), {store.n_voxels} voxels "
          f"({store.n_left} left, {store.n_right} right, {store.n_midline} midline), "
          f"grid {'x'.join(map(str, store.grid_shape))}")
    return 0
