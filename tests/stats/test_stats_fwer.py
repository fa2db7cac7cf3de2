"""Family-wise error rate under the null (slow): voxel-FWE and cluster-FWE at 0.05."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cfhdask.stats.inference import group_inference

N_DATASETS = 200
SHAPE = (10, 10, 8)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["freedman-lane", "draper-stoneman"])
def test_fwer_under_null_is_nominal(scheme):
    rng = np.random.default_rng(7)
    ijk = np.argwhere(np.ones(SHAPE, bool)) + np.array([5, 20, 20])  # left of the midline
    n = 16
    hits = {"vox": 0, "cluster": 0, "mass": 0}
    logging.getLogger("cfhdask").setLevel(logging.WARNING)
    for d in range(N_DATASETS):
        Y = np.stack([ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0).ravel()
                      for _ in range(n)])
        table = pd.DataFrame({"participant_id": [f"sub-{i + 1:02d}" for i in range(n)],
                              "group": ["a"] * 8 + ["b"] * 8, "age": rng.normal(size=n)})
        res = group_inference(Y, table, group="group", covariates=["age"], n_perm=100,
                              scheme=scheme, cluster_p=0.01, seed=d, ijk=ijk,
                              grid_shape=(61, 73, 61), affine=np.diag([-3.0, 3, 3, 1]) + np.array(
                                  [[0, 0, 0, 90.0], [0] * 4, [0] * 4, [0] * 4]),
                              atlases=None, compute="local")
        c = res.contrasts["a_gt_b"]
        hits["vox"] += bool(c.logp_vox_fwe.max() >= -np.log10(0.05))
        cl = c.clusters
        hits["cluster"] += bool(len(cl) and cl.p_fwe.min() <= 0.05)
        hits["mass"] += bool(len(cl) and cl.mass_p_fwe.min() <= 0.05)
    rates = {k: v / N_DATASETS for k, v in hits.items()}
    margin = 3 * np.sqrt(0.05 * 0.95 / N_DATASETS)  # 3 Monte-Carlo sd, ~0.046
    print(f"FWER under the null ({scheme}, {N_DATASETS} datasets): {rates}")
    for k, r in rates.items():
        assert abs(r - 0.05) <= margin, (k, r)
