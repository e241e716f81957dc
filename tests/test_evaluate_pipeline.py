"""`evaluate_predictions` on synthetic predictions and a fake run folder: artifacts, and the honest-number rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _fixtures_evaluate import make_predictions, make_run_dir
from medclf.errors import DataError
from medclf.evaluate.calibration import fit_temperature, log_probs, softmax
from medclf.evaluate.pipeline import evaluate_predictions
from medclf.evaluate.thresholds import choose_threshold

CLASSES = ["benign", "malignant"]
REQUIRED = {
    "n", "classes", "accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auc", "cohen_kappa",
    "mcc", "ece", "brier", "per_class", "ci95", "threshold", "sensitivity", "specificity", "ppv", "npv", "auc",
    "average_precision",
}  # fmt: skip


def _shuffled_labels(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    out = df.copy()
    out["label"] = np.random.default_rng(seed).permutation(out["label"].to_numpy())
    return out


@pytest.mark.slow
def test_writes_every_artifact(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    df = make_predictions(240, image_dir=tmp_path, images_per_group=2)
    out = tmp_path / "eval"
    m = evaluate_predictions(df, CLASSES, out, run_dir=run, n_boot=200, pdf=True)
    saved = json.loads((out / "metrics.json").read_text())
    assert set(saved) >= REQUIRED
    assert set(saved["per_class"]["malignant"]) == {
        "precision",
        "recall",
        "specificity",
        "f1",
        "auc",
        "ppv",
        "npv",
        "support",
    }
    assert saved["n"] == 240 and saved["n_groups"] == 120
    assert "whole groups" in saved["bootstrap"]["method"]
    assert saved["threshold"] == 0.4 and saved["threshold_source"].startswith("run.json")
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns[:6]) == ["path", "label", "group", "prob_benign", "prob_malignant", "pred"]
    assert (preds["pred"] == np.where(preds["prob_malignant"] >= 0.4, "malignant", "benign")).all()
    for name in ("confusion_matrix", "roc", "pr", "reliability", "threshold_sweep", "training_curves"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (out / "report.html").is_file() and (out / "report.pdf").read_bytes()[:4] == b"%PDF"
    assert (out / "threshold_sweep.csv").is_file()
    assert m["run"]["params"]["model.name"] == "tiny_cnn" and m["timing"]["train_seconds"] == 12.5


@pytest.mark.slow
def test_threshold_chosen_on_validation_never_on_test(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, threshold=None, temperature=None)
    val = pd.read_csv(run / "val_predictions.csv")
    df = make_predictions(300, seed=5)
    thresholds = set()
    for seed in range(3):  # perturbing the test labels must not move the threshold (nor the temperature)
        m = evaluate_predictions(
            _shuffled_labels(df, seed), CLASSES, tmp_path / f"e{seed}", run_dir=run, n_boot=0
        )
        thresholds.add((m["threshold"], m["calibration"]["temperature"]))
    assert len(thresholds) == 1
    thr, temp = thresholds.pop()
    # and it is exactly the validation choice (youden, from config.yaml) on temperature-scaled val probabilities
    y_val = (val["label"] == "malignant").to_numpy().astype(int)
    lp = log_probs(val[["prob_benign", "prob_malignant"]].to_numpy())
    assert temp == pytest.approx(fit_temperature(lp, y_val))
    assert thr == pytest.approx(choose_threshold(y_val, softmax(lp / temp)[:, 1], "youden"))
    assert "validation" in m["threshold_source"]


@pytest.mark.slow
def test_without_validation_the_threshold_is_the_default_not_tuned_on_test(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, threshold=None, temperature=None, with_val=False)
    df = make_predictions(300, seed=6)
    for seed in range(2):
        m = evaluate_predictions(
            _shuffled_labels(df, seed), CLASSES, tmp_path / f"e{seed}", run_dir=run, n_boot=0
        )
        assert m["threshold"] == 0.5 and m["calibration"]["temperature"] == 1.0
    assert any("default 0.5" in note for note in m["notes"])


@pytest.mark.slow
def test_run_temperature_is_applied_and_reported(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, temperature=2.0)
    df = make_predictions(300, seed=7, separation=3.0)  # over-confident raw probabilities
    raw = df[["prob_benign", "prob_malignant"]].to_numpy()
    m = evaluate_predictions(df, CLASSES, tmp_path / "raw", run_dir=run, n_boot=0, temperature_applied=False)
    preds = pd.read_csv(tmp_path / "raw" / "predictions.csv")
    expected = softmax(np.log(raw) / 2.0)
    np.testing.assert_allclose(preds[["prob_benign", "prob_malignant"]].to_numpy(), expected, atol=1e-9)
    cal = m["calibration"]
    assert (
        cal["temperature"] == 2.0 and cal["ece_after"] == m["ece"] and cal["ece_before"] != cal["ece_after"]
    )
    # probabilities that already carry T (predict_frame's output) are not scaled twice
    m2 = evaluate_predictions(
        df.assign(prob_benign=expected[:, 0], prob_malignant=expected[:, 1]),
        CLASSES,
        tmp_path / "cal",
        run_dir=run,
        n_boot=0,
    )
    assert m2["ece"] == pytest.approx(m["ece"]) and m2["calibration"]["ece_before"] == pytest.approx(
        cal["ece_before"]
    )


def test_validation_overlap_is_flagged(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    val = pd.read_csv(run / "val_predictions.csv")
    m = evaluate_predictions(val, CLASSES, tmp_path / "e", run_dir=run, n_boot=0)
    assert any("optimistic" in note for note in m["notes"])


@pytest.mark.slow
def test_multiclass_without_a_run(tmp_path: Path) -> None:
    classes = ["nv", "mel", "bcc"]
    df = make_predictions(150, tuple(classes), seed=8)
    m = evaluate_predictions(df, classes, tmp_path / "e", n_boot=50)
    assert "threshold" not in m and "sensitivity" not in m
    assert (tmp_path / "e" / "plots" / "roc.png").is_file()
    assert not (tmp_path / "e" / "plots" / "threshold_sweep.png").exists()
    # a declared positive set adds the one-vs-rest operating point
    m = evaluate_predictions(
        df, classes, tmp_path / "f", n_boot=0, positive_class=["mel", "bcc"], threshold=0.3
    )
    assert m["positive_class"] == ["mel", "bcc"] and m["threshold"] == 0.3


def test_bad_predictions_name_the_row(tmp_path: Path) -> None:
    df = make_predictions(20)
    df.loc[3, "label"] = "melanoma"
    with pytest.raises(DataError, match="row 5: label 'melanoma'"):
        evaluate_predictions(df, CLASSES, tmp_path / "e", n_boot=0)
    with pytest.raises(DataError, match="prob_malignant"):
        evaluate_predictions(
            make_predictions(20).drop(columns="prob_malignant"), CLASSES, tmp_path / "e", n_boot=0
        )


@pytest.mark.slow
def test_multiclass_run_with_a_positive_group(tmp_path: Path) -> None:
    classes = ("nv", "mel", "bcc", "akiec")
    group = ["mel", "bcc", "akiec"]
    run = make_run_dir(tmp_path, classes, threshold=0.35, temperature=None, positive_class=None)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "positive_classes": group}))
    df = make_predictions(300, classes, seed=4)
    m = evaluate_predictions(df, list(classes), tmp_path / "e", run_dir=run, n_boot=50)
    assert m["positive_class"] == group and m["threshold"] == 0.35
    assert m["threshold_source"].startswith("run.json")
    # the calibrated probabilities (temperature fitted on the run's validation predictions) as written
    out = pd.read_csv(tmp_path / "e" / "predictions.csv")
    probs = out[[f"prob_{c}" for c in classes]].to_numpy()
    score, y_in = probs[:, 1:].sum(1), out["label"].isin(group).to_numpy()
    assert m["sensitivity"] == pytest.approx((score[y_in] >= 0.35).mean())
    assert m["specificity"] == pytest.approx((score[~y_in] < 0.35).mean())
    assert 0 < m["sensitivity"] < 1 and "sensitivity" in m["ci95"]
    # predictions.csv decides by the group rule; the report names the operating point and sweeps the group
    best_in = np.array(group)[probs[:, 1:].argmax(1)]
    np.testing.assert_array_equal(out["pred"], np.where(score >= 0.35, best_in, "nv"))
    html = (tmp_path / "e" / "report.html").read_text(encoding="utf-8")
    assert "P(mel+bcc+akiec) ≥ 0.35" in html and "Sensitivity (mel+bcc+akiec)" in html
    # a multiclass report keeps the macro AUC and shows the arg-max figures beside the operating point's
    assert "Macro AUC (one-vs-rest)" in html and "Accuracy, arg-max decision" in html
    assert m["top1_accuracy"] == pytest.approx((probs.argmax(1) == out["label"].map(classes.index)).mean())
    sweep = pd.read_csv(tmp_path / "e" / "threshold_sweep.csv")
    row = sweep.iloc[(sweep["threshold"] - 0.35).abs().argmin()]
    assert row["sensitivity"] == pytest.approx(m["sensitivity"])


@pytest.mark.slow
def test_a_small_validation_split_keeps_t1_and_the_default_threshold(tmp_path: Path) -> None:
    small = make_run_dir(tmp_path / "small", threshold=None, temperature=None)
    make_predictions(30, seed=99, prefix="val", separation=4.0).to_csv(
        small / "val_predictions.csv", index=False
    )
    df = make_predictions(300, seed=5)
    m = evaluate_predictions(df, CLASSES, tmp_path / "e_small", run_dir=small, n_boot=0)
    cal = m["calibration"]
    assert cal["temperature"] == 1.0 and "30 validation images" in cal["skipped"]
    assert m["threshold"] == 0.5 and "default threshold 0.5" in m["threshold_skipped"]
    assert m["threshold_source"].startswith("default 0.5")
    saved = json.loads((tmp_path / "e_small" / "metrics.json").read_text())
    assert saved["calibration"]["skipped"] == cal["skipped"] and saved["threshold_skipped"]
    assert cal["skipped"] in saved["warnings"] and m["threshold_skipped"] in saved["warnings"]
    html = (tmp_path / "e_small" / "report.html").read_text(encoding="utf-8")
    assert "temperature not fitted" in html and "threshold not chosen" in html
    assert "too small to fit the decision threshold and the temperature" in html  # the model card's limits
    # the same run with 200 validation predictions fits both
    big = make_run_dir(tmp_path / "big", threshold=None, temperature=None)
    m = evaluate_predictions(df, CLASSES, tmp_path / "e_big", run_dir=big, n_boot=0)
    assert m["calibration"]["skipped"] is None and m["calibration"]["temperature"] != 1.0
    assert m["threshold_skipped"] is None and m["threshold_source"].startswith("chosen now")


def test_fits_skipped_during_training_are_reported(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path, threshold=0.5, temperature=1.0)
    info = json.loads((run / "run.json").read_text())
    skipped_t = "temperature scaling not fitted: 12 validation images"
    skipped_thr = "operating point not chosen: 5 positive images"
    info.update(
        temperature_skipped=skipped_t,
        threshold_skipped=skipped_thr,
        warnings=["val has only 5 image(s) of class 'malignant'", skipped_t, skipped_thr],
    )
    (run / "run.json").write_text(json.dumps(info))
    m = evaluate_predictions(make_predictions(300, seed=5), CLASSES, tmp_path / "e", run_dir=run, n_boot=0)
    assert m["threshold_source"].startswith("default 0.5") and m["threshold_skipped"] == skipped_thr
    assert "not fitted" in m["calibration"]["source"] and m["calibration"]["skipped"] == skipped_t
    assert sorted(m["warnings"]) == sorted(info["warnings"])  # each once, though the skips are the run's too


def test_a_class_absent_from_the_evaluated_images_is_warned(tmp_path: Path) -> None:
    classes = ["nv", "mel", "bcc"]
    df = make_predictions(150, tuple(classes), seed=8)
    df = df[df["label"] != "bcc"]
    m = evaluate_predictions(df, classes, tmp_path / "e", n_boot=0)
    assert any("no image of class 'bcc'" in w for w in m["warnings"])
    assert not any("'nv'" in w for w in m["warnings"])  # a class with enough images is not named
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert saved["warnings"] == m["warnings"]
    html = (tmp_path / "e" / "report.html").read_text(encoding="utf-8")
    assert "no image of class &#39;bcc&#39;" in html or "no image of class 'bcc'" in html
