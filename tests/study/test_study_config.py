"""The study config schema: validated up front, errors name the key."""

from __future__ import annotations

import os
import re

import pytest
import yaml

from cfhdask.errors import CfhdaskInputError
from cfhdask.study.schema import load_config, schema_markdown, validate_config


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
    assert cfg["preprocessing"]["drop_volumes"] == 10
    assert cfg["preprocessing"]["smoothing_fwhm"] == 4.0
    assert (cfg["preprocessing"]["high_pass"], cfg["preprocessing"]["low_pass"]) == (0.01, 0.1)
    assert cfg["mask"]["gm_threshold"] == 0.2
    assert cfg["covariates"] == ["age", "sex", "education", "SDS", "SAS"]
    assert cfg["stats"]["cluster_p"] == 0.001 and cfg["stats"]["connectivity"] == 18
    assert cfg["participants"] == os.path.join(str(base), "participants.tsv")
    assert cfg["store"].endswith(os.path.join("cfhdask_output", "cohort.zarr"))


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
    assert load_config(str(good))["inputs"]["bids_derivatives"] == str(base / "deriv")


def test_readme_documents_every_key():
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
    with open(readme) as f:
        text = f.read()
    block = text.split("<!-- schema:start -->")[1].split("<!-- schema:end -->")[0]
    assert block.strip() == schema_markdown().strip(), \
        "README schema table is stale: paste `cfhdask run --schema`"
