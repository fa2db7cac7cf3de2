"""Command-line options of input discovery and denoising, shared by ``ingest`` and ``confounds``."""

from __future__ import annotations

import argparse

from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import SubjectInput
from cfhdask.prep.discover import Skip, discover_inputs
from cfhdask.prep.pipeline import STEPS, DenoiseParams


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """``--bids-derivatives``, ``--dpabi``, ``--confounds``, ``--tr`` and their filters."""
    g = parser.add_argument_group(
        "inputs (one source: BOLD files, --bids-derivatives or --dpabi)")
    g.add_argument("--bids-derivatives", metavar="DIR",
                   help="fMRIPrep output folder: finds *_space-SPACE*_desc-preproc_bold.nii.gz, "
                        "their *_desc-confounds_timeseries.tsv and JSON sidecars (TR), "
                        "sessions and runs included")
    g.add_argument("--space", default="MNI152NLin2009cAsym",
                   help="fMRIPrep output space to use (default %(default)s)")
    g.add_argument("--task", default="rest",
                   help="BIDS task label of the runs to use (default %(default)s)")
    g.add_argument("--participant-label", nargs="+", metavar="LABEL",
                   help="only these subjects (with or without 'sub-')")
    g.add_argument("--dpabi", metavar="DIR",
                   help="DPABI working folder: finds FunImgARCW*/<subject>/*.nii[.gz] and "
                        "RealignParameter/<subject>/rp_*.txt")
    g.add_argument("--dpabi-dir", default="FunImgARCW", metavar="NAME",
                   help="DPABI image folder (prefix) to read (default %(default)s)")
    g.add_argument("--confounds", nargs="+", metavar="TABLE",
                   help="confounds tables for BOLD files given as arguments (fMRIPrep TSV, "
                        "rp_*.txt or a table with trans_x..rot_z columns), paired by subject id")
    g.add_argument("--tr", type=float, metavar="SECONDS",
                   help="repetition time; overrides the NIfTI header and the sidecar")


def add_denoise_options(parser: argparse.ArgumentParser, *, dry_run: bool = True) -> None:
    """Add the input and denoising options (replaces ingest's own ``--drop-volumes``).

    Parameters
    ----------
    parser : argparse.ArgumentParser
    dry_run : bool
        Also add ``--dry-run``.
    """
    add_input_options(parser)
    d = DenoiseParams()
    g = parser.add_argument_group(
        "denoising (paper: drop 10, smooth 4 mm, Friston-24 + WM + CSF + global, "
        "detrend, band-pass 0.01-0.1 Hz)")
    g.add_argument("--denoise", action="store_true",
                   help="denoise BOLD files given as arguments even without --confounds "
                        "(on by default with --bids-derivatives, --dpabi or --confounds)")
    g.add_argument("--drop-volumes", type=int, default=d.drop_volumes, metavar="N",
                   help="initial volumes to discard (default %(default)s, as the paper)")
    g.add_argument("--smoothing-fwhm", type=float, default=d.smoothing_fwhm, metavar="MM",
                   help="Gaussian smoothing FWHM in mm (default %(default)s)")
    g.add_argument("--no-smooth", action="store_true", help="no spatial smoothing")
    g.add_argument("--motion", choices=["friston24", "6", "none"], default=d.motion,
                   help="head-motion regressors (default %(default)s)")
    g.add_argument("--no-wm", action="store_true", help="do not regress the white-matter signal")
    g.add_argument("--no-csf", action="store_true", help="do not regress the CSF signal")
    g.add_argument("--no-global-signal", action="store_true",
                   help="do not regress the global signal")
    g.add_argument("--high-pass", type=float, default=d.high_pass, metavar="HZ",
                   help="high-pass cutoff in Hz (default %(default)s)")
    g.add_argument("--low-pass", type=float, default=d.low_pass, metavar="HZ",
                   help="low-pass cutoff in Hz (default %(default)s)")
    g.add_argument("--no-filter", action="store_true", help="no band-pass filtering")
    g.add_argument("--no-detrend", action="store_true", help="no linear detrending")
    g.add_argument("--order", default=",".join(d.order), metavar="STEPS",
                   help=f"steps in order, comma-separated, from {', '.join(STEPS)} "
                        "('clean' = nilearn's combined filter+regress); a step left out does "
                        "not run (default %(default)s)")
    if dry_run:
        g.add_argument("--dry-run", action="store_true",
                       help="list per subject what was found, TR, volumes kept and regressors, "
                            "then stop")


def denoise_params_from_args(args: argparse.Namespace) -> DenoiseParams:
    """:class:`DenoiseParams` from parsed options.

    Raises
    ------
    CfhdaskInputError
        Inconsistent options (e.g. ``--high-pass`` above ``--low-pass``).
    """
    order = tuple(s.strip() for s in str(args.order).split(",") if s.strip())
    no_filter = args.no_filter
    return DenoiseParams(
        drop_volumes=args.drop_volumes,
        smoothing_fwhm=None if args.no_smooth else args.smoothing_fwhm,
        motion=None if args.motion == "none" else args.motion,
        wm=not args.no_wm,
        csf=not args.no_csf,
        global_signal=not args.no_global_signal,
        detrend=not args.no_detrend,
        high_pass=None if no_filter else args.high_pass,
        low_pass=None if no_filter else args.low_pass,
        order=order,
        tr=args.tr,
    )


def denoise_requested(args: argparse.Namespace) -> bool:
    """Whether the run denoises: a derivatives folder, ``--confounds`` or ``--denoise``."""
    return bool(args.bids_derivatives or args.dpabi or args.confounds
                or getattr(args, "denoise", False))


def inputs_from_args(
    args: argparse.Namespace, files: list[str] | None = None
) -> tuple[list[SubjectInput], list[Skip]]:
    """Runs to ingest, and runs skipped with their reason, from parsed options.

    Parameters
    ----------
    args : argparse.Namespace
        With the options of :func:`add_input_options` (and ``--motion``).
    files : list of str, optional
        BOLD files given as positional arguments.

    Raises
    ------
    CfhdaskInputError
        No source or several, or a source that holds nothing.
    """
    files = list(files or [])
    if files and (args.bids_derivatives or args.dpabi):
        raise CfhdaskInputError(
            "give BOLD files or --bids-derivatives or --dpabi, not several of them")
    motion = getattr(args, "motion", "friston24")
    return discover_inputs(
        bids_derivatives=args.bids_derivatives, space=args.space, task=args.task or None,
        participant_label=args.participant_label, dpabi=args.dpabi, dpabi_dir=args.dpabi_dir,
        files=files or None, confounds=args.confounds, tr=args.tr,
        require_confounds=motion not in (None, "none") and denoise_requested(args),
    )
