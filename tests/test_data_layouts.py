"""detect_layout on each layout, and the scanners' view of odd trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from _fixtures_data import class_tree, cxr_tree, ham_tree, msld_tree, write_image
from medclf.data import detect_layout
from medclf.errors import DataError


def test_detects_every_layout(tmp_path: Path) -> None:
    assert detect_layout(class_tree(tmp_path / "f", {"benign": 2, "malignant": 2})) == "folders"
    assert detect_layout(cxr_tree(tmp_path / "cxr")) == "split-folders"
    assert detect_layout(msld_tree(tmp_path / "msld")) == "kfold"
    assert detect_layout(tmp_path / "msld" / "Original" / "FOLDS") == "kfold"
    assert detect_layout(ham_tree(tmp_path / "ham")) == "csv"
    write_image(tmp_path / "flat" / "a_x.jpg")
    assert detect_layout(tmp_path / "flat") == "files"


@pytest.mark.parametrize("name", ["TRAIN", "Train", "training"])
def test_split_folder_names_any_case(tmp_path: Path, name: str) -> None:
    class_tree(tmp_path / name, {"a": 1, "b": 1})
    class_tree(tmp_path / "Validation", {"a": 1, "b": 1})
    assert detect_layout(tmp_path) == "split-folders"


def test_split_csv_in_a_class_tree_does_not_make_it_a_csv_layout(tmp_path: Path) -> None:
    class_tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "split.csv").write_text("path,label,group,split\n")
    assert detect_layout(tmp_path) == "folders"


def test_missing_and_empty_roots(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        detect_layout(tmp_path / "empty")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        detect_layout(f)


def test_class_folders_with_a_table_of_patient_ids(tmp_path: Path) -> None:
    from medclf.data import load_dataset
    from medclf.errors import ConfigError

    class_tree(tmp_path, {"benign": 4, "malignant": 4})
    rows = [f"{c}_{i}.jpg,P{i // 2}{c[0]}" for c in ("benign", "malignant") for i in range(4)]
    (tmp_path / "patients.csv").write_text("image,patient_id\n" + "\n".join(rows) + "\n")
    ds = load_dataset(tmp_path)  # no label column: the class folders give the labels, the table the groups
    assert ds.layout == "csv" and ds.classes == ["benign", "malignant"] and ds.group_rule == "patient_id"
    by_name = dict(zip(ds.records["path"].map(lambda p: Path(p).name), ds.records["label"], strict=True))
    assert by_name["benign_3.jpg"] == "benign" and by_name["malignant_0.jpg"] == "malignant"
    assert ds.records["group"].nunique() == 4 and ds.metadata == {}
    # one folder of images is no class folder: the missing label column is still an error that says so
    flat = tmp_path / "flat"
    class_tree(flat, {"images": 4})
    (flat / "patients.csv").write_text("image,patient_id\nimages_0.jpg,P1\n")
    with pytest.raises(
        ConfigError, match=r"column is the label.*or sort the images into one folder per class"
    ):
        load_dataset(flat)
