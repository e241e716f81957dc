"""Clinical evaluation: metrics with bootstrap intervals, calibration, operating points, plots, report, compare.

The array-level functions (thresholds, calibration, metrics) import only numpy/pandas; the report, plots and the
run-level pipeline are imported where they are used.
"""

from __future__ import annotations

from medclf._lazy import lazy_names
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
    "evaluate_predictions": "pipeline",
    "evaluate_run": "pipeline",
    "write_report": "report",
    "compare": "compare",
}


# jinja2/matplotlib/torch stay unimported until a report or a run evaluation is asked for
__getattr__ = lazy_names(__name__, _LAZY, globals())
