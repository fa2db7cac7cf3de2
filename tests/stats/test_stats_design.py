"""Design matrices and their input errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cfhdask.errors import CfhdaskInputError
from cfhdask.io.participants import read_participants
from cfhdask.stats.design import build_design


@pytest.fixture
def table():
    return pd.DataFrame({
        "participant_id": ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05", "sub-06"],
        "group": ["patient", "control", "patient", "control", "patient", "control"],
        "age": [30.0, 40, 50, 35, 45, 41],
        "sex": ["F", "M", "M", "F", "F", "M"],
    })


SUBJ = ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05", "sub-06"]


def test_design_encodes_and_centres(table):
    d = build_design(table, SUBJ, group="group", groups=["patient", "control"],
                     covariates=["age", "sex"])
    assert d.columns == ["intercept", "group[patient]", "age", "sex[M]"]
    np.testing.assert_array_equal(d.x, [1, 0, 1, 0, 1, 0])
    assert abs(d.X[:, 2].mean()) < 1e-12
    np.testing.assert_array_equal(d.X[:, 3], [0, 1, 1, 0, 0, 1])
    assert list(d.contrasts) == ["patient_gt_control", "control_gt_patient"]
    assert d.df == 6 - 4


def test_tsv_and_csv_and_prefix(tmp_path, table):
    table.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    t2 = table.assign(participant_id=table.participant_id.str.removeprefix("sub-"))
    t2.to_csv(tmp_path / "p.csv", index=False)
    for f in ("p.tsv", "p.csv"):
        d = build_design(read_participants(tmp_path / f), SUBJ, group="group",
                         covariates=["age"])
        assert d.groups == ("control", "patient") and d.n == 6
    with pytest.raises(CfhdaskInputError, match="no such file"):
        read_participants(tmp_path / "missing.tsv")


def test_unknown_column(table):
    with pytest.raises(CfhdaskInputError, match=r"unknown column\(s\) \['SDS'\]"):
        build_design(table, SUBJ, group="group", covariates=["age", "SDS"])


def test_missing_values_named_or_dropped(table):
    table.loc[2, "age"] = np.nan
    with pytest.raises(CfhdaskInputError, match="sub-03.*age"):
        build_design(table, SUBJ, group="group", covariates=["age"])
    d = build_design(table, SUBJ, group="group", covariates=["age"], drop_missing=True)
    assert "sub-03" not in d.subjects and "age" in d.dropped["sub-03"]


def test_mismatched_subjects(table):
    subjects = SUBJ[:5] + ["sub-99"]
    with pytest.raises(CfhdaskInputError, match=r"sub-99.*table.*sub-06"):
        build_design(table, subjects, group="group", covariates=["age"])
    d = build_design(table, subjects, group="group", covariates=["age"], drop_missing=True)
    assert d.subjects == SUBJ[:5] and set(d.dropped) == {"sub-99", "sub-06"}


def test_rank_deficient(table):
    table["age2"] = table["age"] * 2
    with pytest.raises(CfhdaskInputError, match="rank deficient.*'age2'"):
        build_design(table, SUBJ, group="group", covariates=["age", "age2"])
    table["const"] = 1.0
    with pytest.raises(CfhdaskInputError, match="'const'"):
        build_design(table, SUBJ, group="group", covariates=["const"])


def test_groups_errors(table):
    table.loc[0, "group"] = "other"
    with pytest.raises(CfhdaskInputError, match="3 group"):
        build_design(table, SUBJ, group="group", covariates=[])
    with pytest.raises(CfhdaskInputError, match="'nope'"):
        build_design(table, SUBJ, group="group", groups=["patient", "nope"], covariates=[])
    d = build_design(table, SUBJ, group="group", groups=["patient", "control"], covariates=[])
    assert "sub-01" in d.dropped and d.n == 5


def test_duplicates_and_no_dof(table):
    with pytest.raises(CfhdaskInputError, match="duplicated"):
        build_design(pd.concat([table, table.iloc[:1]]), SUBJ, group="group", covariates=[])
    small = table.iloc[:3]
    with pytest.raises(CfhdaskInputError):
        build_design(small, SUBJ[:3], group="group", covariates=["age"])
