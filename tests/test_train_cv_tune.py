"""Cross-validation (generated and pre-made folds) and Optuna tuning on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from _fixtures_train import make_folder_data, tiny_cfg
from medclf.config import config_to_dict, load_config
from medclf.errors import ConfigError
from medclf.train import run_cv, run_tune

torch.set_num_threads(1)


def test_cv_generated_folds(tmp_path: Path) -> None:
    data = make_folder_data(tmp_path / "d", n_per_class=12)
    cfg = tiny_cfg(data, "train.epochs=2", "data.val=0.2")
    result = run_cv(cfg, tmp_path / "cv", folds=3, progress=False)
    out = tmp_path / "cv"
    assert [f["fold"] for f in result["folds"]] == [0, 1, 2]
    for k in range(3):
        assert (out / f"fold_{k}" / "run.json").is_file()
    oof = pd.read_csv(out / "oof_predictions.csv")
    # every image is held out exactly once, and never in its own fold's training part
    assert len(oof) == 24 and oof["path"].is_unique
    for k in range(3):
        split = pd.read_csv(out / f"fold_{k}" / "split.csv")
        held = set(oof.loc[oof["fold"] == k, "path"])
        assert held == set(split.loc[split["split"] == "test", "path"])
        assert not held & set(split.loc[split["split"] != "test", "path"])
    saved = json.loads((out / "cv_metrics.json").read_text())
    assert set(saved) >= {"folds", "mean", "std"}
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "auc"):
        vals = [f[key] for f in saved["folds"]]
        assert saved["mean"][key] == pytest.approx(sum(vals) / 3)
    # re-running keeps the finished folds (no retraining)
    mtime = (out / "fold_0" / "model.safetensors").stat().st_mtime_ns
    run_cv(cfg, out, folds=3, progress=False)
    assert (out / "fold_0" / "model.safetensors").stat().st_mtime_ns == mtime


def test_cv_uses_premade_folds(tmp_path: Path) -> None:
    from medclf.data import synth_dataset

    synth_dataset(tmp_path / "msld", layout="kfold", n=36, size=24, folds=3, seed=3)
    cfg = tiny_cfg(tmp_path / "msld", "data.group_by=null", "train.epochs=1")
    result = run_cv(cfg, tmp_path / "cv", folds=5, progress=False)
    assert result["premade_folds"] is True and len(result["folds"]) == 3
    split = pd.read_csv(tmp_path / "cv" / "fold_0" / "split.csv")
    assert split["path"].str.contains("FOLDS_AUG").any()
    assert (split.loc[split["path"].str.contains("FOLDS_AUG"), "split"] == "train").all()


def test_tune_two_trials_writes_table_and_best_recipe(tmp_path: Path) -> None:
    data = make_folder_data(tmp_path / "d", n_per_class=10)
    recipe = tmp_path / "recipe.yaml"
    cfg = tiny_cfg(data, "train.epochs=2")
    doc = config_to_dict(cfg)
    doc["search_space"] = {
        "train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
        "train.optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
        "model.drop_rate": {"type": "uniform", "low": 0.0, "high": 0.5},
    }
    recipe.write_text(yaml.safe_dump(doc))
    cfg = load_config(recipe)
    table = run_tune(cfg, tmp_path / "tune", trials=2, sampler="tpe")
    assert len(table) == 2 and {"train.lr", "train.optimizer", "val_loss"} <= set(table.columns)
    assert (tmp_path / "tune" / "results.md").read_text().startswith("# Tuning results")
    best = load_config(tmp_path / "tune" / "best_config.yaml")
    done = table[table["state"] == "complete"].sort_values("val_loss")
    assert best.train.lr == pytest.approx(done["train.lr"].iloc[0])
    assert best.search_space == {}
    assert 1e-4 <= best.train.lr <= 1e-1


def test_tune_needs_a_search_space(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="search_space"):
        run_tune(tiny_cfg(tmp_path), tmp_path / "t", trials=1)
