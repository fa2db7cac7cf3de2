"""The study config schema: validated up front, errors name the key."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from cfhdask.errors import CfhdaskInputError
from cfhdask.study.config import load_config, schema_markdown, validate_config


@pytest.fixture
def base(tmp_path):
    (tmp_path / "participants.tsv").write_text("participant_id\tgroup\nsub-01\tpatient\n")
    (tmp_path / "deriv").mkdir()
    return tmp_path


def minimal(**extra):
    cfg = {"participants": "participants.tsv", "inputs": {"bids_derivatives": "deriv"}}
    cfg.update(extra)
    return cfg


def test_defaults_are_the_paper(base):
    cfg = validate_config(minimal(), str(base))
    assert cfg.preprocessing.drop_volumes == 10
    assert cfg.preprocessing.smoothing_fwhm == 4.0
    assert (cfg.preprocessing.high_pass, cfg.preprocessing.low_pass) == (0.01, 0.1)
    assert cfg.mask.gm_threshold == 0.2
    assert cfg.covariates == []  # never this one study's: none unless named
    assert cfg.stats.scheme == "draper-stoneman"  # SnPM, as the paper
    assert cfg.stats.cluster_p == 0.001 and cfg.stats.connectivity == 18
    assert cfg.participants == os.path.join(str(base), "participants.tsv")
    assert cfg.store is None and cfg.output == os.path.join(str(base), "cfhdask_output")


def test_defaults_follow_the_users_dask_config(base):
    import dask

    with dask.config.set({"cfhdask.stats.n_perm": 777, "cfhdask.design.covariates": ["age"]}):
        cfg = validate_config(minimal(), str(base))
        assert cfg.stats.n_perm == 777 and cfg.covariates == ["age"]
        assert validate_config(minimal(stats={"n_perm": 5}), str(base)).stats.n_perm == 5
    assert validate_config(minimal(), str(base)).stats.n_perm == 5000


@pytest.mark.parametrize("cfg, key", [
    (minimal(colour="blue"), "colour"),
    (minimal(stats={"n_perms": 10}), "stats.n_perms"),
    (minimal(stats={"n_perm": "many"}), "stats.n_perm"),
    (minimal(stats={"n_perm": True}), "stats.n_perm"),
    (minimal(stats={"scheme": "snpm"}), "stats.scheme"),
    (minimal(stats={"connectivity": 12}), "stats.connectivity"),
    (minimal(participants="nope.tsv"), "participants"),
    (minimal(inputs={"dpabi": "missing_dir"}), "inputs.dpabi"),
    (minimal(groups={"levels": ["a", "b", "c"]}), "groups.levels"),
    (minimal(preprocessing=[1, 2]), "preprocessing"),
    (minimal(stats={"n_perm": -3}), "stats.n_perm"),
    (minimal(preprocessing={"low_pass": 0}), "preprocessing.low_pass"),
    ({"inputs": {"bids_derivatives": "deriv"}}, "participants"),
])
def test_bad_config_names_the_key(base, cfg, key):
    with pytest.raises(CfhdaskInputError, match=re.escape(f"'{key}'")):
        validate_config(cfg, str(base))


def test_exactly_one_input_source(base):
    with pytest.raises(CfhdaskInputError, match="exactly one of"):
        validate_config(minimal(inputs={"bids_derivatives": "deriv", "bold": ["x.nii"]}),
                        str(base))
    with pytest.raises(CfhdaskInputError, match="exactly one of"):
        validate_config(minimal(inputs={}), str(base))


def test_load_config_errors(base):
    with pytest.raises(CfhdaskInputError, match="not found"):
        load_config(str(base / "absent.yaml"))
    bad = base / "bad.yaml"
    bad.write_text("stats: [unclosed\n")
    with pytest.raises(CfhdaskInputError, match="not valid YAML"):
        load_config(str(bad))
    good = base / "study.yaml"
    good.write_text(yaml.safe_dump(minimal()))
    assert load_config(str(good)).inputs.bids_derivatives == str(base / "deriv")


def test_readme_documents_every_key():
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
    with open(readme) as f:
        text = f.read()
    block = text.split("<!-- schema:start -->")[1].split("<!-- schema:end -->")[0]
    assert block.strip() == schema_markdown().strip(), \
        "README schema table is stale: paste `cfhdask run --schema`"
