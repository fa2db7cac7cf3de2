"""The null-check section of the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cfhdask.errors import CfhdaskInputError
from cfhdask.report.nullcheck import (
    null_check_intro,
    null_check_plot,
    null_check_rows,
    read_null_check,
)
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
    text = null_check_intro(got)
    assert "30 participants of group control" in text and "15 and 15, 50 times" in text
    assert "77558760 distinct" in text and "nominal 0.05" in text
    rows = null_check_rows(table)
    assert list(rows["Method"]) == ["Voxel FWE", "Cluster extent FWE", "Cluster mass FWE",
                                    "TFCE FWE", "Uncorrected voxel p"]
    u = summary.set_index("method").loc["uncorrected"]
    last = rows.iloc[-1]
    assert last["Tests finding something"] == f"{u.n_positive} / 100"
    assert last["95% interval"] == f"{u.ci_low:.3f}\u2013{u.ci_high:.3f}"
    assert last["Verdict"] == "anti-conservative"
    fig = null_check_plot(table, 0.05)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(rows["Method"])
    assert any(line.get_xdata()[0] == 0.05 for line in ax.get_lines())  # the nominal line
    with pytest.raises(CfhdaskInputError, match="no null-check outputs"):
        read_null_check(tmp_path / "none")
