"""`medclf evaluate RUN --data X`: any folder layout (or a spec .yaml) read with the run's own dataset rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from _fixtures_serve import synthetic_image
from medclf.cli import main
from medclf.models.run_io import seal_file

# the run's spec was written for split folders with raw labels ben/mal, renamed by class_map
RUN_SPEC = {
    "name": "site_a",
    "root": "/nonexistent/site_a",
    "layout": "split-folders",
    "class_map": {"ben": "benign", "mal": "malignant"},
    "classes": ["benign", "malignant"],
    "group_by": r"regex:^(P\d+)_",
}


def _image(path: Path, label: int, seed: int) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_image(label, np.random.default_rng(seed)).save(path)
    return path.name


def _class_folders(root: Path, n: int = 4, seed: int = 0) -> Path:
    for label, raw in enumerate(("ben", "mal")):
        for i in range(n):
            _image(root / raw / f"P{label}{i // 2}_{seed}{i}.png", label, seed * 100 + label * 10 + i)
    return root


def _run(tiny_run: Path, tmp_path: Path, **spec: object) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "dataset.yaml").write_text(yaml.safe_dump({**RUN_SPEC, **spec}), encoding="utf-8")
    seal_file(run, "dataset.yaml")  # in the run's manifest, as training writes it
    return run


def _evaluate(run: Path, data: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "evaluate",
            str(run),
            "--data",
            str(data),
            "--out",
            str(out),
            "--bootstrap",
            "0",
            "--no-gradcam",
            *extra,
        ]
    )


@pytest.mark.slow
def test_class_folders_and_split_folders_with_the_runs_rules(
    tiny_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = _run(tiny_run, tmp_path)
    # a class-per-folder folder although the run's spec says split-folders: every image, labels renamed
    folders = _class_folders(tmp_path / "site_b")
    assert _evaluate(run, folders, tmp_path / "ev1") == 0
    printed = capsys.readouterr().out
    assert f"8 images: all 8 images of {folders.resolve()}" in printed
    pred = json.loads((tmp_path / "ev1" / "metrics.json").read_text())
    assert pred["n"] == 8 and pred["classes"] == ["benign", "malignant"]
    # split folders: only the test part is scored, and the output says so
    split = tmp_path / "site_c"
    for part, seed in (("train", 1), ("val", 2), ("test", 3)):
        _class_folders(split / part, n=2 if part == "test" else 4, seed=seed)
    assert _evaluate(run, split, tmp_path / "ev2") == 0
    assert f"4 images: split=test of {split.resolve()}" in capsys.readouterr().out
    # split folders without the asked-for part: say which parts there are instead of scoring training images
    shutil.rmtree(split / "test")
    assert _evaluate(run, split, tmp_path / "ev3") == 2
    err = capsys.readouterr().err
    assert "has train, val split folders but no test" in err and "--split all" in err


@pytest.mark.slow
def test_csv_folder_spec_yaml_and_unreadable_data(
    tiny_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # a HAM10000-like run: images + labels.csv, grouped by the table's patient_id column
    csv_rules = {"layout": "csv", "csv": "labels.csv", "image_column": "file", "label_column": "dx"}
    run = _run(tiny_run, tmp_path, **csv_rules, group_by="patient_id", metadata=[])
    site = tmp_path / "site_csv"
    rows = ["file,dx,patient_id"] + [
        f"{_image(site / 'img' / f'x{i}.png', i % 2, 50 + i)},{('ben', 'mal')[i % 2]},p{i // 2}"
        for i in range(6)
    ]
    (site / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (site / "notes.csv").write_text("a,b\n1,2\n", encoding="utf-8")  # the spec's csv: says which table
    assert _evaluate(run, site, tmp_path / "ev1") == 0
    pred = json.loads((tmp_path / "ev1" / "metrics.json").read_text())
    assert pred["n"] == 6
    # class folders have no table: the run's group column cannot apply, each image is its own group
    assert _evaluate(run, _class_folders(tmp_path / "site_folders"), tmp_path / "ev2") == 0
    # a spec .yaml for other data: its own fields win, the run's class_map and classes fill in the rest
    other = tmp_path / "site_yaml"
    rows = ["image,diagnosis,patient"] + [
        f"{_image(other / f'y{i}.png', i % 2, 80 + i)},{('ben', 'mal')[i % 2]},q{i}" for i in range(4)
    ]
    (other / "table.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    own = {"root": ".", "csv": "table.csv", "image_column": "image", "label_column": "diagnosis"}
    (other / "other.yaml").write_text(yaml.safe_dump({**own, "group_by": "patient"}), encoding="utf-8")
    assert _evaluate(run, other / "other.yaml", tmp_path / "ev3", "--split", "all") == 0
    assert json.loads((tmp_path / "ev3" / "metrics.json").read_text())["n"] == 4
    capsys.readouterr()
    # a folder the run's rules cannot read: one line naming the data, the rules and the fix
    bad = _class_folders(tmp_path / "site_bad")
    _image(bad / "other" / "z.png", 0, 9)
    assert _evaluate(run, bad, tmp_path / "ev4") == 2
    err = capsys.readouterr().err
    assert f"--data {bad} (read as layout folders with the run's dataset rules" in err
    assert "label 'other' is not one of the classes" in err and "pass that as --data" in err
