"""`medclf cv`: K-fold cross-validation -> DIR/fold_k run folders, out-of-fold predictions, cv_metrics.json.

Pre-made folds (records with ``fold`` and ``split``, e.g. MSLD v2.0's FOLDS/FOLDS_AUG) are used as shipped;
otherwise grouped, stratified folds are made (fold k held out as the test part, val carved from the rest by group).
A fold whose run folder is finished is kept, an interrupted one is resumed: re-running the command continues.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medclf._atomic import atomic_path, atomic_write_json, atomic_write_text
from medclf.config import RunConfig, dump_config
from medclf.errors import ConfigError

__all__ = ["CV_METRICS", "default_cv_config", "fold_metrics", "run_cv"]

CV_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "auc")


def default_cv_config() -> RunConfig:
    """The recipe `medclf cv` uses without a CONFIG: offline-pretrained EfficientNet-Lite0, cached features with
    augmented views (fast on a CPU), any class-per-folder data."""
    cfg = RunConfig(name="default-cv")
    cfg.train = dataclasses.replace(
        cfg.train, strategy="cached", views=4, augment="standard", monitor="val_loss"
    )
    return cfg


def fold_metrics(
    pred: pd.DataFrame,
    classes: list[str],
    threshold: float | None,
    positive_classes: list[str] | None = None,
) -> dict[str, float]:
    """accuracy, balanced_accuracy, macro_f1, macro_auc (one-vs-rest) and, for binary tasks, auc.

    ``positive_classes`` (run.json): decisions by the run's operating point (``thresholds.decide``)."""
    from medclf.evaluate import compute_metrics

    index = {c: i for i, c in enumerate(classes)}
    y = pred["label"].map(index).to_numpy()
    probs = pred[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    positive = [index[c] for c in positive_classes or [] if c in index] or None
    m = compute_metrics(y, probs, classes, threshold=threshold, positive_index=positive, n_boot=0)
    return {k: float(m[k]) for k in CV_METRICS if k in m and m[k] is not None}


def run_cv(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    data: str | Path | None = None,
    folds: int = 5,
    group_by: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train one run per fold under ``out_dir/fold_k`` and summarise them; returns the cv_metrics dict."""
    import json

    from medclf.data import make_folds
    from medclf.train.engine import load_data, resolve_split, train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if group_by:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, group_by=group_by))
    dataset = load_data(cfg, data)
    records = dataset.records
    premade = "fold" in records.columns
    if not premade:
        records = make_folds(records, k=folds, seed=cfg.data.seed, group_by=cfg.data.group_by)
    fold_ids = sorted(int(f) for f in records["fold"].unique())
    if len(fold_ids) < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds; the data has {len(fold_ids)}")
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    rows: list[dict[str, Any]] = []
    oof: list[pd.DataFrame] = []
    for k in fold_ids:
        run_dir = out / f"fold_{k}"
        if not (run_dir / "run.json").is_file():
            resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
            split = None if resume else resolve_split(cfg, records, fold=k)
            train(cfg, run_dir, resume=resume, dataset=dataset, split=split, progress=progress)
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        pred = pd.read_csv(run_dir / "test_predictions.csv")
        pred.insert(0, "fold", k)
        oof.append(pred)
        rows.append(
            {
                "fold": k,
                "n": len(pred),
                **fold_metrics(pred, dataset.classes, info.get("threshold"), info.get("positive_classes")),
            }
        )
    oof_df = pd.concat(oof, ignore_index=True)
    with atomic_path(out / "oof_predictions.csv", suffix=".csv") as tmp:
        oof_df.to_csv(tmp, index=False)
    keys = [k for k in CV_METRICS if all(k in r for r in rows)]
    result = {
        "folds": rows,
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys},
        "std": {k: float(np.std([r[k] for r in rows], ddof=1)) for k in keys},
        "classes": list(dataset.classes),
        "premade_folds": premade,
        "name": cfg.name,
    }
    atomic_write_json(out / "cv_metrics.json", result)
    return result
