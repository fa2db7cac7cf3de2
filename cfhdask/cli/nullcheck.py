"""``cfhdask null-check``: empirical FWER of the study's inference on random splits of one group."""

from __future__ import annotations

import argparse

from cfhdask.cli.options import (
    add_setting,
    cluster_kwargs,
    csv_list,
    overrides,
    parse_storage_options,
)
from cfhdask.cli.stats import (
    add_inference_options,
    add_output_options,
    add_study_options,
    inference_options,
)

#: Options -> fields of the ``null_check`` settings.
NULL_CHECK_FIELDS = ("level", "n_splits", "n_perm", "seed", "uncorrected_p", "interval")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers N1,N2, got {text!r}") from None
    if len(sizes) != 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected two positive integers N1,N2, got {text!r}")
    return sizes


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``null-check`` sub-command."""
    p = subparsers.add_parser(
        "null-check", help="false positives of the study's inference, measured on random "
                           "splits of one group (Eklund et al. 2016)",
        description="Split the participants of one group (e.g. the controls) at random into "
                    "two pseudo-groups, --n-splits times, and run on each split the group "
                    "inference of 'cfhdask stats' (same covariates, scheme, cluster-forming "
                    "threshold, connectivity, TFCE, metric).  No true difference exists, so "
                    "the share of tests that find anything is each method's empirical "
                    "family-wise error rate: voxel FWE, cluster-extent FWE, cluster-mass FWE "
                    "and TFCE FWE, each with a binomial 95 % interval against --alpha, beside "
                    "the rate of an uncorrected voxel threshold.  Splits x permutations run "
                    "as independent Dask tasks returning only per-split maxima; seeded, the "
                    "result is the same whatever the number of workers.  Writes "
                    "null_check.tsv, null_check_splits.tsv and null_check.json in --out.")
    p.add_argument("store", metavar="STORE", help="cohort store (directory or fsspec URL)")
    add_study_options(p)
    add_setting(p, "--level", "null_check", metavar="LEVEL")
    p.add_argument("--sizes", type=_sizes, default=None, metavar="N1,N2",
                   help="sizes of the two pseudo-groups (default: the study's group sizes "
                        "when they fit in the group, else half each)")
    add_setting(p, "--n-splits", "null_check", type=int)
    add_setting(p, "--uncorrected-p", "null_check", type=float)
    add_setting(p, "--interval", "null_check", choices=["clopper-pearson", "wilson"])
    add_inference_options(p, own="null_check")
    add_output_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Check the splits, run them, print the FWER table."""
    import pandas as pd

    from cfhdask.cluster import dask_client
    from cfhdask.io.participants import read_participants, read_sessions
    from cfhdask.io.store import open_store
    from cfhdask.settings import resolve
    from cfhdask.stats.nullcheck import null_check, plan_null_check

    opts = inference_options(args)
    nc = resolve("null_check", overrides(args, NULL_CHECK_FIELDS), style="cli")
    so = parse_storage_options(args.storage_options)
    store = open_store(args.store, storage_options=so)
    table = read_participants(args.participants, so)
    sessions = read_sessions(args.participants, so)
    # group, sizes and the number of distinct splits are checked here, before any cluster
    plan_null_check(store, table, group=args.group, level=nc.level, groups=args.groups,
                    sizes=args.sizes, n_splits=nc.n_splits, seed=nc.seed, design=opts.design,
                    sessions=sessions, storage_options=so, source=args.participants,
                    metric=opts.stats.metric)
    with dask_client(**cluster_kwargs(args)) as client:
        res = null_check(
            store, table, group=args.group, level=nc.level, groups=args.groups,
            sizes=args.sizes, n_splits=nc.n_splits, n_perm=nc.n_perm, seed=nc.seed,
            uncorrected_p=nc.uncorrected_p, interval=nc.interval, sessions=sessions,
            storage_options=so, client=client, out_dir=args.out, **opts.keywords())
    p = res.params
    print(f"null-check: {p['n_splits']} splits of the {p['n_participants']} participants of "
          f"group {p['level']!r} into {p['sizes'][0]} vs {p['sizes'][1]} "
          f"({p['n_distinct_splits']} distinct exist), {p['n_perm_requested']} permutations "
          f"each ({p['scheme']}), nominal alpha {p['alpha']}")
    for w in p["warnings"]:
        print(f"WARNING: {w}")
    cols = ["method", "n_tests", "n_positive", "fwer", "ci_low", "ci_high", "verdict"]
    with pd.option_context("display.width", 200, "display.float_format", "{:.4f}".format):
        print(res.summary[cols].to_string(index=False))
    print(f"outputs in {args.out}")
    return 0
