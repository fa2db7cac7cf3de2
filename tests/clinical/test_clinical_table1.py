"""Table 1 against scipy.stats and pingouin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
from scipy import stats

from cfhdask.clinical.table1 import format_p, table1, write_table1
from cfhdask.errors import CfhdaskInputError


def _participants(rng: np.random.Generator, n: int = 30) -> pd.DataFrame:
    """A cohort shaped like the paper's Table 1."""
    rows = []
    for g in ("patient", "control"):
        pat = g == "patient"
        rows.append(pd.DataFrame({
            "participant_id": [f"sub-{g[0].upper()}{i:02d}" for i in range(n)],
            "group": g,
            "age": rng.normal(51 if pat else 50, 6.2, n).round(0),
            "sex": rng.permutation(["M"] * (2 * n // 5) + ["F"] * (n - 2 * n // 5)),
            "education": rng.normal(9.5, 3.8, n).round(0),
            # skewed: Shapiro-Wilk rejects -> Mann-Whitney
            "SAS": rng.exponential(6.0, n) + (43 if pat else 36),
            "SDS": rng.normal(45 if pat else 38.4, 6, n),
            "illness_duration": rng.normal(12.3, 4.9, n) if pat else np.nan,
            "JRS_total": rng.choice([2, 3, 3, 3, 4, 6], n) if pat else np.nan,
        }))
    return pd.concat(rows, ignore_index=True)


def _group(df, var, g):
    return df.loc[df.group == g, var].dropna().to_numpy(float)


def test_table1_tests_match_scipy_and_pingouin(rng):
    df = _participants(rng)
    t1 = table1(df).set_index("variable")  # default: every column but the id and the group
    assert list(t1.index) == [c for c in df.columns if c not in ("participant_id", "group")]
    assert {"age", "sex", "education", "illness_duration", "JRS_total", "SAS",
            "SDS"} <= set(t1.index)
    for var in ("age", "education", "SAS", "SDS"):
        a, b = _group(df, var, "patient"), _group(df, var, "control")
        sw = [stats.shapiro(a).pvalue, stats.shapiro(b).pvalue]
        assert t1.loc[var, "shapiro_p_patient"] == pytest.approx(sw[0], rel=1e-12)
        assert t1.loc[var, "n_patient"] == 30
        if min(sw) >= 0.05:
            ref = pg.ttest(a, b, correction=False)
            assert t1.loc[var, "test"] == "Student t"
            assert t1.loc[var, "statistic"] == pytest.approx(ref["T"].iloc[0], rel=1e-10)
            assert t1.loc[var, "p"] == pytest.approx(ref["p_val"].iloc[0], rel=1e-10)
            assert t1.loc[var, "df"] == 58
            assert t1.loc[var, "patient"] == f"{a.mean():.2f} ({a.std(ddof=1):.2f})"
        else:
            ref = pg.mwu(a, b, alternative="two-sided")
            assert t1.loc[var, "test"] == "Mann-Whitney U"
            assert t1.loc[var, "statistic"] == pytest.approx(ref["U_val"].iloc[0], rel=1e-12)
            assert t1.loc[var, "p"] == pytest.approx(ref["p_val"].iloc[0], rel=1e-10)
            assert t1.loc[var, "summary"] == "median (range)"
    # the skewed variable really goes to Mann-Whitney, a normal one to t
    assert t1.loc["SAS", "test"] == "Mann-Whitney U"
    assert t1.loc["SDS", "test"] == "Student t"
    # chi-square with Yates on the 2x2 sex table
    ct = pd.crosstab(df.group, df.sex)
    ref = stats.chi2_contingency(ct.to_numpy(), correction=True)
    assert t1.loc["sex", "test"] == "chi2 (Yates)"
    assert t1.loc["sex", "statistic"] == pytest.approx(ref.statistic, rel=1e-12)
    assert t1.loc["sex", "p"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert t1.loc["sex", "patient"] == "18/12"  # levels F/M, sorted
    assert t1.loc["sex", "levels"] == "F/M"
    pgx = pg.chi2_independence(df, x="group", y="sex", correction=True)[2]
    assert t1.loc["sex", "p"] == pytest.approx(pgx.loc[0, "pval"], rel=1e-10)


def test_table1_single_group_variables_are_described_without_test(rng):
    df = _participants(rng)
    t1 = table1(df).set_index("variable")
    for var in ("illness_duration", "JRS_total"):
        assert t1.loc[var, "test"] == ""
        assert np.isnan(t1.loc[var, "p"])
        assert t1.loc[var, "control"] == ""
        assert t1.loc[var, "n_control"] == 0
    jrs = _group(df, "JRS_total", "patient")
    # discrete JRS is not normal: median (range) with integer formatting like "3 (2–6)"
    assert t1.loc["JRS_total", "patient"] == (
        f"{int(np.median(jrs))} ({int(jrs.min())}\u2013{int(jrs.max())})")


def test_table1_options_welch_threshold_and_no_yates(rng):
    df = _participants(rng)
    a, b = _group(df, "SDS", "patient"), _group(df, "SDS", "control")
    t1 = table1(df, variables=["SDS", "sex"], equal_var=False, yates=False).set_index("variable")
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert t1.loc["SDS", "test"] == "Welch t"
    assert t1.loc["SDS", "p"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert t1.loc["sex", "test"] == "chi2"
    ct = pd.crosstab(df.group, df.sex).to_numpy()
    assert t1.loc["sex", "p"] == pytest.approx(
        stats.chi2_contingency(ct, correction=False).pvalue, rel=1e-12)
    # a threshold of 0.99 rejects normality everywhere -> Mann-Whitney
    t2 = table1(df, variables=["SDS"], normality_alpha=0.99).set_index("variable")
    assert t2.loc["SDS", "test"] == "Mann-Whitney U"


def test_table1_three_level_categorical_uses_plain_chi2(rng):
    df = _participants(rng)
    df["site"] = rng.choice(["A", "B", "C"], len(df))
    t1 = table1(df, variables=["site"]).set_index("variable")
    ref = stats.chi2_contingency(pd.crosstab(df.group, df.site).to_numpy())
    assert t1.loc["site", "test"] == "chi2"
    assert t1.loc["site", "df"] == 2
    assert t1.loc["site", "p"] == pytest.approx(ref.pvalue, rel=1e-12)


def test_write_table1_roundtrip(tmp_path, rng):
    t1 = table1(_participants(rng))
    path = write_table1(t1, tmp_path / "sub" / "table1.tsv")
    back = pd.read_csv(path, sep="\t")
    assert list(back.columns) == list(t1.columns)
    np.testing.assert_allclose(back["p"].to_numpy(float), t1["p"].to_numpy(float), rtol=1e-5)
    assert not list(tmp_path.rglob(".tmp-*"))  # no temporary file left
    assert format_p(0.0001) == "<0.001" and format_p(0.4812) == "0.481" and format_p(np.nan) == ""


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"group": "diagnosis"}, "'diagnosis' not found"),
    ({"groups": ("patient", "healthy")}, "'healthy' not found"),
    ({"variables": ["age", "IQ"]}, "'IQ' not found"),
    ({"categorical": ["IQ"]}, "'IQ' are not in variables"),
    ({"normality_alpha": 1.5}, "normality_alpha"),
])
def test_table1_bad_input_names_the_field(rng, kwargs, match):
    with pytest.raises(CfhdaskInputError, match=match):
        table1(_participants(rng, n=8), **kwargs)


def test_table1_non_numeric_declared_numeric(rng):
    df = _participants(rng, n=8)
    df["age"] = df["age"].astype(object)
    df.loc[0, "age"] = "fifty"
    with pytest.raises(CfhdaskInputError, match="'age'"):
        table1(df, variables=["age"], categorical=[])
