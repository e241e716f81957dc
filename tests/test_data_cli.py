"""`medclf data info|split|audit|synth` end to end on synthetic data; errors are one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medclf.cli import main
from medclf.data import read_split_csv


@pytest.fixture(scope="module")
def synth_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "csv"
    assert main(["data", "synth", "--out", str(root), "--layout", "csv", "--n", "60", "--size", "32"]) == 0
    return root


def test_info(synth_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "info", str(synth_csv)]) == 0
    out = capsys.readouterr().out
    assert "layout    csv" in out and "benign, malignant" in out and "age" in out and "patient_id" in out


def test_split_and_folds(synth_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "split.csv"
    assert (
        main(
            [
                "data",
                "split",
                str(synth_csv),
                "--val",
                "0.2",
                "--test",
                "0.2",
                "--seed",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "train" in text and "groups" in text and f"wrote {out}" in text
    recs = read_split_csv(out)
    assert set(recs["split"]) == {"train", "val", "test"} and {"age", "sex", "site"} <= set(recs.columns)
    folds = tmp_path / "folds.csv"
    assert main(["data", "split", str(synth_csv), "--folds", "3", "--out", str(folds)]) == 0
    assert sorted(read_split_csv(folds)["fold"].unique()) == [0, 1, 2]
    assert main(["data", "split", str(synth_csv), "--folds", "3", "--val", "0.1", "--out", str(folds)]) == 2
    assert "not both" in capsys.readouterr().err


def test_split_by_the_csv_group_column(
    synth_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the CSV's patient_id column becomes `group`: naming it gives the same split as the spec's own rule
    named, plain = tmp_path / "named.csv", tmp_path / "plain.csv"
    common = ["data", "split", str(synth_csv), "--seed", "1"]
    assert main([*common, "--group-by", "patient_id", "--out", str(named)]) == 0
    assert main([*common, "--out", str(plain)]) == 0
    recs = read_split_csv(named)
    assert recs["group"].str.fullmatch(r"P\d+").all()
    pd.testing.assert_frame_equal(recs, read_split_csv(plain))
    folds = tmp_path / "folds.csv"
    assert main([*common, "--group-by", "patient_id", "--folds", "3", "--out", str(folds)]) == 0
    assert read_split_csv(folds)["group"].str.fullmatch(r"P\d+").all()
    capsys.readouterr()
    assert main([*common, "--group-by", "lesion", "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert "'patient_id' (the column `group` comes from), a metadata column (age, sex, site)" in err
    assert "'regex:PATTERN'" in err and "Traceback" not in err


def test_recipe_group_by_names_the_csv_column(synth_csv: Path) -> None:
    from medclf.config import load_config
    from medclf.data.splits import group_leaks
    from medclf.train.engine import load_data, resolve_split

    cfg = load_config(None, [f"data.root={synth_csv}", "data.group_by=patient_id"])
    split = resolve_split(cfg, load_data(cfg))
    assert split["group"].str.fullmatch(r"P\d+").all() and not group_leaks(split)
    assert set(split["split"]) == {"train", "val", "test"}


def test_split_regex_group_on_kfold_and_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "k"
    assert main(["data", "synth", "--out", str(root), "--layout", "kfold", "--n", "30", "--size", "32"]) == 0
    assert main(["data", "split", str(root), "--out", str(tmp_path / "k.csv")]) == 0
    assert "pre-made folds" in capsys.readouterr().out
    assert read_split_csv(tmp_path / "k.csv")["augmented"].any()
    flat = tmp_path / "f"
    main(["data", "synth", "--out", str(flat), "--n", "30", "--size", "32"])
    (flat / "dataset.yaml").unlink()  # no spec: groups come from --group-by
    args = ["data", "split", str(flat), "--group-by", r"regex:^(P\d+)_", "--out", str(tmp_path / "f.csv")]
    assert main(args) == 0
    recs = read_split_csv(tmp_path / "f.csv")
    assert recs["group"].str.fullmatch(r"P\d+").all()


def test_audit_writes_json_and_html(
    synth_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "audit", str(synth_csv), "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "Audit of" in out and "audit.html" in out
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert {"exact_duplicates", "near_duplicates", "group_leakage", "metadata"} <= set(report)
    assert report["groups"]["multi_image_groups"] > 0
    assert (tmp_path / "a" / "audit.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    "argv,match",
    [
        (["data", "info", "/definitely/not/here"], "does not exist"),
        (["data", "split", "/definitely/not/here", "--out", "x.csv"], "does not exist"),
        (
            ["data", "split", "{root}", "--group-by", r"regex:P\d+", "--out", "{tmp}/x.csv"],
            "no capture group",
        ),
        (["data", "synth", "--out", "{tmp}/s", "--n", "2"], "--n 2"),
    ],
)
def test_errors_are_one_line_exit_2(
    argv: list[str], match: str, synth_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(root=synth_csv, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert (
        match in err and err.startswith("medclf data: error:") and "Traceback" not in err and "\n" not in err
    )
