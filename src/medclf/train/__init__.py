"""Training: the Lightning engine (scratch, finetune, full), the cached-features strategy, cross-validation and
hyper-parameter search. Names load lazily so `medclf --help` stays fast."""

from __future__ import annotations

from typing import TYPE_CHECKING

from medclf._lazy import lazy_names

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


__getattr__ = lazy_names(__name__, _WHERE, globals())
