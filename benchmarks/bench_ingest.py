"""Ingest throughput: NIfTI -> Zarr cohort store vs a plain nibabel load + np.save.

Writes a few synthetic BOLD images on the paper's 3 mm MNI grid, then times
(medians of repeats, same process, same files):

* ``cfhdask.ingest`` into a fresh store (``gm`` mask), on an embedded
  LocalCluster (validation, masking, float32, compressed chunked Zarr);
* the peer: ``nibabel.load(...).get_fdata(dtype=float32)`` masked by the same
  ``gm`` mask and ``np.save`` per file, one after another.

Throughput is MB of (uncompressed) NIfTI data per second.  Prints the ratio
cfhdask / peer (> 1: cfhdask is faster).  ``--quick`` runs a tiny case.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from cfhdask.cluster import dask_client
from cfhdask.grid import MNI_3MM_AFFINE, MNI_3MM_SHAPE
from cfhdask.prep.ingest import ingest
from cfhdask.prep.mask import gm_mask


def make_inputs(folder: Path, n_subjects: int, n_vol: int, shape, affine) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for s in range(n_subjects):
        data = (1000 + 50 * rng.standard_normal((*shape, n_vol))).astype(np.int16)
        p = folder / f"sub-{s + 1:02d}_task-rest_bold.nii.gz"
        img = nib.Nifti1Image(data, affine)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, p)
        paths.append(str(p))
    return paths


def peer(paths: list[str], mask: np.ndarray, out: Path) -> None:
    for i, p in enumerate(paths):
        data = nib.load(p).get_fdata(dtype=np.float32)
        np.save(out / f"{i}.npy", data[mask])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    ap.add_argument("--subjects", type=int, default=4, help="images per repeat")
    ap.add_argument("--volumes", type=int, default=120, help="volumes per image")
    ap.add_argument("--repeats", type=int, default=3, help="repeats (median reported)")
    ap.add_argument("--n-workers", type=int, default=None, help="LocalCluster workers")
    args = ap.parse_args()
    shape, affine = MNI_3MM_SHAPE, MNI_3MM_AFFINE
    if args.quick:
        shape = (31, 37, 31)
        affine = np.array([[-6.0, 0, 0, 90], [0, 6.0, 0, -126], [0, 0, 6.0, -72], [0, 0, 0, 1]])
        args.subjects, args.volumes, args.repeats = 2, 20, 2
    tmp = Path(tempfile.mkdtemp(prefix="cfhdask-bench-ingest-"))
    try:
        paths = make_inputs(tmp, args.subjects, args.volumes, shape, affine)
        mb = sum(int(np.prod(nib.load(p).shape)) * 2 for p in paths) / 1e6  # int16 on disk
        mask = gm_mask(shape, affine)
        t_ours, t_peer = [], []
        with dask_client(n_workers=args.n_workers) as client:
            for r in range(args.repeats):
                out = tmp / f"store-{r}.zarr"
                t0 = time.perf_counter()
                ingest(paths, str(out), client=client)
                t_ours.append(time.perf_counter() - t0)
                shutil.rmtree(out)
                npy = tmp / f"npy-{r}"
                npy.mkdir()
                t0 = time.perf_counter()
                peer(paths, mask, npy)
                t_peer.append(time.perf_counter() - t0)
                shutil.rmtree(npy)
        ours, theirs = statistics.median(t_ours), statistics.median(t_peer)
        print(f"grid {shape}, {args.subjects} images x {args.volumes} volumes "
              f"({mb:.1f} MB int16), mask {int(mask.sum())} voxels, {args.repeats} repeats")
        print(f"cfhdask ingest       : {ours:7.2f} s  {mb / ours:8.1f} MB/s")
        print(f"nibabel + np.save    : {theirs:7.2f} s  {mb / theirs:8.1f} MB/s")
        print(f"throughput ratio cfhdask/peer: {theirs / ours:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
