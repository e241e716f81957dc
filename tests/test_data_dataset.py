"""load_dataset on every layout (small generated trees), label/group/metadata rules, and bad input."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from _fixtures_data import class_tree, cxr_tree, dicom_bytes, ham_tree, msld_tree, write_image
from medclf.data import DatasetSpec, load_dataset, resolve_spec
from medclf.errors import ConfigError, DataError


def test_class_folders_and_contract_columns(tmp_path: Path) -> None:
    class_tree(tmp_path, {"benign": 3, "malignant": 2})
    ds = load_dataset(tmp_path)
    assert ds.layout == "folders" and ds.classes == ["benign", "malignant"]
    assert list(ds.records.columns) == ["path", "label", "group"]
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in ds.records["path"])
    assert ds.records["group"].tolist() == [Path(p).stem for p in ds.records["path"]]  # no groups: own stem
    assert ds.metadata == {} and ds.bad_files == []


def test_same_stem_in_two_classes_is_two_groups(tmp_path: Path) -> None:
    write_image(tmp_path / "a" / "10.jpg", seed=1)
    write_image(tmp_path / "b" / "10.jpg", seed=2)
    ds = load_dataset(tmp_path)
    assert ds.records["group"].nunique() == 2


def test_msld_folds_and_augmented_only_in_own_train(tmp_path: Path) -> None:
    msld_tree(tmp_path, n_per_class=5, folds=3)
    ds = load_dataset(tmp_path)
    r = ds.records
    assert ds.layout == "kfold" and sorted(r["fold"].unique()) == [0, 1, 2]
    assert {"split", "fold", "augmented"} <= set(r.columns)
    aug = r[r["augmented"]]
    assert len(aug) > 0 and (aug["split"] == "train").all()
    for _, row in aug.iterrows():  # fold{k}_AUG -> fold k-1 only
        assert f"fold{row['fold'] + 1}_AUG" in row["path"]
    # each original image appears once per fold, and within a fold in exactly one split
    orig = r[~r["augmented"]]
    assert (orig.groupby("group")["fold"].nunique() == 3).all()
    assert (orig.groupby(["fold", "group"])["split"].nunique() == 1).all()
    no_aug = load_dataset(DatasetSpec(root=str(tmp_path), augmented=False))
    assert not no_aug.records["augmented"].any()


def test_ham_csv_metadata_types_and_missing(tmp_path: Path) -> None:
    ham_tree(tmp_path)
    ds = load_dataset(tmp_path)
    r = ds.records
    assert ds.layout == "csv" and ds.group_rule == "lesion_id"
    assert ds.metadata == {
        "dx_type": "categorical",
        "age": "numeric",
        "sex": "categorical",
        "localization": "categorical",
    }
    assert r["age"].dtype == "float64" and math.isnan(r.loc[3, "age"]) and r.loc[0, "age"] == 30.0
    assert r.loc[5, "sex"] is None  # 'unknown' is missing
    assert r["group"].nunique() == 6 and r.groupby("group").size().max() == 2
    assert Path(r.loc[0, "path"]).name == "ISIC_0000000.jpg"  # extension resolved


def test_csv_with_bom_other_columns_extra_and_explicit_spec(tmp_path: Path) -> None:
    for i in range(4):
        write_image(tmp_path / "pics" / f"img {i}.png", seed=i)
    text = "\ufeffFile,Diagnosis,Patient,Extra\n" + "".join(
        f"img {i}.png,{'a' if i % 2 else 'b'},p{i // 2},{i}\n" for i in range(4)
    )
    (tmp_path / "labels.csv").write_text(text, encoding="utf-8")
    spec = DatasetSpec(
        root=str(tmp_path),
        layout="csv",
        image_column="File",
        label_column="Diagnosis",
        group_by="Patient",
        image_dir="pics",
        metadata=["Extra"],
    )
    ds = load_dataset(spec)
    assert ds.records["group"].tolist() == ["p0", "p0", "p1", "p1"]
    assert ds.metadata == {"Extra": "numeric"}
    with pytest.raises(ConfigError, match=r"label column 'dx' is not in the CSV \(columns: File, Diagnosis"):
        load_dataset(DatasetSpec(root=str(tmp_path), layout="csv", image_column="File", label_column="dx"))


def test_cxr_names_three_classes_and_binary_merge(tmp_path: Path) -> None:
    cxr_tree(tmp_path)
    three = DatasetSpec(
        root=str(tmp_path),
        label_regex="_(bacteria|virus)_",
        class_map={"NORMAL": "normal", "bacteria": "bacterial", "virus": "viral"},
        classes=["normal", "bacterial", "viral"],
        group_by=r"regex:^(person\d+|IM-\d+)",
    )
    ds = load_dataset(three)
    counts = ds.records["label"].value_counts()
    assert ds.classes == ["normal", "bacterial", "viral"]
    assert counts["normal"] == 12 and counts["bacterial"] == 8 and counts["viral"] == 8
    row = ds.records[ds.records["path"].str.endswith("person3_bacteria_17.jpeg")].iloc[0]
    assert row["label"] == "bacterial" and row["group"] == "person3"
    assert ds.records["group"].nunique() == 6 + 8
    binary = DatasetSpec(root=str(tmp_path), class_map={"NORMAL": "normal", "PNEUMONIA": "pneumonia"})
    b = load_dataset(binary)
    assert b.classes == ["normal", "pneumonia"] and (b.records["label"] == "pneumonia").sum() == 16
    merged = DatasetSpec(
        root=str(tmp_path),
        label_regex="_(bacteria|virus)_",
        class_map={"bacteria": "pneumonia", "virus": "pneumonia"},
    )
    assert set(load_dataset(merged).records["label"]) == {"NORMAL", "pneumonia"}


def test_group_regex_non_matching_files_are_their_own_group(tmp_path: Path) -> None:
    cxr_tree(tmp_path)
    ds = load_dataset(DatasetSpec(root=str(tmp_path), group_by=r"regex:^(person\d+)_"))
    normal = ds.records[ds.records["label"] == "NORMAL"]
    assert normal["group"].tolist() == [Path(p).stem for p in normal["path"]]


def test_subset_and_unknown_label(tmp_path: Path) -> None:
    class_tree(tmp_path, {"a": 2, "b": 2, "c": 2})
    ds = load_dataset(DatasetSpec(root=str(tmp_path), subset=["c", "a"]))
    assert ds.classes == ["c", "a"] and ds.dropped == 2 and len(ds) == 4
    with pytest.raises(DataError, match=r"label 'c' is not one of the classes \(a, b\).*class_map"):
        load_dataset(DatasetSpec(root=str(tmp_path), classes=["a", "b"]))
    skipped = load_dataset(DatasetSpec(root=str(tmp_path), classes=["a", "b"]), skip_bad=True)
    assert len(skipped) == 4 and len(skipped.bad_files) == 2


def test_files_layout_needs_label_regex(tmp_path: Path) -> None:
    write_image(tmp_path / "x_cat_1.jpg")
    write_image(tmp_path / "x_dog_1.jpg", seed=2)
    write_image(tmp_path / "x_1.jpg", seed=3)
    with pytest.raises(ConfigError, match="label_regex"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match=r"x_1\.jpg: file name does not match label_regex"):
        load_dataset(DatasetSpec(root=str(tmp_path), label_regex="_(cat|dog)_"))
    ds = load_dataset(DatasetSpec(root=str(tmp_path), label_regex="_(cat|dog)_"), skip_bad=True)
    assert ds.classes == ["cat", "dog"] and len(ds.bad_files) == 1


def test_dicom_in_class_folders(tmp_path: Path) -> None:
    import numpy as np

    arr = np.tile(np.arange(0, 4096, 128, dtype=np.uint16), (4, 1))
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "x.dcm").write_bytes(dicom_bytes(arr))
    ds = load_dataset(tmp_path)
    assert len(ds) == 2


# -- bad input ----------------------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; fix `root:`"):
        load_dataset(DatasetSpec(root=str(tmp_path / "gone")))


def test_empty_class_folder(tmp_path: Path) -> None:
    class_tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match=r"/c: class folder contains no images.*--skip-bad"):
        load_dataset(tmp_path)
    ds = load_dataset(tmp_path, skip_bad=True)
    assert ds.classes == ["a", "b"] and ds.bad_files[0][0].endswith("/c")


def test_csv_row_with_missing_image_names_the_row(tmp_path: Path) -> None:
    ham_tree(tmp_path)
    (tmp_path / "images" / "ISIC_0000004.jpg").unlink()
    with pytest.raises(
        DataError, match=r"HAM10000_metadata.csv row 6 \(image_id=ISIC_0000004\): no image file"
    ):
        load_dataset(tmp_path)
    ds = load_dataset(tmp_path, skip_bad=True)
    assert len(ds) == 11 and "row 6" in ds.bad_files[0][0]


def test_csv_short_row_and_bad_number(tmp_path: Path) -> None:
    ham_tree(tmp_path)
    csv = tmp_path / "HAM10000_metadata.csv"
    lines = csv.read_text().splitlines()
    lines[2] = "HAM_0000000,ISIC_0000001,nv"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="row 3: has 3 cells but the header has 7"):
        load_dataset(tmp_path)
    lines[2] = "HAM_0000000,ISIC_0000001,nv,histo,forty,male,back"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"row 3 .*'age' is numeric but holds 'forty'"):
        load_dataset(DatasetSpec(root=str(tmp_path), metadata={"age": "numeric"}))


def test_unreadable_image_is_named_and_skippable(tmp_path: Path) -> None:
    class_tree(tmp_path, {"a": 2, "b": 2})
    bad = tmp_path / "a" / "broken.jpg"
    bad.write_text("hello")
    empty = tmp_path / "b" / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"broken\.jpg: not an image: a text file"):
        load_dataset(tmp_path)
    ds = load_dataset(tmp_path, skip_bad=True)
    assert len(ds) == 4 and sorted(Path(p).name for p, _ in ds.bad_files) == ["broken.jpg", "empty.png"]
    assert len(load_dataset(tmp_path, skip_bad=True, verify="none")) == 6


def test_symlink_loop_and_unicode_paths(tmp_path: Path) -> None:
    class_tree(tmp_path / "d", {"ä b": 2, "c d": 2})
    os.symlink(tmp_path / "d" / "loop2.jpg", tmp_path / "d" / "ä b" / "loop1.jpg")
    os.symlink(tmp_path / "d" / "ä b" / "loop1.jpg", tmp_path / "d" / "loop2.jpg")
    os.symlink(tmp_path / "d", tmp_path / "d" / "c d" / "again")  # directory loop: not followed
    ds = load_dataset(tmp_path / "d", skip_bad=True)
    assert ds.classes == ["c d", "ä b"] and len(ds) == 4
    assert "symbolic link loop" in ds.bad_files[0][1]


def test_dataset_yaml_in_folder_is_used(tmp_path: Path) -> None:
    cxr_tree(tmp_path)
    (tmp_path / "dataset.yaml").write_text("root: .\nclass_map: {NORMAL: normal, PNEUMONIA: sick}\n")
    assert load_dataset(tmp_path).classes == ["normal", "sick"]


def test_class_counts(tmp_path: Path) -> None:
    cxr_tree(tmp_path)
    counts = load_dataset(tmp_path).class_counts()
    assert isinstance(counts, pd.DataFrame) and counts.loc["train", "NORMAL"] == 12


def test_spec_rules_on_another_folder_read_it_in_its_own_layout(tmp_path: Path) -> None:
    home = tmp_path / "site_a"
    home.mkdir()
    rules = DatasetSpec(root=str(home), layout="split-folders", name="site_a", class_map={"benign": "b"})
    folders = class_tree(tmp_path / "folders", {"benign": 2, "malignant": 2})
    spec = resolve_spec(folders, rules)
    assert (spec.layout, spec.name, spec.class_map) == ("folders", None, {"benign": "b"})
    assert load_dataset(spec).classes == ["b", "malignant"]
    # on the spec's own folder, or for a spec without a root, the spec's layout is the data's
    assert resolve_spec(home, rules).layout == "split-folders"
    assert resolve_spec(folders, dataclasses.replace(rules, root=None)).layout == "split-folders"
    # the table a spec names is found although another labels table sits beside it
    ham = ham_tree(tmp_path / "ham")
    (ham / "other.csv").write_text("image,label\nx,y\n", encoding="utf-8")
    csv_rules = DatasetSpec(root=str(home), layout="csv", csv="HAM10000_metadata.csv", group_by="lesion_id")
    ds = load_dataset(resolve_spec(ham, csv_rules))
    assert ds.layout == "csv" and ds.records.attrs["group_rule"] == "lesion_id"
    # a spec .yaml as DATA: the fields it sets win, SPEC fills in the rest
    (ham / "ham.yaml").write_text("root: .\ncsv: HAM10000_metadata.csv\nclass_map: {nv: naevus}\n")
    spec = resolve_spec(ham / "ham.yaml", dataclasses.replace(csv_rules, class_map={"mel": "melanoma"}))
    assert (spec.layout, spec.class_map, spec.group_by) == ("csv", {"nv": "naevus"}, "lesion_id")


def test_every_bad_input_is_named_in_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medclf.cli import main

    class_tree(tmp_path, {"a": 3, "b": 3})
    for i in range(7):  # 7 unreadable files with one reason, then one with another
        (tmp_path / "a" / f"text{i}.jpg").write_text("hello")
    (tmp_path / "b" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_dataset(tmp_path)
    msg = str(info.value)
    assert msg.startswith("8 bad inputs — ") and "\n" not in msg
    # the first five are named, grouped by reason; the rest are counted; the fix is said once
    assert (
        sum(f"text{i}.jpg" in msg for i in range(7)) == 5 and "and 2 more: not an image: a text file" in msg
    )
    assert "empty.png" not in msg and msg.endswith(
        "; and 1 more (fix or remove them, or pass --skip-bad / skip_bad=True to skip and list bad inputs)"
    )
    # the command line stops with that one line, and --skip-bad lists all eight and goes on
    for command in ("info", "split"):
        extra = ["--out", str(tmp_path / "split.csv")] if command == "split" else []
        assert main(["data", command, str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "8 bad inputs" in err and "--skip-bad" in err
    assert main(["data", "info", str(tmp_path), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped 8 bad input(s)" in out and "empty.png" in out
