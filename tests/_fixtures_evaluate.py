"""Synthetic predictions and a fake run folder for the evaluate tests (no model, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def make_predictions(
    n: int = 300,
    classes: tuple[str, ...] = ("benign", "malignant"),
    *,
    seed: int = 0,
    separation: float = 1.5,
    prefix: str = "img",
    image_dir: Path | None = None,
    images_per_group: int = 1,
) -> pd.DataFrame:
    """A predictions.csv table: the true class's logit is raised by ``separation``; optional tiny image files."""
    rng = np.random.default_rng(seed)
    k = len(classes)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += separation
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    paths = []
    for i in range(n):
        if image_dir is not None:
            path = image_dir / f"{prefix}_{i}.png"
            if not path.exists():
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
        else:
            paths.append(f"/data/{prefix}_{i}.png")
    df = pd.DataFrame(
        {
            "path": paths,
            "label": [classes[i] for i in y],
            "group": [f"p{i // images_per_group}" for i in range(n)],
        }
    )
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, j]
    df["pred"] = [classes[i] for i in probs.argmax(axis=1)]
    return df


def make_run_dir(
    root: Path,
    classes: tuple[str, ...] = ("benign", "malignant"),
    *,
    threshold: float | None = 0.4,
    temperature: float | None = 1.3,
    positive_class: str | None = "malignant",
    with_val: bool = True,
    name: str = "tiny_run",
    model: str = "tiny_cnn",
    train_seconds: float = 12.5,
    lr: float = 0.001,
) -> Path:
    """A run folder with run.json, config.yaml, history.csv, split.csv and (optionally) val_predictions.csv."""
    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    info = {
        "classes": list(classes),
        "task": "binary" if len(classes) == 2 else "multiclass",
        "model": {"name": model, "num_classes": len(classes), "in_chans": 3, "kwargs": {}},
        "positive_class": positive_class,
        "threshold": threshold,
        "temperature": temperature,
        "train_seconds": train_seconds,
        "created": "2025-01-01T00:00:00",
        "versions": {"medclf": "0.1.0"},
    }
    (run / "run.json").write_text(json.dumps(info))
    (run / "config.yaml").write_text(
        f"name: {name}\nmodel:\n  name: {model}\n  pretrained: false\ntrain:\n  strategy: scratch\n  epochs: 3\n"
        f"  lr: {lr}\n  batch_size: 16\neval:\n  threshold: youden\n  calibrate: true\n"
    )
    pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "train_loss": [0.9, 0.6, 0.5],
            "val_loss": [0.8, 0.7, 0.65],
            "val_auc": [0.6, 0.7, 0.75],
        }
    ).to_csv(run / "history.csv", index=False)
    rows = []
    for split, n in (("train", 40), ("val", 10), ("test", 10)):
        for i in range(n):
            rows.append(
                {
                    "path": f"/data/{split}_{i}.png",
                    "label": classes[i % len(classes)],
                    "group": f"{split}{i // 2}",
                    "split": split,
                }
            )
    pd.DataFrame(rows).to_csv(run / "split.csv", index=False)
    if with_val:
        make_predictions(200, classes, seed=99, prefix="val").to_csv(run / "val_predictions.csv", index=False)
    return run


def stub_model(monkeypatch, classes: list[str], probs) -> list[pd.DataFrame]:  # type: ignore[no-untyped-def]
    """Replace the run's model for `medclf evaluate`: `load_run` gives a stub and `predict_frame` returns
    `probs(records)` (an [n, k] array) as prob_<class> columns. Returns the list of records it was asked for."""
    from types import SimpleNamespace

    import medclf.models
    import medclf.models.inference

    seen: list[pd.DataFrame] = []

    def fake_predict(loaded, records, batch_size=64, skip_bad=False):  # type: ignore[no-untyped-def]
        seen.append(records)
        p = probs(records)
        return records[["path", "label", "group"]].assign(
            **{f"prob_{c}": p[:, j] for j, c in enumerate(classes)}
        )

    fake_run = SimpleNamespace(classes=classes, model=SimpleNamespace(parameters=lambda: iter([])))
    monkeypatch.setattr(medclf.models, "load_run", lambda run_dir: fake_run)
    monkeypatch.setattr(medclf.models.inference, "predict_frame", fake_predict)
    return seen
