"""``cfhdask confounds``: what denoising will use, per subject, before anything runs."""

from __future__ import annotations

import argparse
import logging

from cfhdask.cli.prep_options import add_denoise_options, denoise_params_from_args, inputs_from_args
from cfhdask.prep.summary import format_plan_table, plan_inputs

log = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``cfhdask confounds``."""
    p = subparsers.add_parser(
        "confounds",
        help="list, per subject, the inputs, TR, volumes kept and regressors denoising will use",
        description="Find the runs (fMRIPrep derivatives, DPABI folder or BOLD files with "
                    "--confounds), check their confounds tables, sidecars and headers, and "
                    "print per subject what was found, the TR, the volumes kept and the "
                    "nuisance regressors, without reading image data. Exit status 1 when any "
                    "subject has a problem.",
    )
    p.add_argument("bold", nargs="*", metavar="BOLD",
                   help="4D NIfTI files (paths or URLs), when not using --bids-derivatives/--dpabi")
    add_denoise_options(p, dry_run=False)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Print the plan table; 1 when any subject is skipped, else 0."""
    from cfhdask.cli.options import parse_storage_options

    so = parse_storage_options(args.storage_options)
    params = denoise_params_from_args(args)
    args.denoise = True  # this command is about denoising: plain files need confounds
    inputs, skipped = inputs_from_args(args, args.bold, so)
    rows = plan_inputs(inputs, params, skipped, so)
    print(format_plan_table(rows))
    n_bad = sum(not r.ok for r in rows)
    print(f"{len(rows) - n_bad} run(s) ready, {n_bad} with problems; parameters: "
          f"{params.to_dict()}")
    return 1 if n_bad else 0
