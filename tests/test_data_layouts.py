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
