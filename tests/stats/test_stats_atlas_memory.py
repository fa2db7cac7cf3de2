"""Atlases are sampled on the analysis grid without loading them whole (client memory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from cfhdask.grid import ijk_to_xyz, xyz_to_ijk
from cfhdask.stats import atlas as atlas_mod

AFFINE_3MM = np.array([[3.0, 0, 0, -90], [0, 3, 0, -126], [0, 0, 3, -72], [0, 0, 0, 1]])
GRID_3MM = (61, 73, 61)


@pytest.mark.parametrize("name,dtype,slope,inter",
                         [("a.nii.gz", np.int16, 1.0, 0.0), ("b.nii", np.uint8, 0.5, 2.0),
                          ("c.nii.gz", ">f4", 1.0, 0.0)])
def test_sample_volumes_equals_full_read(tmp_path, rng, name, dtype, slope, inter):
    data = rng.integers(0, 100, size=(7, 6, 5, 4)).astype(dtype)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(slope, inter)
    nib.save(img, tmp_path / name)
    img = nib.load(tmp_path / name)
    src = np.stack([rng.integers(0, s, 50) for s in data.shape[:3]], axis=1)
    got = atlas_mod.sample_volumes(img, src)
    np.testing.assert_array_equal(got, np.asarray(img.dataobj)[tuple(src.T)])


def test_aal_on_the_grid_equals_a_full_read():
    img, table = atlas_mod._read_source("aal")
    grid = (20, 24, 20)
    affine = AFFINE_3MM.copy()
    affine[:3, :3] *= 3
    got = atlas_mod.grid_atlas("aal", grid, affine)
    ijk = np.indices(grid).reshape(3, -1).T
    src = xyz_to_ijk(ijk_to_xyz(ijk, affine), img.affine)
    ok = np.all((src >= 0) & (src < np.array(img.shape[:3])), axis=1)
    raw = np.asarray(img.dataobj)[tuple(src[ok].T)]
    lut = {int(v): i for i, v in enumerate(table["index"])}
    ref = np.full(ijk.shape[0], -1, dtype=np.int32)
    ref[ok] = [lut.get(int(v), -1) for v in raw]
    np.testing.assert_array_equal(got.labels.ravel(), ref)
    assert (ref >= 0).sum() > 100


_PEAK = """
import json, resource, sys
import numpy as np
from cfhdask.stats.atlas import grid_atlas
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
a = grid_atlas("harvard_oxford", tuple(json.loads(sys.argv[1])), np.array(json.loads(sys.argv[2])))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mib": (after - before) / 1024, "labelled": int((a.labels >= 0).sum())}))
"""


def test_harvard_oxford_on_the_paper_grid_costs_little_client_memory():
    """The 0.5 GB of probabilities (113 volumes at 1 mm) are streamed, not loaded."""
    out = subprocess.run([sys.executable, "-c", _PEAK, json.dumps(GRID_3MM),
                          json.dumps(AFFINE_3MM.tolist())], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["labelled"] > 20000
    assert res["growth_mib"] < 200, res  # the whole file would be > 500 MiB
