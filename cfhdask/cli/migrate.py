"""``cfhdask migrate STORE``: upgrade a cohort store to the current layout, in place."""

from __future__ import annotations

import argparse

from cfhdask.cli.options import parse_storage_options


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``migrate`` sub-command."""
    p = subparsers.add_parser(
        "migrate", help="upgrade a cohort store written by an older cfhdask",
        description="Upgrade a layout-version-1 store (before the group counterpart) to the "
                    "current layout, in place and without recomputing anything: its "
                    "per-subject CFH maps (each subject's own maximum) become the metric "
                    "cfh_subject. Run `cfhdask cfh STORE` afterwards for the group-counterpart "
                    "CFH. Running it again finishes an interrupted migration.")
    p.add_argument("store", metavar="STORE", help="cohort store (directory or fsspec URL)")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help="fsspec options of a remote STORE")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the migration; print what changed."""
    from cfhdask.io.store import STORE_VERSION, migrate_store

    moved = migrate_store(args.store, parse_storage_options(args.storage_options))
    print(f"cfhdask migrate: {args.store} is at layout version {STORE_VERSION}; "
          f"{len(moved)} subject(s) with per-subject CFH maps, now cfh_subject")
    return 0
