"""The one settings model: shipped file, Dask config layering, errors naming the key."""

from __future__ import annotations

import argparse

import dask
import pytest

from cfhdask import settings as S
from cfhdask.errors import CfhdaskInputError


def test_shipped_yaml_is_generated_from_the_model():
    with open(S.YAML_PATH) as f:
        assert f.read() == S.defaults_yaml(), \
            "cfhdask/cfhdask.yaml is stale: regenerate it with settings.defaults_yaml()"


def test_defaults_are_the_papers_and_neutral():
    s = S.Settings()
    assert s.stats.scheme == "draper-stoneman" and s.stats.cluster_p == 0.001
    assert s.design.covariates == []  # never one study's covariates by default
    assert (s.preprocessing.high_pass, s.preprocessing.low_pass) == (0.01, 0.1)
    assert s.preprocessing.drop_volumes == 10 and s.mask.gm_threshold == 0.2


def test_dask_config_layers_over_the_defaults(monkeypatch):
    with dask.config.set({"cfhdask.stats.n-perm": 321}):  # hyphen or underscore
        assert S.settings().stats.n_perm == 321
    monkeypatch.setenv("DASK_CFHDASK__STATS__SCHEME", "freedman-lane")
    dask.config.refresh()
    try:
        assert S.settings().stats.scheme == "freedman-lane"
    finally:
        monkeypatch.delenv("DASK_CFHDASK__STATS__SCHEME")
        dask.config.refresh()
    assert S.settings().stats.scheme == "draper-stoneman"


def test_bad_values_are_one_line_errors_naming_the_key():
    with dask.config.set({"cfhdask.stats.n_perm": -3}):
        with pytest.raises(CfhdaskInputError, match=r"^Dask config 'cfhdask.stats.n_perm': "):
            S.settings()
    with pytest.raises(CfhdaskInputError, match=r"^--cluster-p: .*less than 1"):
        S.resolve("stats", {"cluster_p": 2.0}, style="cli")
    with pytest.raises(CfhdaskInputError, match=r"^config key 'stats.n_perm': "):
        S.resolve("stats", {"n_perm": 0}, style="yaml")
    with pytest.raises(CfhdaskInputError, match="^n_perm: "):
        S.resolve("stats", {"n_perm": True})  # no silent coercion of a bool to a number
    with pytest.raises(CfhdaskInputError, match="high-pass 0.2 Hz must be below low-pass"):
        S.resolve("preprocessing", {"high_pass": 0.2})
    with pytest.raises(CfhdaskInputError, match="--scheduler"):
        S.resolve("cluster", {"scheduler": "tcp://a:1", "scheduler_file": "f"}, style="cli")


def test_resolve_ignores_none_and_keeps_the_rest():
    st = S.resolve("stats", {"n_perm": 10, "scheme": None})
    assert st.n_perm == 10 and st.scheme == S.settings().stats.scheme


def test_cli_help_shows_the_current_default():
    from cfhdask.cli.options import add_setting

    with dask.config.set({"cfhdask.stats.n_perm": 4242}):
        p = argparse.ArgumentParser()
        add_setting(p, "--n-perm", "stats", type=int)
        assert "4242" in p.format_help()
        assert p.parse_args([]).n_perm is None  # not given: the settings decide later
