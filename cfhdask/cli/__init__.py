"""The ``cfhdask`` command line.

Each sub-command lives in its own module of this package and exposes
``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from cfhdask._version import __version__
from cfhdask.cli.logs import log_file_path, logging_to, one_line
from cfhdask.cli.options import add_cluster_options, add_log_options, cluster_kwargs
from cfhdask.errors import CfhdaskError

__all__ = ["add_cluster_options", "build_parser", "cluster_kwargs", "main", "setup_logging"]

#: Sub-commands, in the order ``--help`` lists them: name -> module.
COMMANDS: dict[str, str] = {
    "simulate": "cfhdask.cli.simulate",
    "confounds": "cfhdask.cli.confounds",
    "ingest": "cfhdask.cli.ingest",
    "cfh": "cfhdask.cli.cfh",
    "vmhc": "cfhdask.cli.vmhc",
    "autonomy": "cfhdask.cli.autonomy",
    "stats": "cfhdask.cli.stats",
    "null-check": "cfhdask.cli.nullcheck",
    "run": "cfhdask.cli.run",
    "demo": "cfhdask.cli.demo",
    "migrate": "cfhdask.cli.migrate",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="cfhdask",
        description="Voxel-wise connectivity between functionally homotopic voxels (CFH) "
                    "for resting-state fMRI, computed on Dask.",
    )
    parser.add_argument("--version", action="version", version=f"cfhdask {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v info is the default, -vv debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as exc:  # a command not built into this install
            if exc.name != modname:
                raise
            continue
        mod.add_parser(sub)
        add_log_options(sub.choices[name])
    return parser


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log to stderr: INFO by default, DEBUG with -vv, WARNING with -q (for scripts)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("cfhdask").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cfhdask`` command; returns the exit status.

    Errors are one line on stderr (exit status 2; 130 for Ctrl-C); the
    details (tracebacks, Dask's and the workers' messages) go to a log file
    whose path is printed with the error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    path = log_file_path(args.command)
    log = logging.getLogger("cfhdask.cli")
    with logging_to(path, args.verbose, args.quiet):
        log.debug("cfhdask %s: %s", __version__, " ".join(sys.argv[:1] + list(argv or [])))
        try:
            status = int(args.func(args) or 0)
        except CfhdaskError as exc:
            log.debug("error", exc_info=True)
            print(f"cfhdask {args.command}: error: {one_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            log.debug("interrupted", exc_info=True)
            print(f"cfhdask {args.command}: interrupted; finished subjects are kept "
                  f"(details in {path})", file=sys.stderr)
            return 130
        except Exception as exc:  # an unexpected failure: one line here, the traceback in the log
            log.debug("unexpected error", exc_info=True)
            print(f"cfhdask {args.command}: error: {one_line(exc)} (traceback in {path})",
                  file=sys.stderr)
            return 2
        if status and os.path.exists(path):
            print(f"details in {path}", file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
