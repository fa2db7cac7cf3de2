"""The null-check: split enumeration, FWER arithmetic by hand, errors, workers, CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from cfhdask.cli import main
from cfhdask.errors import CfhdaskInputError
from cfhdask.stats.fwer import (
    binomial_interval,
    found_by_method,
    fwer_table,
    rule_level,
    split_p_values,
)
from cfhdask.stats.nullcheck import null_check
from cfhdask.stats.results import fwe_p
from cfhdask.stats.splits import check_sizes, exceed_counts, make_splits, n_distinct_splits


def _as_sets(labels):
    return {(frozenset(np.flatnonzero(r == 1)), frozenset(np.flatnonzero(r == 0)))
            for r in labels}


def test_tiny_split_enumeration_by_hand():
    # 4 participants into 2 + 2: {01|23}, {02|13}, {03|12}; A holds participant 0
    assert n_distinct_splits(4, (2, 2)) == 3
    got = make_splits(4, (2, 2), 3, seed=5)
    assert _as_sets(got) == {(frozenset({0, 1}), frozenset({2, 3})),
                             (frozenset({0, 2}), frozenset({1, 3})),
                             (frozenset({0, 3}), frozenset({1, 2}))}
    # 5 into 2 + 2: choose the 4 used (5 ways) x 3 splits of them; 5 into 1 + 2: 5 x 3 x 2
    assert n_distinct_splits(5, (2, 2)) == 15
    assert n_distinct_splits(5, (1, 2)) == 30
    all30 = make_splits(5, (1, 2), 30, seed=1)
    assert len(_as_sets(all30)) == 30
    assert ((all30 == 1).sum(1) == 1).all() and ((all30 == 0).sum(1) == 2).all()
    assert ((all30 == -1).sum(1) == 2).all()
    assert n_distinct_splits(3, (2, 2)) == 0


@pytest.mark.parametrize("n,sizes", [(12, (6, 6)), (40, (20, 20))])  # listed / drawn
def test_splits_seeded_distinct_prefix_stable(n, sizes):
    a = make_splits(n, sizes, 40, seed=3)
    assert len(_as_sets(a)) == 40
    np.testing.assert_array_equal(make_splits(n, sizes, 15, seed=3), a[:15])
    np.testing.assert_array_equal(make_splits(n, sizes, 40, seed=3), a)
    assert not np.array_equal(make_splits(n, sizes, 40, seed=4), a)
    assert (a[:, 0] == 1).all()  # equal sizes: canonical side


def test_size_errors_say_what_exists():
    with pytest.raises(CfhdaskInputError, match=r"has 5 participant\(s\).*too few for "
                                                r"pseudo-groups of 3 and 3"):
        check_sizes(5, (3, 3), 1, what="group 'control'")
    with pytest.raises(CfhdaskInputError, match=r"--n-splits 4: only 3 distinct split\(s\) "
                                                r"of the 4 participants"):
        check_sizes(4, (2, 2), 4, what="group 'control'")
    assert check_sizes(4, (2, 2), 3, what="g") == 3
    with pytest.raises(CfhdaskInputError, match="no degree of freedom"):
        check_sizes(10, (1, 1), 1, what="g", n_nuisance=3)


def test_binomial_intervals_against_scipy():
    # Clopper-Pearson at 0 successes by hand: upper = 1 - 0.025 ** (1 / n)
    lo, hi = binomial_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.1)
    for k, n in [(1, 20), (50, 1000), (98, 2000), (20, 20)]:
        for method, ref in [("clopper-pearson", "exact"), ("wilson", "wilson")]:
            want = sstats.binomtest(k, n).proportion_ci(0.95, method=ref)
            np.testing.assert_allclose(binomial_interval(k, n, 0.95, method),
                                       (want.low, want.high), rtol=1e-9, atol=1e-12)


def test_rule_level_by_hand():
    # p = count / N < alpha  <=>  count <= ceil(alpha N) - 1
    assert rule_level(0.05, 1000) == pytest.approx(0.049)
    assert rule_level(0.05, 100) == pytest.approx(0.04)
    assert rule_level(0.05, 41) == pytest.approx(2 / 41)


def test_fwer_arithmetic_by_hand():
    n_perm = np.array([100, 100, 100, 100])
    count = np.zeros((4, 2, 4), dtype=np.int64)
    observed = np.ones((4, 2, 4))
    count[:, :, 0] = [[1, 50], [20, 4], [5, 90], [60, 70]]  # p 0.01 .5 / .2 .04 / .05 .9 ...
    count[:, :, 1] = [[1, 1], [99, 99], [99, 99], [99, 99]]
    observed[0, :, 1] = 0.0  # no cluster at all: nothing found whatever p says
    count[:, :, 2] = count[:, :, 0]
    count[:, :, 3] = 100
    p = split_p_values(count, n_perm)
    assert p[1, 1, 0] == pytest.approx(0.04)
    observed[:, :, 0] = [[5.0, 3.0], [2.0, 4.5], [1.0, 1.0], [4.1, 0.5]]
    pos = found_by_method(p, observed, np.full(4, 4.0), alpha=0.05, tfce=True)
    np.testing.assert_array_equal(pos["voxel_fwe"], [[1, 0], [0, 1], [0, 0], [0, 0]])
    assert not pos["cluster_extent_fwe"].any()
    np.testing.assert_array_equal(pos["uncorrected"], [[1, 0], [0, 1], [0, 0], [1, 0]])
    tab = fwer_table(pos, 0.05).set_index("method")
    v = tab.loc["voxel_fwe"]
    assert (v.n_tests, v.n_positive, v.fwer, v.fwer_first, v.rate_either) == (8, 2, 0.25,
                                                                              0.25, 0.5)
    assert tab.loc["cluster_extent_fwe", "fwer"] == 0.0
    assert tab.loc["cluster_extent_fwe", "verdict"] == "within"  # [0, 0.37] holds 0.05
    assert tab.loc["uncorrected", "fwer"] == pytest.approx(3 / 8)
    assert tab.loc["uncorrected", "verdict"] == "anti-conservative"
    assert list(tab.index) == ["voxel_fwe", "cluster_extent_fwe", "cluster_mass_fwe",
                               "tfce_fwe", "uncorrected"]
    assert "tfce_fwe" not in found_by_method(p, observed, np.full(4, 4.0), 0.05, tfce=False)


def test_exceed_counts_are_fwe_p_numerators(rng):
    null = rng.standard_normal((200, 2, 4))
    null[:, :, 1] = rng.integers(0, 5, (200, 2))  # integer sizes: ties
    obs = null[7] + 0.0
    counts = exceed_counts(null, obs)
    for i in range(2):
        for j in range(4):
            assert counts[i, j] / 200 == fwe_p(null[:, i, j], obs[i, j])
            assert counts[i, j] == (null[:, i, j] >= obs[i, j]).sum()


def test_same_result_any_workers_and_batches(null_cohort, local_client):
    store, participants = null_cohort
    kw = dict(group="group", level="control", n_splits=6, n_perm=40, seed=2,
              covariates=["age", "sex"], tfce=True, scheme="freedman-lane")
    ref = null_check(store, participants, compute="local", **kw)
    got = null_check(store, participants, client=local_client, batch_size=16, **kw)
    np.testing.assert_array_equal(got.p_values, ref.p_values)
    np.testing.assert_array_equal(got.observed, ref.observed)
    pd.testing.assert_frame_equal(got.summary, ref.summary)
    assert ref.params["sizes"] == [10, 10] and ref.params["n_splits"] == 6
    assert ref.params["n_distinct_splits"] == math.comb(20, 10) // 2
    assert (ref.p_values > 0).all() and (ref.p_values <= 1).all()
    # the attainable level of the continuous max t is the rule's; ties only lower the others
    att = ref.summary.set_index("method")["attainable"].drop("uncorrected")
    assert att["voxel_fwe"] == pytest.approx(rule_level(0.05, 40)) == 1 / 40
    assert ((att >= 0) & (att <= 1 / 40 + 1e-12)).all()


def test_cli_null_check(null_cohort, local_client, tmp_path, capsys):
    store, participants = null_cohort
    out = tmp_path / "nc"
    argv = ["null-check", store.url, "--participants", participants, "--group", "group",
            "--level", "control", "--sizes", "6,6", "--n-splits", "5", "--n-perm", "20",
            "--covariates", "age", "--scheme", "draper-stoneman", "--tfce", "--out", str(out),
            "--scheduler", local_client.scheduler.address, "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "5 splits of the 20 participants" in printed and "voxel_fwe" in printed
    summary = pd.read_csv(out / "null_check.tsv", sep="\t")
    assert list(summary.method) == ["voxel_fwe", "cluster_extent_fwe", "cluster_mass_fwe",
                                    "tfce_fwe", "uncorrected"]
    assert (summary.n_tests == 10).all()
    assert ((summary.ci_low <= summary.fwer) & (summary.fwer <= summary.ci_high)).all()
    splits = pd.read_csv(out / "null_check_splits.tsv", sep="\t")
    assert len(splits) == 10 and set(splits.n_a) == {6}
    assert (out / "null_check.json").exists()


def test_cli_too_many_splits_is_one_line(null_cohort, tmp_path, capsys):
    store, participants = null_cohort
    argv = ["null-check", store.url, "--participants", participants, "--group", "group",
            "--level", "control", "--sizes", "2,2", "--n-splits", "100000", "--out",
            str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"only {math.comb(20, 4) * 3} distinct split(s)" in err
    assert not (tmp_path / "x").exists()
    assert main([*argv[:-6], "--level", "patient", "--out", str(tmp_path / "x")]) == 2
    assert "no participant of group 'patient'" in capsys.readouterr().err
