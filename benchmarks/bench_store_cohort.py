"""Per-subject store costs at cohort scale: a worker's first read of each subject's series,
and invalidating every subject's maps, this tree against a baseline, in one run.

A store of ``--subjects`` tiny subjects (960 voxels x 30 volumes, each with CFH maps) is
written once, its root history padded as a cohort's grows (``--history`` commands that
each record every subject and an input path per subject, as ingest and cfh do).  Then,
for each tree in turn (``--repeats`` rounds, trees taking turns, each in a fresh process
with ``PYTHONPATH`` on the tree):

* **first read**: CPU ms per subject of ``SeriesReader`` reading 100 voxels of every
  subject once (what a worker pays per subject it has not opened yet);
* **invalidate**: seconds of ``CohortStore.invalidate("cfh", every subject)`` on a fresh
  copy of the store.

Printed: each run, the medians, and the ratios this / baseline.

Usage::

    .venv/bin/python benchmarks/bench_store_cohort.py --subjects 1000 --baseline 3b40328
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _bench_util import REPO, extract_tree  # benchmarks/ is sys.path[0]

CHILD = """
import json, sys, time
from cfhdask.io.store import open_store
url, what = sys.argv[1], sys.argv[2]
st = open_store(url, "r+")
subjects = st.subjects()
if what == "read":
    reader = st.series_reader(subjects)
    t = time.process_time()
    for k in range(len(subjects)):
        reader(k, 0, 100)
    print(json.dumps({"ms": (time.process_time() - t) / len(subjects) * 1000}))
else:
    t = time.perf_counter()
    st.invalidate("cfh", subjects)
    s = time.perf_counter() - t
    assert open_store(url).subjects("cfh") == []
    print(json.dumps({"s": s}))
"""


def make_store(url: str, n: int, history: int) -> int:
    """The store; returns the size of its root document in bytes."""
    import numpy as np

    from cfhdask.io.store import CohortStore

    rng = np.random.default_rng(0)
    mask = np.zeros((12, 14, 10), bool)
    mask[1:-1, 1:-1, 1:-1] = True
    affine = np.array([[-4.0, 0, 0, 22], [0, 4, 0, -28], [0, 0, 4, -20], [0, 0, 0, 1]])
    st = CohortStore.create(url, grid_shape=mask.shape, affine=affine, mask=mask,
                            mask_info={"source": "bench"})
    names = [f"sub-{i:04d}" for i in range(n)]
    for s in names:
        st.write_subject(s, rng.standard_normal((st.n_voxels, 30)).astype(np.float32),
                         {"tr": 2.0, "n_volumes": 30})
        v = rng.standard_normal(st.n_voxels).astype(np.float32)
        st.write_cfh(s, v, np.arange(st.n_voxels), np.tanh(v), {})
    for k in range(history):
        st.append_history("ingest" if k == 0 else "cfh", {
            "subjects": names,
            "inputs": [f"/data/derivatives/fmriprep/{s}/func/{s}_task-rest_space-MNI152NLin2009"
                       f"cAsym_res-2_desc-preproc_bold.nii.gz" for s in names]})
    return os.path.getsize(Path(url, "zarr.json"))


def run(tree: Path, url: str, what: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, url, what], env=env, text=True,
                         capture_output=True, check=True, cwd=tree)  # "" on sys.path: tree
    return next(iter(json.loads(out.stdout.strip().splitlines()[-1]).values()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subjects", type=int, default=1000, help="subjects in the store")
    p.add_argument("--history", type=int, default=4,
                   help="commands in the root history, each listing every subject")
    p.add_argument("--repeats", type=int, default=3, help="rounds, trees taking turns")
    p.add_argument("--baseline", default="main", help="git ref compared with this tree")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-store-cohort-") as tmp:
        trees = {"this": REPO, a.baseline: extract_tree(a.baseline, Path(tmp, "baseline"))}
        master = str(Path(tmp, "master.zarr"))
        size = make_store(master, a.subjects, a.history)
        print(f"{a.subjects} subjects, root document {size // 1024} KB "
              f"({a.history} commands in its history)", flush=True)
        res: dict[tuple[str, str], list[float]] = {}
        for r in range(a.repeats):
            for name, tree in trees.items():
                copy = str(Path(tmp, f"{name}-{r}.zarr"))
                shutil.copytree(master, copy)
                read = run(tree, copy, "read")
                inval = run(tree, copy, "invalidate")
                shutil.rmtree(copy)
                res.setdefault((name, "read"), []).append(read)
                res.setdefault((name, "invalidate"), []).append(inval)
                print(f"round {r + 1} {name:>10s}: first read {read:.2f} ms CPU a subject, "
                      f"invalidate {inval:.2f} s", flush=True)
        med = {k: statistics.median(v) for k, v in res.items()}
        for what, unit in (("read", "ms CPU a subject"), ("invalidate", "s")):
            mine, base = med[("this", what)], med[(a.baseline, what)]
            print(f"{what:>10s}: median this {mine:.2f} {unit}, {a.baseline} {base:.2f}: "
                  f"ratio this/{a.baseline} {mine / base:.2f}")


if __name__ == "__main__":
    main()
