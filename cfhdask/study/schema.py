"""The ``study.yaml`` schema: every key, its type, default and meaning.

The schema is data (:data:`SCHEMA`); :func:`validate_config` checks a parsed
YAML mapping against it before any compute and fills in defaults, and
:func:`schema_markdown` renders it for the README and ``cfhdask run --schema``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import yaml

from cfhdask.errors import CfhdaskInputError


@dataclass(frozen=True)
class Key:
    """One leaf of the schema."""

    type: tuple[type, ...]
    default: Any
    help: str
    choices: tuple | None = None
    required: bool = False
    path: bool = False  # a file or folder that must exist (relative to the YAML file)


_NUM = (int, float)
_OPT_STR = (str, type(None))
_LIST = (list, tuple)

SCHEMA: dict[str, Any] = {
    "name": Key((str,), "CFH study", "Title of the study, shown in the report."),
    "output": Key((str,), "cfhdask_output",
                  "Output folder (relative to the YAML file): store, CFH maps, stats, report."),
    "store": Key(_OPT_STR, None, "Cohort Zarr store (path or URL); default OUTPUT/cohort.zarr."),
    "storage_options": Key((dict,), {}, "fsspec options for URLs (e.g. {anon: true} for s3)."),
    "inputs": {
        "bold": Key(_LIST, [], "4D NIfTI paths/URLs or glob patterns (plain-file input)."),
        "confounds": Key(_LIST, [], "Confound tables paired with `bold` by subject id."),
        "bids_derivatives": Key(_OPT_STR, None, "fMRIPrep derivatives folder.", path=True),
        "dpabi": Key(_OPT_STR, None, "DPABI working folder (FunImgARCW*, RealignParameter).",
                     path=True),
        "space": Key((str,), "MNI152NLin2009cAsym", "fMRIPrep output space to use."),
        "task": Key((str,), "rest", "BIDS task label."),
        "participant_label": Key(_LIST, [], "Only these subjects (labels without 'sub-')."),
        "tr": Key((*_NUM, type(None)), None, "Repetition time (s) overriding headers/sidecars."),
    },
    "mask": {
        "source": Key((str,), "gm", "'gm' (MNI152 GM probability map shipped with nilearn, "
                                    "resampled to the data) or a mask NIfTI on the data grid."),
        "gm_threshold": Key(_NUM, 0.2, "GM probability threshold (paper: 0.2)."),
    },
    "preprocessing": {
        "denoise": Key((bool,), True, "Denoise while ingesting (false: series used as given)."),
        "drop_volumes": Key((int,), 10, "Initial volumes removed (paper: 10)."),
        "smoothing_fwhm": Key((*_NUM, type(None)), 4.0, "Gaussian FWHM in mm (null: none)."),
        "motion": Key(_OPT_STR, "friston24", "Motion regressors.",
                      choices=("friston24", "6", "none", None)),
        "wm": Key((bool,), True, "Regress the white-matter signal."),
        "csf": Key((bool,), True, "Regress the CSF signal."),
        "global_signal": Key((bool,), True, "Regress the global signal."),
        "detrend": Key((bool,), True, "Remove linear trends."),
        "high_pass": Key((*_NUM, type(None)), 0.01, "High-pass cutoff in Hz (null: none)."),
        "low_pass": Key((*_NUM, type(None)), 0.1, "Low-pass cutoff in Hz (null: none)."),
        "order": Key(_LIST, ["smooth", "regress", "filter"], "Order of the steps."),
    },
    "cfh": {
        "block": Key((int, type(None)), None, "Voxels per side of a correlation block "
                                              "(null: config cfhdask.cfh.block)."),
        "backend": Key(_OPT_STR, None, "Array backend of the kernels "
                       "(null: config cfhdask.cfh.backend, numpy).",
                       choices=("numpy", "cupy", None)),
    },
    "participants": Key((str,), None, "Participants TSV/CSV with participant_id.",
                        required=True, path=True),
    "groups": {
        "column": Key((str,), "group", "Column holding the group of each subject."),
        "levels": Key(_LIST, ["patient", "control"], "The two groups: first minus second "
                                                     "is the first contrast."),
    },
    "covariates": Key(_LIST, ["age", "sex", "education", "SDS", "SAS"],
                      "Nuisance covariates of the GLM (categorical ones are encoded)."),
    "drop_missing": Key((bool,), False, "Drop subjects with missing covariates (reported)."),
    "stats": {
        "n_perm": Key((int,), 5000, "Permutations (exhaustive when fewer exist)."),
        "scheme": Key((str,), "draper-stoneman", "Permutation scheme "
                      "(draper-stoneman as SnPM, freedman-lane as randomise/PALM).",
                      choices=("draper-stoneman", "freedman-lane")),
        "cluster_p": Key(_NUM, 0.001, "Voxel-level cluster-forming p threshold."),
        "connectivity": Key((int,), 18, "Voxel connectivity of clusters.", choices=(6, 18, 26)),
        "tfce": Key((bool,), False, "Also run TFCE (E=0.5, H=2)."),
        "alpha": Key(_NUM, 0.05, "FWE level for significant clusters."),
        "seed": Key((int,), 0, "Seed of the permutations."),
        "batch_size": Key((int, type(None)), None, "Permutations per Dask task."),
    },
    "clinical": {
        "variables": Key(_LIST, ["illness_duration", "JRS_total", "JRS_severity",
                                 "JRS_frequency"],
                         "Clinical variables correlated with cluster CFH in the first group."),
        "table1": Key(_LIST, ["age", "sex", "education", "illness_duration", "JRS_total",
                              "JRS_severity", "JRS_frequency", "SAS", "SDS"],
                      "Variables of Table 1."),
        "normality_alpha": Key(_NUM, 0.05, "Shapiro–Wilk level choosing t vs Mann–Whitney."),
        "methods": Key(_LIST, ["pearson", "spearman"], "Partial correlation methods."),
    },
    "cluster": {
        "scheduler": Key(_OPT_STR, None, "Address of a running Dask scheduler."),
        "scheduler_file": Key(_OPT_STR, None, "Scheduler file of a running Dask cluster."),
        "kind": Key((str,), "local", "Cluster to start when none is given.",
                    choices=("local", "slurm", "pbs", "kubernetes")),
        "n_workers": Key((int, type(None)), None, "Workers of the embedded LocalCluster."),
        "threads_per_worker": Key((int, type(None)), None, "Threads per embedded worker."),
    },
}


def _walk(schema: dict, prefix: str = ""):
    for k, v in schema.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _walk(v, name + ".")
        else:
            yield name, v


def defaults() -> dict:
    """A config mapping holding every default."""
    def build(s):
        return {k: build(v) if isinstance(v, dict) else copy.deepcopy(v.default)
                for k, v in s.items()}
    return build(SCHEMA)


def _check_leaf(name: str, key: Key, value: Any, base_dir: str) -> Any:
    if isinstance(value, bool) and bool not in key.type and int in key.type:
        raise CfhdaskInputError(f"config key '{name}': expected a number, got {value!r}")
    if not isinstance(value, key.type):
        want = "/".join(sorted({t.__name__ for t in key.type}))
        raise CfhdaskInputError(f"config key '{name}': expected {want}, got {value!r}")
    if key.choices is not None and value not in key.choices:
        raise CfhdaskInputError(
            f"config key '{name}': {value!r} is not one of {[c for c in key.choices if c]}")
    if key.path and value is not None and "://" not in str(value):
        full = value if os.path.isabs(value) else os.path.join(base_dir, value)
        if not os.path.exists(full):
            raise CfhdaskInputError(f"config key '{name}': no such file or folder: {full}")
        value = full
    return value


def validate_config(raw: dict | None, base_dir: str = ".") -> dict:
    """Check a study mapping against :data:`SCHEMA` and fill in defaults.

    Parameters
    ----------
    raw : dict
        The parsed YAML.
    base_dir : str
        Folder against which relative paths are resolved (the YAML's folder).

    Returns
    -------
    dict
        The complete config; relative paths made absolute.

    Raises
    ------
    CfhdaskInputError
        Naming the key: unknown key, wrong type, bad choice, missing file,
        missing required key.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise CfhdaskInputError("study config: the top level must be a mapping of keys")

    def merge(schema: dict, given: dict, prefix: str) -> dict:
        out = {}
        for k in given:
            if k not in schema:
                near = ", ".join(sorted(schema))
                raise CfhdaskInputError(
                    f"config: unknown key '{prefix}{k}' (known here: {near})")
        for k, spec in schema.items():
            name = f"{prefix}{k}"
            if isinstance(spec, dict):
                sub = given.get(k) or {}
                if not isinstance(sub, dict):
                    raise CfhdaskInputError(f"config key '{name}': expected a mapping")
                out[k] = merge(spec, sub, name + ".")
            elif k in given:
                out[k] = _check_leaf(name, spec, given[k], base_dir)
            elif spec.required:
                raise CfhdaskInputError(f"config: required key '{name}' is missing ({spec.help})")
            else:
                out[k] = copy.deepcopy(spec.default)
        return out

    cfg = merge(SCHEMA, raw, "")
    inp = cfg["inputs"]
    sources = [bool(inp["bold"]), bool(inp["bids_derivatives"]), bool(inp["dpabi"])]
    if sum(sources) != 1:
        raise CfhdaskInputError(
            "config: give exactly one of 'inputs.bold', 'inputs.bids_derivatives', 'inputs.dpabi'")
    if len(cfg["groups"]["levels"]) != 2:
        raise CfhdaskInputError("config key 'groups.levels': exactly two groups are compared")
    if cfg["cluster"]["scheduler"] and cfg["cluster"]["scheduler_file"]:
        raise CfhdaskInputError("config: give 'cluster.scheduler' or 'cluster.scheduler_file', "
                                "not both")
    out = cfg["output"]
    cfg["output"] = out if "://" in out or os.path.isabs(out) else os.path.join(base_dir, out)
    if cfg["store"] is None:
        cfg["store"] = os.path.join(cfg["output"], "cohort.zarr")
    elif "://" not in cfg["store"] and not os.path.isabs(cfg["store"]):
        cfg["store"] = os.path.join(base_dir, cfg["store"])
    return cfg


def load_config(path: str) -> dict:
    """Read and validate a ``study.yaml`` file."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError as exc:
        raise CfhdaskInputError(f"study config not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise CfhdaskInputError(f"study config {path} is not valid YAML: {exc}") from exc
    return validate_config(raw, base_dir=os.path.dirname(os.path.abspath(path)))


def schema_markdown() -> str:
    """The schema as a Markdown table (for the README and ``cfhdask run --schema``)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, key in _walk(SCHEMA):
        default = "(required)" if key.required else yaml.safe_dump(
            key.default, default_flow_style=True).strip().removesuffix("...").strip()
        choices = f" One of {', '.join(str(c) for c in key.choices if c is not None)}." \
            if key.choices else ""
        rows.append(f"| `{name}` | `{default}` | {key.help}{choices} |")
    return "\n".join(rows)
