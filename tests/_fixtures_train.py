"""Tiny, learnable synthetic image data for the training tests (class = brightness + a stripe, plus noise)."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import numpy as np
from PIL import Image

from medclf.config import RunConfig, load_config

CLASSES = ("benign", "malignant")


def make_folder_data(
    root: Path, n_per_class: int = 24, size: int = 24, seed: int = 0, classes=CLASSES
) -> Path:
    """Class-per-folder PNGs; two images per patient (file names P<k>_<j>.png) so groups matter."""
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            base = 60 + 120 * ci / max(1, len(classes) - 1)
            arr = rng.normal(base, 25, (size, size, 3)).clip(0, 255)
            arr[:, size // 2 - 2 : size // 2 + 2, ci % 3] = 255  # a class-coloured stripe
            Image.fromarray(arr.astype(np.uint8)).save(root / c / f"P{ci}{i // 2:03d}_{i % 2}.png")
    return root


def tiny_cfg(root: Path, *overrides: str) -> RunConfig:
    base = [
        f"data.root={root}",
        "data.group_by=regex:^(P\\d+)_",
        "data.val=0.25",
        "data.test=0.2",
        "model.name=tiny_cnn",
        "model.pretrained=false",
        "model.drop_rate=0.0",
        "train.strategy=scratch",
        "train.epochs=3",
        "train.batch_size=8",
        "train.lr=0.02",
        "train.patience=0",
        "train.augment=none",
        "train.monitor=val_loss",
        "eval.threshold=youden",
    ]
    return load_config(None, [*base, *overrides])


def load_benchmark(name: str) -> types.ModuleType:
    """``benchmarks/NAME.py`` imported as a module (the benchmarks folder is not a package)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
