"""``cfhdask stats``: two-group permutation inference on a store's CFH maps."""

from __future__ import annotations

import argparse

from cfhdask.cli.options import (
    add_cluster_options,
    add_setting,
    cluster_kwargs,
    csv_list,
    overrides,
    parse_storage_options,
)


def inference_options(args: argparse.Namespace, *, own: dict | None = None):
    """The inference options given on the command line, resolved against the settings.

    Errors name the ``--flag``; ``own`` are more ``stats`` fields (``n_perm``, ``seed``).
    Returns a :class:`cfhdask.stats.options.InferenceOptions`.
    """
    from cfhdask.stats.options import DESIGN_KEYS, STATS_KEYS, InferenceOptions

    return InferenceOptions.resolve(overrides(args, STATS_KEYS + DESIGN_KEYS), style="cli",
                                    stats=own)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``stats`` sub-command."""
    p = subparsers.add_parser(
        "stats", help="group comparison of CFH/VMHC/AI maps by permutation (voxel, cluster, "
                      "TFCE FWE)",
        description="Two-group GLM with covariates on the participants' maps of a cohort "
                    "store (--metric: CFH with the group or the per-subject counterpart, VMHC "
                    "or the autonomy index; one row per participant: the maps of its sessions "
                    "and runs are combined, see --combine-runs); permutations (Draper-Stoneman "
                    "or Freedman-Lane) fanned out on Dask; voxel-FWE, cluster-extent/mass FWE "
                    "and TFCE FWE; clusters labelled with AAL and Harvard-Oxford.  The "
                    "participants table, sessions.tsv files, groups, covariates and the metric "
                    "are checked before any Dask cluster starts.  Files this command wrote in "
                    "--out before are replaced; nothing else there is touched.")
    p.add_argument("store", metavar="STORE", help="cohort store (directory or fsspec URL)")
    add_study_options(p)
    add_inference_options(p)
    add_output_options(p)
    p.set_defaults(func=run)
    return p


def add_output_options(p: argparse.ArgumentParser) -> None:
    """``--out``, ``--storage-options`` and the Dask cluster options."""
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help='fsspec options of a remote store and participants table, e.g. '
                        '\'{"anon": true}\'')
    add_cluster_options(p)


def add_study_options(p: argparse.ArgumentParser) -> None:
    """``--participants``, ``--group``, ``--groups`` and the design options (covariates...)."""
    p.add_argument("--participants", required=True, metavar="FILE",
                   help="participants table (TSV or CSV, path or URL) with a participant_id "
                        "column; sub-<label>/sub-<label>_sessions.tsv files next to it give "
                        "session-level variables")
    p.add_argument("--group", required=True, metavar="COLUMN",
                   help="column of the participants table holding the groups")
    p.add_argument("--groups", type=csv_list, default=None, metavar="A,B",
                   help="the two groups to compare, e.g. patient,control (contrasts A_gt_B "
                        "and B_gt_A); default the column's two values, sorted")
    add_setting(p, "--covariates", "design", kind="list", metavar="C1,C2",
                help="Nuisance covariates: numeric ones mean-centred, those named in "
                     "--categorical dummy-coded; '' for none")
    add_setting(p, "--categorical", "design", kind="list", metavar="C1,C2")
    add_setting(p, "--combine-runs", "design", metavar="mean|ses-L|run-N")
    add_setting(p, "--drop-missing", "design", kind="bool")


def add_inference_options(p: argparse.ArgumentParser, *, own: str = "stats") -> None:
    """The ``stats`` options; ``--n-perm`` and ``--seed`` of section ``own``."""
    add_setting(p, "--n-perm", own, type=int)
    add_setting(p, "--scheme", "stats", choices=["draper-stoneman", "freedman-lane"])
    add_setting(p, "--cluster-p", "stats", type=float)
    add_setting(p, "--connectivity", "stats", type=int, choices=[6, 18, 26])
    add_setting(p, "--tfce", "stats", kind="bool")
    add_setting(p, "--mass-tfce-on", "stats", choices=["t", "z"])
    add_setting(p, "--alpha", "stats", type=float)
    add_setting(p, "--seed", own, type=int)
    add_setting(p, "--metric", "stats", choices=["cfh", "cfh_subject", "vmhc", "ai"])
    add_setting(p, "--batch-size", "stats", type=int)


def run(args: argparse.Namespace) -> int:
    """Run the analysis and print the cluster table."""
    import pandas as pd

    from cfhdask.cluster import dask_client
    from cfhdask.io.store import open_store
    from cfhdask.stats.inference import group_inference, inference_design

    opts = inference_options(args, own=overrides(args, ("n_perm", "seed")))
    st = opts.stats
    so = parse_storage_options(args.storage_options)
    store = open_store(args.store, storage_options=so)
    # every participant, session, group and covariate problem shows here, before any cluster
    inference_design(store, args.participants, opts.design, group=args.group,
                     groups=args.groups, storage_options=so, metric=st.metric)
    with dask_client(**cluster_kwargs(args)) as client:
        res = group_inference(
            store, args.participants, group=args.group, groups=args.groups,
            storage_options=so, n_perm=st.n_perm, seed=st.seed, out_dir=args.out,
            client=client, **opts.keywords())
    p = res.params
    several = sum(1 for m in p["maps"].values() if len(m) > 1)
    print(f"metric {p['metric']}: {len(p['subjects'])} participants {p['n_per_group']} from "
          f"{p['n_maps']} maps"
          + (f" ({several} with several, combined by {p['combine_runs']})" if several else "")
          + f", df {p['df']}, {p['mask']['n_voxels_analysed']} voxels, {p['n_perm']} "
          f"permutations ({'exhaustive' if p['exhaustive'] else 'random'}, {p['scheme']}), "
          f"t > {p['t_threshold']:.3f} (p < {p['cluster_p']})")
    if p["dropped_subjects"]:
        print(f"dropped: {p['dropped_subjects']}")
    for w in p["warnings"]:
        print(f"WARNING: {w}")
    if len(res.clusters):
        from cfhdask.stats.outputs import summary_clusters

        shown = summary_clusters(res.clusters, alpha=st.alpha)
        cols = [c for c in ("contrast", "cluster", "size_voxels", "peak_t", "peak_x", "peak_y",
                            "peak_z", "p_fwe", "mass_p_fwe", "tfce_p_fwe", "aal_peak",
                            "harvard_oxford_peak") if c in shown.columns]
        with pd.option_context("display.width", 200, "display.max_columns", 30,
                               "display.max_colwidth", 40):
            print(shown[cols].to_string(index=False))
        print(f"(significant clusters and the 5 largest others per contrast; all "
              f"{len(res.clusters)} in {args.out}/clusters.tsv)")
    else:
        print("no cluster above the cluster-forming threshold")
    print(f"outputs in {args.out}")
    return 0
