"""The ``cfhdask`` command line.

Each sub-command lives in its own module of this package and exposes
``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cfhdask._version import __version__
from cfhdask.cli.options import add_cluster_options, add_log_options, cluster_kwargs
from cfhdask.errors import CfhdaskError

__all__ = ["add_cluster_options", "build_parser", "cluster_kwargs", "main"]

#: Sub-commands, in the order ``--help`` lists them: name -> module.
COMMANDS: dict[str, str] = {
    "simulate": "cfhdask.cli.simulate",
    "confounds": "cfhdask.cli.confounds",
    "ingest": "cfhdask.cli.ingest",
    "cfh": "cfhdask.cli.cfh",
    "vmhc": "cfhdask.cli.vmhc",
    "autonomy": "cfhdask.cli.autonomy",
    "stats": "cfhdask.cli.stats",
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


class _QuietLibraries(logging.Filter):
    """Drop INFO chatter of Dask and its web stack (warnings and errors still show)."""

    NOISY = ("distributed", "bokeh", "tornado", "fsspec", "asyncio", "aiobotocore")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(self.NOISY)


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Log to stderr: INFO by default, DEBUG with -vv, WARNING with -q."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("cfhdask").setLevel(level)
    if verbose < 2:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietLibraries())
        for noisy in _QuietLibraries.NOISY:
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cfhdask`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except CfhdaskError as exc:
        print(f"cfhdask {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("cfhdask: interrupted; finished subjects are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
