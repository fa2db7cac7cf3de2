"""``cfhdask vmhc STORE``: voxel-mirrored homotopic connectivity of every subject."""

from __future__ import annotations

import argparse

from cfhdask.cli.cfh import add_map_options, run_map


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``vmhc`` sub-command."""
    p = subparsers.add_parser(
        "vmhc", help="compute per-subject VMHC maps in a cohort store",
        description="VMHC as DPABI and C-PAC define it: the Fisher z of the Pearson r between "
                    "each voxel and its mirror voxel (world x -> -x), within the symmetrised "
                    "mask (voxels whose mirror is in the mask). VMHC assumes data normalised "
                    "to a symmetric template; on a grid that is not symmetric about x = 0 the "
                    "mirror is the nearest voxel (logged and recorded). Complete subjects are "
                    "skipped (see --overwrite).")
    add_map_options(p, "also write <subject>_vmhc.nii.gz into DIR", split_every=False)
    p.set_defaults(func=run)
    return p


def _describe(ds) -> list[str]:
    mirror = "exact (grid symmetric about x = 0)" if ds.attrs["mirror_exact"] else \
        f"nearest voxel (grid not symmetric; up to {ds.attrs['max_offset_mm']:.2f} mm)"
    return [f"mirror: {mirror}; {ds.attrs['n_pairs']} voxels with a mirror in the mask"]


def run(args: argparse.Namespace) -> int:
    """Run ``cfhdask vmhc``; prints a short summary."""
    from cfhdask.cfh.vmhc import compute_vmhc

    return run_map(args, compute_vmhc, {"block": args.block, "backend": args.backend},
                   _describe)
