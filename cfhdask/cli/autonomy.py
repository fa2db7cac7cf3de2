"""``cfhdask autonomy STORE``: the autonomy index of every subject."""

from __future__ import annotations

import argparse

from cfhdask.cli.cfh import add_map_options, run_map
from cfhdask.cli.options import add_setting


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``autonomy`` sub-command."""
    p = subparsers.add_parser(
        "autonomy", help="compute per-subject autonomy-index maps in a cohort store",
        description="Autonomy index (Wang, Buckner & Liu 2014): AI(v) = N_ipsi/|H_ipsi| - "
                    "N_contra/|H_contra|, the fractions of the voxels of the own and of the "
                    "other hemisphere correlated with v above --threshold (the voxel itself "
                    "excluded). Counts of left x left, right x right and left x right "
                    "correlation blocks on the CFH block engine; the matrices are never "
                    "materialised. Complete subjects are skipped (see --overwrite); maps of "
                    "another threshold are recomputed.")
    add_map_options(p, "also write <subject>_ai.nii.gz into DIR")
    add_setting(p, "--threshold", "autonomy", type=float, metavar="R")
    p.set_defaults(func=run)
    return p


def _describe(ds) -> list[str]:
    return [f"threshold: r > {ds.attrs['threshold']:g}"]


def run(args: argparse.Namespace) -> int:
    """Run ``cfhdask autonomy``; prints a short summary."""
    from cfhdask.cfh.autonomy import compute_autonomy

    return run_map(args, compute_autonomy,
                   {"threshold": args.threshold, "block": args.block,
                    "split_every": args.split_every, "backend": args.backend}, _describe)
