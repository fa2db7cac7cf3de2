"""Helpers of the cluster tests: study configs and bit-for-bit comparisons of results."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from cfhdask.io.store import METRICS, open_store

#: The ``cfhdask`` command of this environment.
CFHDASK = str(Path(sys.executable).with_name("cfhdask"))


def cli_env(env: dict | None = None) -> dict:
    """This process's environment, ``env`` on top, this environment's ``bin`` on PATH."""
    full = {**os.environ, **(env or {})}
    full["PATH"] = os.path.dirname(CFHDASK) + os.pathsep + full.get("PATH", "")
    return full


def run_cli(*args, env: dict | None = None, timeout: float = 600,
            cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``cfhdask ARGS`` in a real process; its output is captured as text."""
    return subprocess.run([CFHDASK, *map(str, args)], capture_output=True, text=True,
                          env=cli_env(env), timeout=timeout, cwd=cwd)


def start_cli(*args, env: dict | None = None) -> subprocess.Popen:
    """Start ``cfhdask ARGS`` in the background (stdout and stderr piped, text)."""
    return subprocess.Popen([CFHDASK, *map(str, args)], env=cli_env(env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def study_config(cohort, out, **stats) -> dict:
    """A ``study.yaml`` mapping for the tiny cohort (40 permutations)."""
    return {"name": "tiny", "output": str(out),
            "inputs": {"bids_derivatives": str(cohort)},
            "participants": str(os.path.join(cohort, "participants.tsv")),
            "preprocessing": {"drop_volumes": 4},
            "covariates": ["age", "sex"],
            "stats": {"n_perm": 40, "seed": 1, **stats}}


def assert_same_cfh(store, ref, metric: str = "cfh") -> None:
    """Every subject's CFH results (of ``metric``) are identical, bit for bit."""
    store, ref = open_store(str(store)), open_store(str(ref))
    assert store.subjects(metric) == ref.subjects(metric) and ref.subjects(metric)
    for var in METRICS[metric]:
        np.testing.assert_array_equal(store.cfh_maps(var=var).values,
                                      ref.cfh_maps(var=var).values)


def assert_same_stats(stats_dir, ref_dir) -> None:
    """Same statistical maps, null distributions and cluster table, bit for bit."""
    maps = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ref_dir, "*.nii.gz")))
    assert maps and maps == sorted(os.path.basename(p) for p in
                                   glob.glob(os.path.join(stats_dir, "*.nii.gz")))
    for name in maps:
        np.testing.assert_array_equal(
            np.asarray(nib.load(os.path.join(stats_dir, name)).dataobj),
            np.asarray(nib.load(os.path.join(ref_dir, name)).dataobj), err_msg=name)
    for path in glob.glob(os.path.join(ref_dir, "*.npy")):
        np.testing.assert_array_equal(np.load(os.path.join(stats_dir, os.path.basename(path))),
                                      np.load(path))
    pd.testing.assert_frame_equal(pd.read_csv(os.path.join(stats_dir, "clusters.tsv"), sep="\t"),
                                  pd.read_csv(os.path.join(ref_dir, "clusters.tsv"), sep="\t"))
