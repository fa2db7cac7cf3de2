"""Client memory of ``cfhdask stats`` on a store: the maps read by the workers vs the client.

Each mode runs in a fresh process with its own 2-worker LocalCluster (worker
processes), on the same store and design, and samples the RSS of the client
process alone (not its workers) while :func:`group_inference` runs:

* ``client-reads``: the client reads the subjects x voxels matrix from the
  store and passes it as an array (what ``stats`` did on a store before:
  maps, their float64 copy, the participant rows and the residuals in the
  client, then scattered to the workers);
* ``workers-read``: the store is passed; the workers read the maps (one
  task per map and voxel chunk), prepare the GLM in worker memory, and the
  client receives the mask, the observed t-map and the null maxima.

Printed: the client's peak RSS above its RSS just before the call, per mode,
their ratio (same run), and the size of one float64 copy of the maps.
The store is a null cohort of ``bench_null_check.py`` (``--store`` folder,
made there when missing), or with ``--synthetic N`` N subjects' smooth random
maps on a box of the 3 mm grid written straight into a store (seconds).

Usage: ``python benchmarks/bench_stats_client_memory.py --store DIR [--synthetic 60]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def _child(mode: str, store_url: str, participants: str, n_perm: int) -> dict:
    import numpy as np
    import pandas as pd
    import psutil
    from distributed import Client, LocalCluster
    from threadpoolctl import threadpool_limits

    from cfhdask.io.store import open_store
    from cfhdask.stats.inference import group_inference

    threadpool_limits(1)
    store = open_store(store_url)
    table = pd.read_csv(participants, sep="\t")
    table["group"] = ["A" if i % 2 == 0 else "B" for i in range(len(table))]
    subjects = list(table.participant_id)
    kw = dict(group="group", covariates=["age", "sex"], n_perm=n_perm, tfce=True,
              atlases=[], scheme="freedman-lane")
    me = psutil.Process()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as lc, Client(lc) as client:
        base = me.memory_info().rss
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], me.memory_info().rss)
                stop.wait(0.01)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        t0 = time.perf_counter()
        if mode == "client-reads":
            Y = np.asarray(store.cfh_maps(subjects).values, dtype=np.float64)
            group_inference(Y, table, client=client, subjects=subjects, ijk=store.ijk,
                            grid_shape=store.grid_shape, affine=store.affine, **kw)
        else:
            group_inference(store, table, client=client, **kw)
        wall = time.perf_counter() - t0
        stop.set()
        thread.join()
        peak[0] = max(peak[0], me.memory_info().rss)
    return {"mode": mode, "base": base, "peak": peak[0], "wall": wall,
            "maps_nbytes": len(subjects) * store.n_voxels * 8, "n_maps": len(subjects),
            "n_voxels": store.n_voxels}


def synthetic_store(root: Path, n: int) -> None:
    """``n`` subjects' smooth random maps on a 40 x 48 x 36 box of the 3 mm grid."""
    import numpy as np
    import pandas as pd
    from scipy import ndimage

    from cfhdask.grid import MNI_3MM_AFFINE, MNI_3MM_SHAPE
    from cfhdask.io.store import CohortStore

    rng = np.random.default_rng(0)
    box = (40, 48, 36)
    mask = np.zeros(MNI_3MM_SHAPE, bool)
    mask[10:10 + box[0], 12:12 + box[1], 12:12 + box[2]] = True
    store = CohortStore.create(str(root / "null.zarr"), grid_shape=MNI_3MM_SHAPE,
                               affine=MNI_3MM_AFFINE, mask=mask,
                               mask_info={"source": "synthetic"})
    ids = [f"sub-C{i + 1:02d}" for i in range(n)]
    for sub in ids:
        vol = ndimage.gaussian_filter(rng.standard_normal(MNI_3MM_SHAPE), 1.0)
        cfh = (vol[tuple(store.ijk.T)] * 3).astype(np.float32)
        store.write_subject(sub, rng.normal(size=(store.n_voxels, 2)).astype(np.float32),
                            {"tr": 2.0})
        store.write_cfh(sub, cfh, np.full(store.n_voxels, -1, np.int32), np.tanh(cfh), {})
    (root / "sim").mkdir(exist_ok=True)
    pd.DataFrame({"participant_id": ids, "group": "control", "age": rng.normal(40, 10, n),
                  "sex": rng.choice(["F", "M"], n)}).to_csv(root / "sim" / "participants.tsv",
                                                           sep="\t", index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, required=True,
                    help="folder of the null cohort (bench_null_check.py --store)")
    ap.add_argument("--grid", default="3mm")
    ap.add_argument("--n-controls", type=int, default=30)
    ap.add_argument("--n-perm", type=int, default=200)
    ap.add_argument("--synthetic", type=int, default=0, metavar="N",
                    help="make the store from N subjects' random maps instead of a cohort")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    zarr_dir, participants = a.store / "null.zarr", a.store / "sim" / "participants.tsv"
    if a.child:
        print(json.dumps(_child(a.child, str(zarr_dir), str(participants), a.n_perm)))
        return
    if not zarr_dir.exists() and a.synthetic:
        a.store.mkdir(parents=True, exist_ok=True)
        synthetic_store(a.store, a.synthetic)
    elif not zarr_dir.exists():
        from distributed import Client, LocalCluster

        sys.path.insert(0, str(Path(__file__).parent))
        from bench_null_check import make_null_cohort

        a.store.mkdir(parents=True, exist_ok=True)
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc, \
                Client(lc) as client:
            make_null_cohort(a.store, a.grid, a.n_controls, client)
    res = {}
    for mode in ("client-reads", "workers-read"):
        out = subprocess.run([sys.executable, __file__, "--store", str(a.store), "--n-perm",
                              str(a.n_perm), "--child", mode], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        res[mode] = json.loads(out.strip().splitlines()[-1])
    r = res["workers-read"]
    print(f"store: {r['n_maps']} maps x {r['n_voxels']} voxels; one float64 copy of the maps "
          f"{r['maps_nbytes'] / 2**20:.1f} MiB; {a.n_perm} permutations, TFCE, 2 worker "
          "processes")
    for mode, v in res.items():
        print(f"{mode:13s}: client peak RSS {v['peak'] / 2**20:.0f} MiB, "
              f"{(v['peak'] - v['base']) / 2**20:.1f} MiB above its RSS before the call; "
              f"wall {v['wall']:.1f} s")
    before = res["client-reads"]["peak"] - res["client-reads"]["base"]
    after = r["peak"] - r["base"]
    print(f"ratio client-reads / workers-read (peak above base): {before / max(after, 1):.1f} "
          "(same run)")


if __name__ == "__main__":
    main()
