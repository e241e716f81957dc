"""Training: the Lightning engine (scratch, finetune, full), the cached-features strategy, cross-validation and
hyper-parameter search. Names load lazily so `medclf --help` stays fast."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "STRATEGIES",
    "build_run_ensemble",
    "finalize_run",
    "load_data",
    "resolve_split",
    "run_cv",
    "run_tune",
    "train",
]

_WHERE = {
    "STRATEGIES": "engine",
    "build_run_ensemble": "ensemble",
    "finalize_run": "engine",
    "load_data": "engine",
    "resolve_split": "engine",
    "train": "engine",
    "run_cv": "cv",
    "run_tune": "tune",
}

if TYPE_CHECKING:
    from medclf.train.cv import run_cv
    from medclf.train.engine import STRATEGIES, finalize_run, load_data, resolve_split, train
    from medclf.train.tune import run_tune


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"medclf.train.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medclf.train' has no attribute {name!r}")
