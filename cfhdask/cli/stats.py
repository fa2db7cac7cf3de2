"""``cfhdask stats``: two-group permutation inference on a store's CFH maps."""

from __future__ import annotations

import argparse

from cfhdask.cli import add_cluster_options, cluster_kwargs
from cfhdask.errors import CfhdaskInputError


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``stats`` sub-command."""
    p = subparsers.add_parser(
        "stats", help="group comparison of CFH maps by permutation (voxel, cluster, TFCE FWE)",
        description="Two-group GLM with covariates on the subjects' CFH maps of a cohort "
                    "store; permutations (Freedman-Lane or Draper-Stoneman) fanned out on "
                    "Dask; voxel-FWE, cluster-extent/mass FWE and TFCE FWE; clusters "
                    "labelled with AAL and Harvard-Oxford.")
    p.add_argument("store", metavar="STORE", help="cohort store (directory or fsspec URL)")
    p.add_argument("--participants", required=True, metavar="FILE",
                   help="participants table (TSV or CSV) with a participant_id column")
    p.add_argument("--group", required=True, metavar="COLUMN",
                   help="column of the participants table holding the groups")
    p.add_argument("--groups", type=_csv, default=None, metavar="A,B",
                   help="the two groups to compare, e.g. patient,control (contrasts A_gt_B "
                        "and B_gt_A); default the column's two values, sorted")
    p.add_argument("--covariates", type=_csv, default=["age", "sex", "education", "SDS", "SAS"],
                   metavar="C1,C2", help="nuisance covariates (numeric ones mean-centred, "
                                         "others dummy-coded); default age,sex,education,SDS,SAS; "
                                         "'' for none")
    p.add_argument("--n-perm", type=int, default=None,
                   help="permutations incl. the identity (default cfhdask.stats.n-perm, 5000); "
                        "fewer when exhaustive")
    p.add_argument("--scheme", choices=["freedman-lane", "draper-stoneman"],
                   default="freedman-lane",
                   help="permutation scheme: freedman-lane (as randomise/PALM, default) or "
                        "draper-stoneman (permute labels, as SnPM)")
    p.add_argument("--cluster-p", type=float, default=0.001,
                   help="cluster-forming voxel p, one-sided (default 0.001)")
    p.add_argument("--connectivity", type=int, choices=[6, 18, 26], default=18,
                   help="voxel connectivity of clusters (default 18, as SPM/SnPM)")
    p.add_argument("--tfce", action="store_true", help="also TFCE (E=0.5, H=2) with FWE p")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (default 0)")
    p.add_argument("--metric", default="cfh", choices=["cfh", "r_max"],
                   help="per-subject map of the store to analyse (default cfh)")
    p.add_argument("--drop-missing", action="store_true",
                   help="drop (and report) subjects missing from the table or the store, "
                        "or with missing values, instead of stopping")
    p.add_argument("--batch-size", type=int, default=None,
                   help="permutations per Dask task (default cfhdask.stats.batch-size)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--storage-options", default=None, metavar="JSON",
                   help='fsspec options for a remote store URL, e.g. \'{"anon": true}\'')
    add_cluster_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the analysis and print the cluster table."""
    import pandas as pd

    from cfhdask.cluster import dask_client
    from cfhdask.io.store import open_store
    from cfhdask.stats.inference import group_inference

    if args.n_perm is not None and args.n_perm < 1:
        raise CfhdaskInputError(f"--n-perm must be >= 1, got {args.n_perm}")
    from cfhdask.cli.ingest import parse_storage_options

    store = open_store(args.store, storage_options=parse_storage_options(args.storage_options))
    with dask_client(**cluster_kwargs(args)) as client:
        res = group_inference(
            store, args.participants, group=args.group, groups=args.groups,
            covariates=args.covariates, n_perm=args.n_perm, scheme=args.scheme,
            cluster_p=args.cluster_p, connectivity=args.connectivity, tfce=args.tfce,
            seed=args.seed, out_dir=args.out, client=client, metric=args.metric,
            drop_missing=args.drop_missing, batch_size=args.batch_size)
    p = res.params
    print(f"{len(p['subjects'])} subjects {p['n_per_group']}, df {p['df']}, "
          f"{p['mask']['n_voxels_analysed']} voxels, {p['n_perm']} permutations "
          f"({'exhaustive' if p['exhaustive'] else 'random'}, {p['scheme']}), "
          f"t > {p['t_threshold']:.3f} (p < {p['cluster_p']})")
    if p["dropped_subjects"]:
        print(f"dropped: {p['dropped_subjects']}")
    if len(res.clusters):
        from cfhdask.stats.outputs import summary_clusters

        shown = summary_clusters(res.clusters, alpha=0.05)
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
