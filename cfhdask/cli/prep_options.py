"""Command-line options of input discovery and denoising, shared by ``ingest`` and ``confounds``.

Defaults come from the ``inputs`` and ``preprocessing`` settings
(:mod:`cfhdask.settings`).
"""

from __future__ import annotations

import argparse

from cfhdask.cli.options import add_setting, overrides
from cfhdask.errors import CfhdaskInputError
from cfhdask.inputs import SubjectInput
from cfhdask.prep.confounds import check_filter, check_tr
from cfhdask.prep.discover import Skip, discover_inputs
from cfhdask.prep.pipeline import DenoiseParams
from cfhdask.settings import FILTERS, STEPS, resolve, settings


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """``--bids-derivatives``, ``--dpabi``, ``--confounds``, ``--tr`` and their filters."""
    g = parser.add_argument_group(
        "inputs (one source: BOLD files, --bids-derivatives or --dpabi)")
    g.add_argument("--bids-derivatives", metavar="DIR",
                   help="fMRIPrep output folder (path or URL): finds "
                        "*_space-SPACE*_desc-preproc_bold.nii.gz, their "
                        "*_desc-confounds_timeseries.tsv and JSON sidecars (TR), sessions and "
                        "runs included")
    add_setting(g, "--space", "inputs")
    add_setting(g, "--task", "inputs")
    g.add_argument("--participant-label", nargs="+", metavar="LABEL",
                   help="only these participants (with or without 'sub-')")
    g.add_argument("--dpabi", metavar="DIR",
                   help="DPABI working folder: finds FunImgARCW*/<subject>/*.nii[.gz] and "
                        "RealignParameter/<subject>/rp_*.txt")
    add_setting(g, "--dpabi-dir", "inputs", metavar="NAME")
    g.add_argument("--confounds", nargs="+", metavar="TABLE",
                   help="confounds tables for BOLD files given as arguments (fMRIPrep TSV, "
                        "rp_*.txt or a table with trans_x..rot_z columns), paired by subject id")
    g.add_argument("--tr", type=float, metavar="SECONDS",
                   help="repetition time in seconds; overrides the NIfTI header and the "
                        "sidecar (a value above 100 is taken for milliseconds and refused)")
    g.add_argument("--storage-options", default=None, metavar="JSON",
                   help="fsspec options of remote folders, files and the store (credentials, "
                        "endpoint), e.g. '{\"anon\": true}' or '{\"client_kwargs\": "
                        "{\"endpoint_url\": \"http://127.0.0.1:9000\"}}'")


#: Denoising options -> fields of :class:`DenoiseParams`.
DENOISE_FIELDS = ("drop_volumes", "smoothing_fwhm", "motion", "wm", "csf", "global_signal",
                  "detrend", "high_pass", "low_pass", "filter", "order")


def add_denoise_options(parser: argparse.ArgumentParser, *, dry_run: bool = True) -> None:
    """Add the input and denoising options (defaults: the ``preprocessing`` settings).

    Parameters
    ----------
    parser : argparse.ArgumentParser
    dry_run : bool
        Also add ``--dry-run``.
    """
    add_input_options(parser)
    g = parser.add_argument_group(
        "denoising (default, as the paper: drop 10, smooth 4 mm, Friston-24 + WM + CSF + "
        "global, detrend, band-pass 0.01-0.1 Hz)")
    g.add_argument("--denoise", action="store_true",
                   help="denoise BOLD files given as arguments even without --confounds "
                        "(on by default with --bids-derivatives, --dpabi or --confounds)")
    add_setting(g, "--drop-volumes", "preprocessing", type=int, metavar="N")
    add_setting(g, "--smoothing-fwhm", "preprocessing", type=float, metavar="MM")
    g.add_argument("--no-smooth", action="store_true", help="no spatial smoothing")
    add_setting(g, "--motion", "preprocessing", choices=["friston24", "6", "none"])
    add_setting(g, "--wm", "preprocessing", kind="bool")
    add_setting(g, "--csf", "preprocessing", kind="bool")
    add_setting(g, "--global-signal", "preprocessing", kind="bool")
    add_setting(g, "--detrend", "preprocessing", kind="bool")
    add_setting(g, "--high-pass", "preprocessing", type=float, metavar="HZ")
    add_setting(g, "--low-pass", "preprocessing", type=float, metavar="HZ")
    add_setting(g, "--filter", "preprocessing", metavar="{" + ",".join(FILTERS) + "}")
    g.add_argument("--no-filter", action="store_true", help="no band-pass filtering")
    add_setting(g, "--order", "preprocessing", kind="list", metavar="STEPS",
                help=f"Steps in order, comma-separated, from {', '.join(STEPS)} ('clean' = "
                     "nilearn's combined filter + regress); a step left out does not run")
    if dry_run:
        g.add_argument("--dry-run", action="store_true",
                       help="list per subject what was found, TR, volumes kept and regressors, "
                            "then stop")


def denoise_params_from_args(args: argparse.Namespace) -> DenoiseParams:
    """:class:`DenoiseParams` from the ``preprocessing`` settings and the options given.

    Raises
    ------
    CfhdaskInputError
        A bad or inconsistent option (e.g. ``--high-pass`` above ``--low-pass``), naming it.
    """
    if args.tr is not None:
        check_tr(args.tr, "--tr")
    given = overrides(args, DENOISE_FIELDS)
    params = DenoiseParams.from_settings(**given, tr=args.tr)
    changes: dict = {}
    if args.no_smooth:
        changes["smoothing_fwhm"] = None
    if args.no_filter:
        changes.update(high_pass=None, low_pass=None)
    params = DenoiseParams(**{**params.model_dump(), **changes}) if changes else params
    if args.tr is not None and params.wants_filter:
        check_filter(args.tr, params.high_pass, params.low_pass, bold="--tr", tr_source="--tr")
    return params


def denoise_requested(args: argparse.Namespace) -> bool:
    """Whether the run denoises: a derivatives folder, ``--confounds`` or ``--denoise``."""
    return bool(args.bids_derivatives or args.dpabi or args.confounds
                or getattr(args, "denoise", False))


def inputs_from_args(
    args: argparse.Namespace, files: list[str] | None = None,
    storage_options: dict | None = None,
) -> tuple[list[SubjectInput], list[Skip]]:
    """Runs to ingest, and runs skipped with their reason, from parsed options.

    Parameters
    ----------
    args : argparse.Namespace
        With the options of :func:`add_input_options` (and ``--motion``).
    files : list of str, optional
        BOLD files given as positional arguments.
    storage_options : dict, optional
        fsspec options of remote folders and files (``--storage-options``).

    Raises
    ------
    CfhdaskInputError
        No source or several, or a source that holds nothing.
    """
    files = list(files or [])
    if files and (args.bids_derivatives or args.dpabi):
        raise CfhdaskInputError(
            "give BOLD files or --bids-derivatives or --dpabi, not several of them")
    motion = getattr(args, "motion", None) or settings().preprocessing.motion
    where = resolve("inputs", overrides(args, ("space", "task", "dpabi_dir")), style="cli")
    return discover_inputs(
        bids_derivatives=args.bids_derivatives, space=where.space, task=where.task or None,
        participant_label=args.participant_label, dpabi=args.dpabi, dpabi_dir=where.dpabi_dir,
        files=files or None, confounds=args.confounds, tr=args.tr,
        require_confounds=motion not in (None, "none") and denoise_requested(args),
        storage_options=storage_options,
    )
