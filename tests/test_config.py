from __future__ import annotations

import pytest

from medclf.config import (
    RunConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    field_docs,
    load_config,
)
from medclf.errors import ConfigError


def test_defaults_round_trip_through_yaml(tmp_path):
    cfg = RunConfig()
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_overrides_are_parsed_as_yaml_values():
    cfg = apply_overrides(RunConfig(), ["train.epochs=7", "train.lr=3e-4", "model.metadata=[age, sex]"])
    assert cfg.train.epochs == 7
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.model.metadata == ["age", "sex"]


def test_unknown_key_names_the_key_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"train\.epoch.*known keys.*epochs"):
        config_from_dict(RunConfig, {"train": {"epoch": 3}})


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        apply_overrides(RunConfig(), ["train.epochs=many"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(RunConfig(), ["train.epochs"])


def test_relative_paths_in_recipe_resolve_against_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    recipe = tmp_path / "sub" / "r.yaml"
    recipe.write_text("data:\n  root: ../data\n")
    assert load_config(recipe).data.root == str((tmp_path / "data").resolve())


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_field_docs_reads_attribute_docstrings():
    docs = field_docs(TrainConfig)
    assert "early stopping" in docs["monitor"].lower()
    assert set(docs) <= {f for f in TrainConfig.__dataclass_fields__}
