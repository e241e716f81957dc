"""Temperature scaling (fitted on validation data) and calibration measures.

Temperature scaling divides the logits by one scalar ``T`` before the softmax: it changes how confident the
model is, never which class it ranks first. Because softmax ignores a constant shift per row, log-probabilities
work as logits, so a predictions file (probabilities only) can be recalibrated:
``apply_temperature(np.log(p), T)``.
"""

from __future__ import annotations

import numpy as np

from medclf.errors import DataError

# one softmax and temperature for every path (medclf.runtime.decision); the names stay here beside the fit
from medclf.runtime.decision import calibrated_probabilities as apply_temperature
from medclf.runtime.decision import softmax

__all__ = [
    "MIN_CALIBRATION_IMAGES",
    "apply_temperature",
    "bin_index",
    "expected_calibration_error",
    "fit_temperature",
    "log_probs",
    "reliability_curve",
    "softmax",
    "temperature_skip_reason",
]

# T outside this range means the validation set is degenerate (e.g. perfectly separated), not a useful fit
_T_MIN, _T_MAX = 0.05, 20.0

MIN_CALIBRATION_IMAGES = 50
"""Fewer validation images than this and no temperature is fitted (T = 1 is kept)."""
# with fewer, the one-parameter NLL fit follows the few most confident mistakes and can make wrong answers
# near-certain


def temperature_skip_reason(n_images: int, min_images: int | None = None) -> str | None:
    """Why no temperature should be fitted on ``n_images`` validation predictions, or None when it may be."""
    minimum = MIN_CALIBRATION_IMAGES if min_images is None else min_images
    if n_images >= minimum:
        return None
    return (
        f"temperature scaling not fitted: {n_images} validation images, fewer than the {minimum} it needs; "
        "T = 1 kept (the model's own probabilities)"
    )


def log_probs(probs: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Probabilities to log-probabilities (usable as logits), clipped so an exact 0 stays finite."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0))


def _nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(y.size), y]))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of validation labels ``y`` (class indices).

    ``logits`` is ``[n, k]`` (raw logits or log-probabilities). Returns ``T`` in [0.05, 20].
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y).astype(np.int64).ravel()
    if z.ndim != 2 or z.shape[0] != y.size:
        raise DataError(
            f"fit_temperature: logits {z.shape} and labels ({y.size}) do not match; pass [n, k] and n"
        )
    if y.size == 0:
        raise DataError(
            "fit_temperature: no validation predictions; temperature scaling needs a validation split"
        )
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise DataError(f"fit_temperature: labels must be class indices 0..{z.shape[1] - 1}")
    if not np.isfinite(z).all():
        raise DataError(
            "fit_temperature: logits contain NaN or infinity; clip probabilities before taking logs"
        )
    # optimise log T: the loss is smooth and unimodal in it, and T stays positive
    res = minimize_scalar(
        lambda log_t: _nll(z, y, float(np.exp(log_t))),
        bounds=(np.log(_T_MIN), np.log(_T_MAX)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(res.x))


def _top_label(probs: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true).astype(np.int64).ravel()
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    return conf, correct


def bin_index(confidence: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """Equal-width confidence bin of each prediction (0..n_bins-1; a confidence of exactly 1 goes in the top bin)."""
    return np.clip((np.asarray(confidence) * n_bins).astype(np.int64), 0, n_bins - 1)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: the support-weighted mean gap between confidence and accuracy over equal-width bins."""
    conf, correct = _top_label(probs, y_true)
    if conf.size == 0:
        return float("nan")
    b = bin_index(conf, n_bins)
    count = np.bincount(b, minlength=n_bins)
    gap = np.abs(np.bincount(b, conf, n_bins) - np.bincount(b, correct, n_bins))
    return float(gap.sum() / count.sum())


def reliability_curve(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (NaN for empty bins)."""
    conf, correct = _top_label(probs, y_true)
    b = bin_index(conf, n_bins)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(b, conf, n_bins) / count
        acc = np.bincount(b, correct, n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "bin_lower": edges[:-1],
        "bin_upper": edges[1:],
        "confidence": mean_conf,
        "accuracy": acc,
        "count": count,
    }
