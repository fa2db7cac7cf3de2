"""The null-check section of the report."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from cfhdask.errors import CfhdaskInputError
from cfhdask.report.nullcheck import null_check_section, read_null_check
from cfhdask.stats.fwer import fwer_table


def test_section_has_every_method_its_interval_and_figure(tmp_path):
    rng = np.random.default_rng(0)
    positive = {m: rng.random((50, 2)) < r for m, r in
                [("voxel_fwe", 0.05), ("cluster_extent_fwe", 0.04),
                 ("cluster_mass_fwe", 0.05), ("tfce_fwe", 0.05), ("uncorrected", 0.6)]}
    summary = fwer_table(positive, 0.05)
    params = {"alpha": 0.05, "n_participants": 30, "level": "control", "sizes": [15, 15],
              "n_splits": 50, "n_distinct_splits": 77558760, "scheme": "freedman-lane",
              "n_perm_requested": 1000, "cluster_p": 0.001, "interval": "clopper-pearson"}
    summary.to_csv(tmp_path / "null_check.tsv", sep="\t", index=False)
    (tmp_path / "null_check.json").write_text(json.dumps(params))
    table, got = read_null_check(tmp_path)
    html = null_check_section(table, got)
    assert html.startswith('<section id="null-check">')
    for label in ("Voxel FWE", "Cluster extent FWE", "Cluster mass FWE", "TFCE FWE",
                  "Uncorrected voxel p"):
        assert label in html
    u = summary.set_index("method").loc["uncorrected"]
    assert f"{u.n_positive} / 100" in html and f"{u.ci_low:.3f}–{u.ci_high:.3f}" in html
    assert "anti-conservative" in html and "nominal 0.05" in html
    png = html.split('src="data:image/png;base64,')[1].split('"')[0]
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(CfhdaskInputError, match="no null-check outputs"):
        read_null_check(tmp_path / "none")
