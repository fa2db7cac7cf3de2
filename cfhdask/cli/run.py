"""``cfhdask run study.yaml``: the whole study from one config file."""

from __future__ import annotations

import argparse

from cfhdask.cli.options import add_cluster_options


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run", help="run the whole study from a config file (ingest, CFH, stats, clinical, report)",
        description="Run ingest (and denoising) -> CFH -> group inference -> clinical statistics "
                    "-> HTML report from one YAML config. The config is validated before any "
                    "compute; each stage reuses what an earlier run stored with the same "
                    "parameters. `cfhdask run --schema` prints every key.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="the study YAML file")
    p.add_argument("--schema", action="store_true",
                   help="print the config schema (every key, default and meaning) and exit")
    p.add_argument("--check", action="store_true",
                   help="validate the config, the participants table, its sessions and the "
                        "design, list the inputs found (and those skipped), and exit without "
                        "computing; exit status 1 when a run is skipped")
    add_cluster_options(p)
    p.set_defaults(func=run)


def print_result(res) -> None:
    """Print the cluster table and where the outputs are."""
    cols = [c for c in ("contrast", "cluster", "size_voxels", "peak_t", "peak_x", "peak_y",
                        "peak_z", "p_fwe", "aal_peak", "harvard_oxford_peak")
            if c in res.clusters.columns]
    from cfhdask.stats.outputs import summary_clusters

    print("\nClusters (voxel p < cluster-forming threshold, cluster-level FWE; significant ones "
          "and the 5 largest others per contrast):")
    print(summary_clusters(res.clusters, alpha=0.05)[cols].to_string(index=False)
          if len(res.clusters) else "  none")
    print("\nStage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items()))
    print(f"Store:   {res.store}\nStats:   {res.stats_dir}\nReport:  {res.report}")
    for k, v in res.skipped.items():
        print(f"{'Reused' if k == 'stats' else 'Skipped'}: {k}: {v}")


def run(args: argparse.Namespace) -> int:
    from cfhdask.errors import CfhdaskInputError
    from cfhdask.study.config import load_config, schema_markdown

    if args.schema:
        print(schema_markdown())
        return 0
    if not args.config:
        raise CfhdaskInputError("give the study YAML file (or --schema)")
    cfg = load_config(args.config)
    from cfhdask.cli.options import CLUSTER_FIELDS
    from cfhdask.settings import resolve

    cfg.cluster = resolve("cluster", {field: getattr(args, opt) for opt, field in
                                      CLUSTER_FIELDS.items()}, style="cli", base=cfg.cluster)
    if args.check:
        from cfhdask.study.pipeline import check_study

        plan = check_study(cfg)
        for i in plan.inputs:
            print(f"{i.subject}\t{i.bold}")
        for s in plan.skipped:
            print(f"SKIP {s.subject}\t{s.reason}")
        if plan.design is not None:
            d = plan.design
            several = sum(1 for m in d.maps.values() if len(m) > 1)
            print(f"design: {d.n} participants {d.n_per_group} from {len(plan.inputs)} runs"
                  + (f" ({several} with several, combined by {d.combine_runs})"
                     if several else "")
                  + f", columns {d.columns}, df {d.df}")
        return 1 if plan.skipped else 0
    from cfhdask.study.pipeline import run_study

    res = run_study(cfg)
    print_result(res)
    return 1 if any(k not in ("stats",) for k in res.skipped) else 0
