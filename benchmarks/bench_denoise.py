"""Peak memory and wall time of denoising one subject: chunked Dask pipeline vs whole-run nilearn.

Writes a synthetic uncompressed 4D NIfTI (default: 2 mm MNI grid, 1200 volumes,
~4.3 GB, as an HCP run) and its ``rp_*.txt``, then runs, each in a fresh
process whose process tree is sampled for memory (psutil, every 50 ms):

* ``chunked``: :func:`cfhdask.prep.pipeline.denoise_graph` (paper order: drop
  10, smooth 4 mm, Friston-24 + WM/CSF/global from the images, detrend,
  band-pass 0.01-0.1 Hz) on the GM-mask voxels, written into a Zarr array, on
  a 1-worker LocalCluster with ``--memory-limit`` (default 4 GiB);
* ``nilearn``: the whole run loaded in memory, ``nilearn.image.smooth_img``,
  masking, tissue means, ``nilearn.signal.clean`` (regress, then filter), saved.

Prints peak RSS of the worker and of all processes, wall times (median of
``--repeats``) and the wall-time ratio chunked / nilearn, measured in the same
run.  ``--quick``: a 31 x 37 x 31 box of the 3 mm grid, 100 volumes (seconds).

Usage::

    python benchmarks/bench_denoise.py [--quick] [--repeats N] [--memory-limit 4GiB]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

TR = 0.72


def write_synthetic(path: str, shape, affine, n_vol: int, seed: int = 0) -> None:
    """Write a float32 4D NIfTI volume batch by volume batch (bounded memory) and its rp file."""
    import nibabel as nib

    hdr = nib.Nifti1Image(np.zeros((1, 1, 1, 1), np.float32), affine).header.copy()
    hdr.set_data_shape((*shape, n_vol))
    hdr.set_data_dtype(np.float32)
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_zooms((*np.abs(np.diag(affine)[:3]), TR))
    hdr.set_data_offset(352)
    with open(path, "wb") as f:
        hdr.write_to(f)
        f.write(b"\0" * (352 - f.tell()))
    mm = np.memmap(path, dtype=np.float32, mode="r+", offset=352, shape=(*shape, n_vol), order="F")
    rng = np.random.default_rng(seed)
    t = np.arange(n_vol, dtype=np.float32)
    slow = np.sin(2 * np.pi * 0.05 * TR * t).astype(np.float32)
    step = 50
    for t0 in range(0, n_vol, step):
        t1 = min(n_vol, t0 + step)
        block = rng.standard_normal((*shape, t1 - t0), dtype=np.float32)
        block += 100.0 + slow[t0:t1] + 0.01 * t[t0:t1]
        mm[..., t0:t1] = block
    mm.flush()
    del mm
    rp = os.path.join(os.path.dirname(path), "rp_sub-01.txt")
    np.savetxt(rp, rng.standard_normal((n_vol, 6)).cumsum(axis=0) * 0.01, fmt="%.8e")


# ------------------------------------------------------------------ children


def child_chunked(bold: str, out: str, memory_limit: str) -> None:
    import dask.array as da
    import zarr
    from distributed import Client, LocalCluster

    from cfhdask.grid import voxel_table
    from cfhdask.inputs import SubjectInput
    from cfhdask.io.nifti import read_header
    from cfhdask.prep.mask import gm_mask
    from cfhdask.prep.pipeline import DenoiseParams, denoise_graph, plan_subject

    header = read_header(bold)
    ijk = voxel_table(gm_mask(header.grid_shape, header.affine), header.affine).ijk
    params = DenoiseParams(drop_volumes=10)
    inp = SubjectInput("sub-01", bold, realign=os.path.join(os.path.dirname(bold),
                                                             "rp_sub-01.txt"))
    with LocalCluster(n_workers=1, threads_per_worker=2, memory_limit=memory_limit,
                      processes=True, host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        t0 = time.perf_counter()
        plan = plan_subject(inp, header, params)
        x = denoise_graph(plan, header, ijk, params)
        target = zarr.create_array(out, shape=x.shape, chunks=(x.chunks[0][0], x.shape[1]),
                                   dtype="float32", overwrite=True)
        client.compute(da.store(x, target, lock=False, compute=False)).result()
        wall = time.perf_counter() - t0
    print(json.dumps({"wall": wall, "n_voxels": int(len(ijk)), "n_time": int(x.shape[1])}))


def child_nilearn(bold: str, out: str) -> None:
    import nibabel as nib
    from _bench_util import nilearn_denoise

    from cfhdask.grid import voxel_table
    from cfhdask.prep.confounds import friston24, tissue_masks
    from cfhdask.prep.mask import gm_mask

    img = nib.load(bold)
    ijk = voxel_table(gm_mask(img.shape[:3], img.affine), img.affine).ijk
    motion = np.loadtxt(os.path.join(os.path.dirname(bold), "rp_sub-01.txt"))
    r, times = nilearn_denoise(bold, ijk, friston24(motion)[10:], drop=10, fwhm=4.0, tr=TR,
                               high_pass=0.01, low_pass=0.1,
                               tissue_masks=tissue_masks(img.shape[:3], img.affine))
    np.save(out, r.T.astype(np.float32))
    print(json.dumps({"wall": times["denoise"]}))


# ---------------------------------------------------------------- measuring


def run_measured(argv: list[str]) -> dict:
    """Run a child; peak RSS of the whole process tree and of its largest process."""
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak_total = peak_single = 0
    done = threading.Event()

    def sample():
        nonlocal peak_total, peak_single
        while not done.is_set():
            try:
                procs = [ps, *ps.children(recursive=True)]
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                peak_total = max(peak_total, sum(rss))
                peak_single = max(peak_single, max(rss, default=0))
            except psutil.Error:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, _ = proc.communicate()
    done.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"child {argv[:2]} failed with status {proc.returncode}")
    res = json.loads(stdout.strip().splitlines()[-1])
    res.update(peak_total=peak_total, peak_single=peak_single)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small: a 31x37x31 box of the 3 mm grid, 100 volumes")
    ap.add_argument("--volumes", type=int, default=None, help="volumes (default 1200; quick 100)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats, median reported (default 1)")
    ap.add_argument("--memory-limit", default="4GiB", help="worker memory limit")
    ap.add_argument("--skip-nilearn", action="store_true", help="do not run the in-memory peer")
    ap.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        kind, *rest = args._child
        if kind == "chunked":
            child_chunked(*rest)
        else:
            child_nilearn(*rest)
        return

    from cfhdask.grid import MNI_2MM_AFFINE, MNI_2MM_SHAPE, MNI_3MM_AFFINE

    if args.quick:  # a central 31 x 37 x 31 box of the 3 mm grid
        shape = (31, 37, 31)
        affine = MNI_3MM_AFFINE.copy()
        affine[:3, 3] = [45.0, -72.0, -30.0]
    else:
        shape, affine = MNI_2MM_SHAPE, MNI_2MM_AFFINE
    n_vol = args.volumes or (100 if args.quick else 1200)
    repeats = args.repeats or 1
    gib = 2.0**30
    with tempfile.TemporaryDirectory(prefix="bench_denoise_") as tmp:
        bold = os.path.join(tmp, "sub-01_task-rest_bold.nii")
        t0 = time.perf_counter()
        write_synthetic(bold, shape, affine, n_vol)
        size = os.path.getsize(bold)
        print(f"data: grid {shape}, {n_vol} volumes, {size / gib:.2f} GiB float32 "
              f"(written in {time.perf_counter() - t0:.1f} s)")
        chunked = [run_measured(["--_child", "chunked", bold, os.path.join(tmp, "out.zarr"),
                                 args.memory_limit]) for _ in range(repeats)]
        c = chunked[-1]
        wall_c = statistics.median(r["wall"] for r in chunked)
        print(f"chunked pipeline ({c['n_voxels']} GM voxels x {c['n_time']} volumes, 1 worker, "
              f"limit {args.memory_limit}): wall {wall_c:.1f} s, peak worker "
              f"{max(r['peak_single'] for r in chunked) / gib:.2f} GiB, peak all processes "
              f"{max(r['peak_total'] for r in chunked) / gib:.2f} GiB")
        if args.skip_nilearn:
            return
        peer = [run_measured(["--_child", "nilearn", bold, os.path.join(tmp, "out.npy")])
                for _ in range(repeats)]
        wall_n = statistics.median(r["wall"] for r in peer)
        peak_n = max(r["peak_total"] for r in peer)
        print(f"nilearn whole run in memory: wall {wall_n:.1f} s, peak {peak_n / gib:.2f} GiB")
        print(f"ratios chunked/nilearn: wall {wall_c / wall_n:.2f}, peak memory (all processes) "
              f"{max(r['peak_total'] for r in chunked) / peak_n:.2f}; data/peak worker "
              f"{size / max(r['peak_single'] for r in chunked):.2f}")


if __name__ == "__main__":
    main()
