"""`compare`: leaderboards from evaluation, run and cross-validation folders, and the paired test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _fixtures_evaluate import make_predictions, make_run_dir
from medclf.errors import DataError
from medclf.evaluate.compare import compare, load_entry
from medclf.evaluate.pipeline import evaluate_predictions

CLASSES = ["benign", "malignant"]


def _eval_dir(tmp: Path, name: str, separation: float, seed: int, lr: float = 0.001) -> Path:
    """An evaluation of a model of the given quality on the same 300 images (same paths, same labels)."""
    run = make_run_dir(tmp / "runs", name=name, lr=lr, model=f"net_{name}")
    df = make_predictions(300, seed=0)
    y = (df["label"] == "malignant").to_numpy()
    z = np.random.default_rng(seed).normal(size=300) + separation * (2 * y - 1)
    df["prob_malignant"] = 1 / (1 + np.exp(-z))
    df["prob_benign"] = 1 - df["prob_malignant"]
    out = tmp / f"eval_{name}"
    evaluate_predictions(df, CLASSES, out, run_dir=run, n_boot=100)
    return out


@pytest.mark.slow
def test_leaderboard_and_paired_test(tmp_path: Path) -> None:
    weak = _eval_dir(tmp_path, "weak", 0.3, seed=1)
    strong = _eval_dir(tmp_path, "strong", 2.0, seed=2, lr=0.01)
    out = tmp_path / "cmp"
    result = compare([weak, strong], out, n_boot=200)
    assert result["sort_by"] == "auc"
    assert [e["name"] for e in result["entries"]] == ["strong", "weak"]
    test = result["paired_test"]
    assert test["done"] and test["n_common"] == 300
    auc = test["results"]["auc"]
    assert auc["diff"] > 0 and auc["ci95"][0] > 0 and auc["p_value"] < 0.05
    assert "accuracy" in test["results"]
    md = (out / "leaderboard.md").read_text()
    assert (
        "| 1 | strong | evaluation | 300 |" in md
        and "[" in md
        and "train.lr" in md
        and "Paired bootstrap" in md
    )
    csv = pd.read_csv(out / "leaderboard.csv")
    assert {"auc", "auc_lo", "auc_hi", "train_seconds", "model.name"} <= set(csv.columns)
    html = (out / "leaderboard.html").read_text()
    assert "<table>" in html and "http" not in html
    json.loads((out / "compare.json").read_text())


def test_run_and_cv_folders_are_rows(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, name="run_a")
    make_predictions(120, seed=3).to_csv(run / "test_predictions.csv", index=False)
    entry = load_entry(run, n_boot=50)
    assert entry.kind == "run" and entry.metrics["n"] == 120 and entry.metrics["threshold"] == 0.4
    cv = tmp_path / "cv_b"
    cv.mkdir()
    (cv / "cv_metrics.json").write_text(
        json.dumps(
            {
                "folds": [{"auc": 0.8, "train_seconds": 10}, {"auc": 0.9, "train_seconds": 12}],
                "mean": {"auc": 0.85, "accuracy": 0.8},
                "std": {"auc": 0.05, "accuracy": 0.02},
            }
        )
    )
    result = compare([run, cv], tmp_path / "cmp", n_boot=50)
    md = (tmp_path / "cmp" / "leaderboard.md").read_text()
    assert "0.850 ± 0.050" in md and "2 folds" in md
    cv_row = next(e for e in result["entries"] if e["kind"] == "cv")
    assert cv_row["train_seconds"] == 22 and cv_row["auc_std"] == 0.05
    assert not result["paired_test"]["done"]  # a cv summary has no per-image predictions


def test_bad_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"metrics\.json, cv_metrics\.json or run\.json"):
        compare([tmp_path], tmp_path / "cmp")
