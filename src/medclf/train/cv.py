"""`medclf cv`: K-fold cross-validation -> DIR/fold_k run folders, out-of-fold predictions, cv_metrics.json.

Pre-made folds (records with ``fold`` and ``split``, e.g. MSLD v2.0's FOLDS/FOLDS_AUG) are used as shipped;
otherwise grouped, stratified folds are made (fold k held out as the test part, val carved from the rest by group).
A fold whose run folder is finished is kept, an interrupted one is resumed: re-running the command continues.
With ``ensemble=True`` the fold models become one final model, ``DIR/ensemble`` (a run folder like any other:
evaluate it on external data, predict, explain, export, serve); its operating point is chosen on the out-of-fold
predictions, since every image trained some member and the ensemble has no held-out split of its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medclf._atomic import atomic_path, atomic_write_json, atomic_write_text
from medclf._lazy import require_extra
from medclf.config import RunConfig, dump_config
from medclf.errors import ConfigError

__all__ = ["CV_METRICS", "build_fold_ensemble", "fold_metrics", "run_cv"]

CV_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "auc")


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
    ensemble: bool = False,
) -> dict[str, Any]:
    """Train one run per fold under ``out_dir/fold_k`` and summarise them; returns the cv_metrics dict.

    ``ensemble``: also write the fold ensemble ``out_dir/ensemble`` (see ``build_fold_ensemble``)."""
    require_extra("train", "medclf cv")
    from medclf.data import make_folds
    from medclf.models import RunDir
    from medclf.train.engine import load_data, named, resolve_split, train

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if group_by:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, group_by=group_by))
    dataset = load_data(cfg, data)
    cfg = named(cfg, dataset)
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
        if not RunDir(run_dir).is_run():
            resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
            split = None if resume else resolve_split(cfg, records, fold=k)
            train(cfg, run_dir, resume=resume, dataset=dataset, split=split, progress=progress)
        info = RunDir(run_dir).load_info()
        pred = pd.read_csv(run_dir / "test_predictions.csv")
        pred.insert(0, "fold", k)
        oof.append(pred)
        rows.append(
            {
                "fold": k,
                "n": len(pred),
                **fold_metrics(pred, dataset.classes, info.threshold, info.positive_classes),
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
    if ensemble:
        runs = [out / f"fold_{k}" for k in fold_ids]
        result["ensemble"] = str(build_fold_ensemble(out, runs, cfg, cv_mean=result["mean"]))
    atomic_write_json(out / "cv_metrics.json", result)
    return result


def build_fold_ensemble(
    out_dir: str | Path, fold_runs: list[Path], cfg: RunConfig, cv_mean: dict[str, float] | None = None
) -> Path:
    """Write ``out_dir/ensemble``: the fold models averaged, operating point chosen on out-of-fold predictions.

    Every fold run must share classes and preprocessing. The members keep their own temperatures; the
    threshold (binary tasks, or ``eval.positive_classes``) follows ``eval.threshold`` on ``oof_predictions.csv``.
    """
    import shutil
    from datetime import datetime, timezone

    import medclf
    from medclf.evaluate.thresholds import choose_threshold_ovr
    from medclf.models import RunInfo, load_run, save_run_model
    from medclf.models.ensemble import FoldEnsemble
    from medclf.train.rundir import library_versions

    out = Path(out_dir)
    runs = [load_run(r) for r in fold_runs]
    first = runs[0]
    for r in runs[1:]:
        if r.classes != first.classes or r.preprocessing.to_dict() != first.preprocessing.to_dict():
            raise ConfigError(
                f"{r.run_dir} and {first.run_dir} differ in classes or preprocessing; "
                "a fold ensemble needs folds trained with one recipe"
            )
    if any(r.meta_encoder is not None for r in runs):
        raise ConfigError(
            "a fold ensemble of metadata-fusion models is not supported (each fold fits its own metadata "
            "encoder); use one fold's run as the final model, or drop model.metadata for the ensemble"
        )
    temps = [float(r.temperature) for r in runs]
    model = FoldEnsemble.from_runs(runs)

    oof = pd.read_csv(out / "oof_predictions.csv")
    classes = first.classes
    positive_set = list(first.positive_classes or [])
    threshold = None
    if positive_set:
        index = {c: i for i, c in enumerate(classes)}
        y = oof["label"].astype(str).map(index).to_numpy()
        probs = oof[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
        probs = probs / probs.sum(axis=1, keepdims=True)
        threshold = float(choose_threshold_ovr(y, probs, classes, positive_set, cfg.eval.threshold))

    run_dir = out / "ensemble"
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "dataset.yaml"):
        if (first.run_dir / name).is_file():
            shutil.copyfile(first.run_dir / name, run_dir / name)
    # every image trained some member: the ensemble's split lists them all as training data (used for its
    # out-of-distribution statistics); it has no test rows, so its estimate is the cross-validation's
    split = pd.read_csv(first.run_dir / "split.csv")
    split = split.drop_duplicates("path").assign(split="train")
    with atomic_path(run_dir / "split.csv", suffix=".csv") as tmp:
        split.to_csv(tmp, index=False)
    info = RunInfo(
        name=f"{cfg.name}-fold-ensemble",
        classes=classes,
        task="binary" if len(classes) == 2 else "multiclass",
        preprocessing=first.preprocessing.to_dict(),
        positive_class=first.positive_class,
        positive_classes=positive_set,
        threshold=threshold,
        threshold_rule=f"{cfg.eval.threshold} on out-of-fold predictions" if positive_set else None,
        temperature=1.0,
        refer_below=cfg.eval.refer_below,
        tta=list(first.info.tta),  # the out-of-fold predictions the threshold used had them
        ensemble={
            "members": [str(r.run_dir.resolve()) for r in runs],
            "member_temperatures": temps,
            "cv_mean": cv_mean,
        },
        strategy="fold_ensemble",
        train_seconds=round(sum(float(r.info.train_seconds or 0.0) for r in runs), 2),
        images={"train": len(split), "val": 0, "test": 0},
        data_fingerprint=first.info.data_fingerprint,
        versions=library_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        disclaimer=medclf.DISCLAIMER,
    )
    save_run_model(run_dir, model, info)
    return run_dir
