"""Decision thresholds (operating points), chosen on validation data only.

A binary decision is ``positive if p_pos >= threshold``. The rules:

- ``"youden"``: maximise Youden's J = sensitivity + specificity - 1;
- ``"sensitivity:0.95"``: the highest threshold whose sensitivity is at least 0.95 (so the best
  specificity that keeps the target sensitivity), e.g. for "do not miss a melanoma";
- ``"specificity:0.90"``: the lowest threshold whose specificity is at least 0.90 (the best sensitivity
  that keeps the target specificity);
- a number (``0.3`` or ``"0.3"``): that threshold, as is.

These functions see only the arrays they are given; the caller passes *validation* predictions. Nothing
here may ever be called with the test set it reports on (``medclf.evaluate.evaluate_predictions`` enforces it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medclf.errors import ConfigError, DataError

# the operating point's decision rule lives with the runtime; re-exported here beside the rules that choose it
from medclf.runtime.decision import decide, positive_scores, resolve_positive_classes

__all__ = [
    "DEFAULT_THRESHOLD",
    "MIN_THRESHOLD_CASES",
    "MIN_THRESHOLD_IMAGES",
    "ValidationFit",
    "choose_threshold",
    "choose_threshold_ovr",
    "decide",
    "fit_on_validation",
    "parse_rule",
    "positive_scores",
    "resolve_positive_classes",
    "threshold_skip_reason",
    "threshold_sweep",
]

DEFAULT_THRESHOLD = 0.5
"""The operating point when none may be chosen: positive when the (summed) positive probability is at least 0.5."""
MIN_THRESHOLD_IMAGES = 50
"""Fewer validation images than this and no threshold rule is applied (the default threshold is kept)."""
# the same floor as the temperature's (calibration.MIN_CALIBRATION_IMAGES): below it the chosen cut point is noise
MIN_THRESHOLD_CASES = 10
"""Fewer positive, or fewer negative, validation images than this and no threshold rule is applied."""
# on under 10 positives the validation sensitivity moves in steps of more than 0.1, so a target such as 0.95 or
# Youden's maximum is decided by one or two images


def parse_rule(rule: str | float) -> tuple[str, float | None]:
    """Split a threshold rule into ``(kind, value)``: ``("youden", None)``, ``("sensitivity", 0.95)``,
    ``("specificity", 0.9)`` or ``("fixed", 0.3)``."""
    if isinstance(rule, int | float) and not isinstance(rule, bool):
        value = float(rule)
        kind = "fixed"
    else:
        text = str(rule).strip().lower()
        if text == "youden":
            return "youden", None
        kind, sep, rest = text.partition(":")
        if sep and kind in ("sensitivity", "specificity", "sens", "spec"):
            kind = "sensitivity" if kind.startswith("sens") else "specificity"
            try:
                value = float(rest)
            except ValueError:
                raise ConfigError(
                    f"threshold rule {rule!r}: {rest!r} is not a number; write e.g. sensitivity:0.95"
                ) from None
        else:
            try:
                value, kind = float(text), "fixed"
            except ValueError:
                raise ConfigError(
                    f"threshold rule {rule!r} is not known; use youden, sensitivity:0.95, "
                    "specificity:0.90 or a number between 0 and 1"
                ) from None
    if not 0.0 <= value <= 1.0 or np.isnan(value):
        raise ConfigError(f"threshold rule {rule!r}: the value must be between 0 and 1")
    return kind, value


def _check_binary(y_true: np.ndarray, p_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    p = np.asarray(p_pos, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise DataError(f"labels ({y.size}) and scores ({p.size}) differ in length; pass one score per image")
    if y.size == 0:
        raise DataError("no predictions to choose a threshold on; the validation split is empty")
    if not np.isin(y, (0, 1)).all():
        raise DataError(
            "binary labels must be 0 (negative) or 1 (positive); map the positive class to 1 first"
        )
    if not np.isfinite(p).all():
        raise DataError(
            "scores contain NaN or infinity; check the predictions file for empty probability cells"
        )
    return y.astype(np.int8), p


def _roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (each distinct score, descending) with the sensitivity and specificity of
    ``p >= threshold``."""
    order = np.argsort(-p, kind="mergesort")
    p_sorted, y_sorted = p[order], y[order]
    # the last index of each run of tied scores: a threshold can only sit between distinct scores
    last = np.r_[np.nonzero(np.diff(p_sorted))[0], p_sorted.size - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = (last + 1) - tp
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    return p_sorted[last], tp / n_pos, 1.0 - fp / n_neg


def choose_threshold(y_true: np.ndarray, p_pos: np.ndarray, rule: str | float) -> float:
    """The decision threshold on ``p_pos`` (probability of the positive class) chosen by ``rule``.

    ``y_true`` is 0/1 and must come from validation data. Returns a float in [0, 1].
    """
    kind, value = parse_rule(rule)
    if kind == "fixed":
        assert value is not None
        return float(value)
    y, p = _check_binary(y_true, p_pos)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        missing = "positive" if n_pos == 0 else "negative"
        raise DataError(
            f"cannot choose a {kind} threshold: the validation predictions have no {missing} cases; "
            "use a larger or stratified validation split, or a fixed threshold (e.g. --threshold 0.5)"
        )
    thr, sens, spec = _roc_points(y, p)
    if kind == "youden":
        j = sens + spec - 1.0
        # ties: the first (highest) threshold reaching the maximum, i.e. the most specific among equals
        return float(thr[int(np.argmax(j >= j.max() - 1e-12))])
    assert value is not None
    if kind == "sensitivity":
        # sensitivity grows as the threshold falls: the first point reaching the target is the most specific
        ok = sens >= value - 1e-12
        return float(thr[int(np.argmax(ok))])
    # specificity falls as the threshold falls: the last point still meeting the target is the most sensitive
    ok = spec >= value - 1e-12
    if not ok.any():
        # even the highest score as threshold is not specific enough: call nothing positive
        return float(np.nextafter(thr[0], np.inf)) if thr[0] < 1.0 else 1.0
    return float(thr[int(np.nonzero(ok)[0][-1])])


def threshold_skip_reason(
    y_true: np.ndarray,
    rule: str | float,
    min_images: int | None = None,
    min_cases: int | None = None,
) -> str | None:
    """Why ``rule`` should not be applied to these 0/1 validation labels, or None when it may be.

    A fixed number needs no data. Otherwise at least ``MIN_THRESHOLD_IMAGES`` images and ``MIN_THRESHOLD_CASES``
    positives and negatives are needed; the caller then keeps ``DEFAULT_THRESHOLD`` and reports the sentence."""
    kind, _ = parse_rule(rule)
    if kind == "fixed":
        return None
    images = MIN_THRESHOLD_IMAGES if min_images is None else min_images
    cases = MIN_THRESHOLD_CASES if min_cases is None else min_cases
    y = np.asarray(y_true).ravel().astype(bool)
    n, n_pos = int(y.size), int(y.sum())
    n_neg = n - n_pos
    if n >= images and min(n_pos, n_neg) >= cases:
        return None
    return (
        f"operating point not chosen by rule {rule!s}: the validation split has {n_pos} positive and {n_neg} "
        f"negative images, fewer than the {cases} of each (and {images} in all) it needs; "
        f"the default threshold {DEFAULT_THRESHOLD:g} is used"
    )


def choose_threshold_ovr(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    positive_classes: Sequence[str],
    rule: str | float,
) -> float:
    """Threshold for "any of ``positive_classes``" vs the rest, on the summed probability of those classes.

    ``y_true`` holds class indices into ``classes`` (validation data).
    """
    y = np.asarray(y_true).ravel()
    idx = [list(classes).index(c) for c in positive_classes if c in classes]
    score = positive_scores(probs, classes, positive_classes)
    return choose_threshold(np.isin(y, idx).astype(np.int8), score, rule)


def threshold_sweep(
    y_true: np.ndarray, p_pos: np.ndarray, thresholds: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Sensitivity, specificity, PPV, NPV and Youden's J of ``p_pos >= t`` for each threshold ``t``.

    Default thresholds: 0, 0.01, ..., 1. Undefined values (e.g. PPV when nothing is called positive) are NaN.
    """
    y, p = _check_binary(y_true, p_pos)
    t = np.linspace(0.0, 1.0, 101) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    # counts of positives / negatives scoring >= t, via sorted scores instead of a len(t) x n matrix
    pos_sorted = np.sort(p[y == 1])
    neg_sorted = np.sort(p[y == 0])
    tp = pos_sorted.size - np.searchsorted(pos_sorted, t, side="left")
    fp = neg_sorted.size - np.searchsorted(neg_sorted, t, side="left")
    fn = pos_sorted.size - tp
    tn = neg_sorted.size - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
        ppv = tp / (tp + fp)
        npv = tn / (tn + fn)
    return {
        "threshold": t,
        "sensitivity": sens,
        "specificity": spec,
        "ppv": ppv,
        "npv": npv,
        "youden": sens + spec - 1.0,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


@dataclass(frozen=True)
class ValidationFit:
    """What a run takes from its validation predictions: the temperature, the threshold of its positive group
    (None without one), and why either was left at its default (None when it was fitted)."""

    temperature: float = 1.0
    threshold: float | None = None
    temperature_skipped: str | None = None
    threshold_skipped: str | None = None


def fit_on_validation(
    val_logits: np.ndarray,
    y_val: np.ndarray,
    classes: Sequence[str],
    positive_classes: Sequence[str] | None,
    rule: str | float,
    calibrate: bool = True,
) -> ValidationFit:
    """Temperature (when ``calibrate``) and operating point from validation logits and class indices, each left
    at its default (T = 1, ``DEFAULT_THRESHOLD``) when the split is too small to support it."""
    from medclf.evaluate.calibration import apply_temperature, fit_temperature, temperature_skip_reason

    temperature, t_skipped = 1.0, None
    if calibrate:
        # too few validation images: T = 1 beats a fit that follows a handful of confident mistakes
        t_skipped = temperature_skip_reason(int(np.asarray(y_val).size))
        if t_skipped is None:
            temperature = float(fit_temperature(val_logits, y_val))
    threshold, thr_skipped = None, None
    if positive_classes:
        y_bin = np.isin(y_val, [list(classes).index(c) for c in positive_classes])
        thr_skipped = threshold_skip_reason(y_bin, rule)
        threshold = DEFAULT_THRESHOLD
        if thr_skipped is None:
            probs = apply_temperature(val_logits, temperature)
            threshold = float(choose_threshold_ovr(y_val, probs, classes, positive_classes, rule))
    return ValidationFit(temperature, threshold, t_skipped, thr_skipped)
