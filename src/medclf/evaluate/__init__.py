"""Clinical evaluation: metrics with bootstrap intervals, calibration, operating points, plots, report, compare.

The array-level functions (thresholds, calibration, metrics) import only numpy/pandas; the report, plots and the
run-level pipeline are imported where they are used.
"""

from __future__ import annotations

from typing import Any

from medclf.evaluate.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)
from medclf.evaluate.metrics import compute_metrics, paired_bootstrap
from medclf.evaluate.thresholds import choose_threshold, choose_threshold_ovr, threshold_sweep

__all__ = [
    "apply_temperature",
    "choose_threshold",
    "choose_threshold_ovr",
    "compare",
    "compute_metrics",
    "evaluate_predictions",
    "evaluate_run",
    "expected_calibration_error",
    "fit_temperature",
    "paired_bootstrap",
    "reliability_curve",
    "threshold_sweep",
    "write_report",
]

_LAZY = {
    "evaluate_predictions": "medclf.evaluate.pipeline",
    "evaluate_run": "medclf.evaluate.pipeline",
    "write_report": "medclf.evaluate.report",
    "compare": "medclf.evaluate.compare",
}


def __getattr__(name: str) -> Any:
    # jinja2/matplotlib/torch stay unimported until a report or a run evaluation is asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medclf.evaluate' has no attribute {name!r}")
