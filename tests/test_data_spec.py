"""DatasetSpec: YAML round trip, relative-root rule, validation messages, with_root."""

from __future__ import annotations

from pathlib import Path

import pytest

from medclf.data import DatasetSpec
from medclf.data.spec import compile_capture_regex
from medclf.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_yaml_round_trip(tmp_path: Path) -> None:
    spec = DatasetSpec(
        root=str(tmp_path),
        layout="csv",
        label_column="dx",
        class_map={"NORMAL": "normal"},
        classes=["normal", "x"],
        group_by="lesion_id",
        metadata={"age": "numeric", "sex": "categorical"},
    )
    spec.save(tmp_path / "s.yaml")
    back = DatasetSpec.from_yaml(tmp_path / "s.yaml")
    assert back == spec


def test_relative_root_is_searched_up_the_parent_chain(tmp_path: Path) -> None:
    data = tmp_path / "shared" / "datasets" / "ham"
    data.mkdir(parents=True)
    cfg = tmp_path / "repo" / "configs" / "datasets"
    cfg.mkdir(parents=True)
    (cfg / "a.yaml").write_text(
        "root: ../shared/datasets/ham\n"
    )  # relative to the repo (configs' parent's parent)
    (cfg / "b.yaml").write_text("root: ../../../shared/datasets/ham\n")  # relative to the YAML's own folder
    assert DatasetSpec.from_yaml(cfg / "a.yaml").root == str(data.resolve())
    assert DatasetSpec.from_yaml(cfg / "b.yaml").root == str(data.resolve())
    (cfg / "c.yaml").write_text("root: nowhere/at/all\n")
    assert DatasetSpec.from_yaml(cfg / "c.yaml").root == str((cfg / "nowhere/at/all").resolve())


def test_with_root_keeps_rules(tmp_path: Path) -> None:
    spec = DatasetSpec(root="/a", label_regex="_(x)_", class_map={"x": "y"})
    other = spec.with_root(tmp_path)
    assert (
        other.root == str(tmp_path.resolve())
        and other.label_regex == "_(x)_"
        and other.class_map == {"x": "y"}
    )
    assert spec.root == "/a"


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"layout": "pyramid"}, "layout 'pyramid' is unknown"),
        ({"label_regex": "person"}, "no capture group"),
        ({"group_by": r"regex:person\d+"}, "no capture group"),
        ({"label_regex": "(unclosed"}, "not a valid regular expression"),
        ({"metadata": {"age": "number"}}, "numeric or categorical"),
    ],
)
def test_invalid_fields_are_refused_with_a_fix(fields: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DatasetSpec(root="/x", **fields)


def test_unknown_yaml_key_lists_known_ones(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("root: .\nlabel_col: dx\n")
    with pytest.raises(ConfigError, match=r"unknown field 'label_col'.*label_column"):
        DatasetSpec.from_yaml(p)
    with pytest.raises(ConfigError, match="does not exist"):
        DatasetSpec.from_yaml(tmp_path / "missing.yaml")


def test_capture_regex() -> None:
    assert compile_capture_regex(r"^(person\d+)_", "g").search("person12_virus_3.jpeg").group(1) == "person12"


@pytest.mark.parametrize("name", ["skin_bm", "ham10000", "cxr_pneumonia3", "cxr_pneumonia2"])
def test_shipped_specs_parse(name: str) -> None:
    spec = DatasetSpec.from_yaml(REPO / "configs" / "datasets" / f"{name}.yaml")
    assert spec.name == name and spec.classes
    assert Path(str(spec.root)).is_absolute()
