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


@pytest.mark.slow
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


@pytest.mark.slow
def test_cv_fold_ensemble_is_a_run_that_predicts_explains_and_exports(tmp_path: Path) -> None:
    from medclf.errors import MedclfError
    from medclf.evaluate.pipeline import evaluate_run
    from medclf.models import load_run
    from medclf.serve import Predictor
    from medclf.serve.export import export_onnx

    data = make_folder_data(tmp_path / "d", n_per_class=12)
    cfg = tiny_cfg(data, "train.epochs=2", "data.val=0.2", "eval.calibrate=true")
    out = tmp_path / "cv"
    result = run_cv(cfg, out, folds=3, progress=False, ensemble=True)
    ens = Path(result["ensemble"])
    assert ens == out / "ensemble" and json.loads((out / "cv_metrics.json").read_text())["ensemble"] == str(
        ens
    )

    # the ensemble's probabilities are the mean of the members' calibrated probabilities
    run = load_run(ens)
    members = [load_run(out / f"fold_{k}") for k in range(3)]
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        got = torch.softmax(run.model(x) / run.temperature, 1)
        want = torch.stack([torch.softmax(m.model(x) / m.temperature, 1) for m in members]).mean(0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert run.temperature == 1.0 and len(run.info.ensemble["members"]) == 3
    assert run.info.strategy == "fold_ensemble" and run.info.refer_below == cfg.eval.refer_below
    assert run.info.train_seconds == pytest.approx(sum(m.info.train_seconds for m in members), abs=0.02)

    # the operating point comes from the out-of-fold predictions (no held-out split of its own)
    from medclf.evaluate.thresholds import choose_threshold_ovr

    oof = pd.read_csv(out / "oof_predictions.csv")
    y = oof["label"].map({c: i for i, c in enumerate(run.classes)}).to_numpy()
    probs = oof[[f"prob_{c}" for c in run.classes]].to_numpy()
    expected = choose_threshold_ovr(y, probs, run.classes, run.positive_classes, "youden")
    assert run.threshold == pytest.approx(expected)
    with pytest.raises(MedclfError, match="fold ensemble"):
        evaluate_run(ens, tmp_path / "ev")

    image = next(iter(sorted(data.rglob("*.png"))))
    pred = Predictor.from_run(ens, backend="torch", ood=False)
    (p,) = pred.predict(image)
    assert p.decision in run.classes and sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    heat = pred.explain(image).cam  # every member's CAM layer is hooked
    assert heat.shape == (32, 32) and 0.0 <= float(heat.min()) <= float(heat.max()) <= 1.0
    report = export_onnx(ens, tmp_path / "ens.onnx", ood=False)
    assert report.max_abs_diff_probs < 1e-4
