"""`medclf evaluate` and `medclf compare` through the real CLI (the model is replaced by a stub)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from _fixtures_evaluate import make_predictions, make_run_dir, stub_model
from medclf.cli import main

CLASSES = ["benign", "malignant"]


@pytest.fixture()
def run_with_images(tmp_path: Path) -> Path:
    run = make_run_dir(tmp_path)
    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("train", 8), ("val", 6), ("test", 12)):
        for i in range(n):
            path = tmp_path / f"{split}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
            rows.append({"path": str(path), "label": CLASSES[i % 2], "group": f"{split}{i}", "split": split})
    pd.DataFrame(rows).to_csv(run / "split.csv", index=False)
    return run


def test_evaluate_command(
    run_with_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def binary(records: pd.DataFrame) -> np.ndarray:
        p1 = np.where(records["label"] == "malignant", 0.7, 0.35)
        return np.stack([1 - p1, p1], axis=1)

    seen = stub_model(monkeypatch, CLASSES, binary)
    out = tmp_path / "eval"
    # --no-gradcam: the fake run has no model to explain (the gallery is tested in test_explain_*)
    rc = main(["evaluate", str(run_with_images), "--out", str(out), "--bootstrap", "100", "--no-gradcam"])
    assert rc == 0
    assert len(seen[0]) == 12 and set(seen[0]["split"]) == {"test"}  # test rows of the run's split.csv only
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 12 and m["sensitivity"] == 1.0 and m["specificity"] == 1.0
    assert m["timing"]["images_per_second"] > 0 and m["evaluated_on"].startswith("split=test")
    printed = capsys.readouterr().out
    assert "sensitivity" in printed and "not a diagnosis" in printed

    out2 = tmp_path / "cmp"
    assert main(["compare", str(out), str(run_with_images), "--out", str(out2), "--bootstrap", "50"]) == 0
    assert (out2 / "leaderboard.md").is_file() and (out2 / "leaderboard.html").is_file()


def test_evaluate_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no run.json" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_predictions_fixture_has_contract_columns() -> None:
    df = make_predictions(5)
    assert list(df.columns) == ["path", "label", "group", "prob_benign", "prob_malignant", "pred"]


@pytest.mark.slow
def test_evaluate_warns_about_a_class_absent_from_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:

    classes = ["a", "b", "c"]
    run = make_run_dir(tmp_path, tuple(classes), threshold=None, positive_class=None)
    # class c is in train and val only: the test split has none of it
    labels = {s: ["abc"[i % 3] for i in range(30)] for s in ("train", "val")}
    labels["test"] = ["ab"[i % 2] for i in range(40)]
    rows = []
    for split, names in labels.items():
        for i, label in enumerate(names):
            path = tmp_path / f"{split}_{i}.png"
            Image.new("RGB", (4, 4)).save(path)
            rows.append({"path": str(path), "label": label, "group": f"{split}{i}", "split": split})
    pd.DataFrame(rows).to_csv(run / "split.csv", index=False)

    onehot = np.eye(3)
    stub_model(
        monkeypatch, classes, lambda r: 0.8 * onehot[r["label"].map(classes.index).to_numpy()] + 0.2 / 3
    )
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--out", str(out), "--bootstrap", "50", "--no-gradcam"]) == 0
    printed = capsys.readouterr().out
    assert "warning: test has no image of class 'c'" in printed
    assert "class 'a'" not in printed  # 20 test images of a: no warning
    assert any(
        "no image of class 'c'" in w for w in json.loads((out / "metrics.json").read_text())["warnings"]
    )
