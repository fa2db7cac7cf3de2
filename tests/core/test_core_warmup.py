"""``python -m cfhdask.warmup``: after it, the pipelines' processes compile no kernel.

Each step runs in a fresh process with its own empty ``NUMBA_CACHE_DIR`` (numba's
counters are per process, and the sources' own ``__pycache__`` is not used then).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: A cohort store of band-passed and white-noise subjects, then the CFH of both
#: definitions (the low-rank kernels where they pay) and TFCE permutations, all in this
#: process (a threaded cluster), then numba's counters of every kernel.
PIPELINE = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from cfhstore import make_banded_store
    from distributed import Client, LocalCluster
    from cfhdask.cfh.compute import compute_cfh
    from cfhdask.stats.clusters import tfce_batch, voxel_graph
    from cfhdask.warmup import cache_counts
    store = make_banded_store({store!r}, np.random.default_rng(0))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as lc, Client(lc) as c:
        for counterpart in ("subject", "group"):
            compute_cfh(store.url, counterpart=counterpart, kernel="auto", client=c,
                        show_progress=False)
    graph = voxel_graph(store.ijk, store.grid_shape)
    tfce_batch(graph, np.random.default_rng(1).standard_normal((2, store.n_voxels)), [0.1, 0.1])
    print("COUNTS " + json.dumps(cache_counts()))
""")


def _run(code_or_module: list[str], cache: Path) -> str:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, *code_or_module], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _counts(stdout: str) -> dict[str, list[int]]:
    line = next(x for x in stdout.splitlines() if x.startswith("COUNTS "))
    return json.loads(line.removeprefix("COUNTS "))


@pytest.mark.slow
def test_after_the_warmup_the_pipelines_compile_nothing(tmp_path):
    cache = tmp_path / "numba"
    pipeline = PIPELINE.format(tests=str(REPO / "tests" / "cfh"),
                               store=str(tmp_path / "a.zarr"))
    cold = _counts(_run(["-c", pipeline], tmp_path / "empty"))
    assert sum(m for _, _, m in cold.values()) > 0  # no cache: the pipelines compile
    printed = _run(["-m", "cfhdask.warmup"], cache)
    assert "kernels in" in printed and "compiled" in printed
    warm = _counts(_run(["-c", pipeline.replace("a.zarr", "b.zarr")], cache))
    assert {k: m for k, (_, _, m) in warm.items() if m} == {}
    loaded = {k for k, (_, h, _) in warm.items() if h}
    assert {"cfhdask.cfh.lowrank._strip_pass", "cfhdask.cfh.lowrank_group._candidate_pass",
            "cfhdask.cfh.kernels._pair_sums", "cfhdask.stats.tfce._tfce_one"} <= loaded
