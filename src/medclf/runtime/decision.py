"""Logits to calibrated probabilities to a decision: the one softmax, temperature and operating point of medclf.

Every path that turns a model's output into an answer (the serving ``Predictor``, batch predictions, evaluation,
threshold and temperature fitting) calls these, so the same logits give the same probabilities and the same
decision everywhere. NumPy only, in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medclf.errors import ConfigError, DataError

__all__ = [
    "calibrated_probabilities",
    "decide",
    "positive_scores",
    "resolve_positive_classes",
    "softmax",
]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` [N, C], in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(logits / temperature)`` in float64 (temperature scaling; 1.0 = the model's own probabilities)."""
    if not temperature > 0:
        raise DataError(f"temperature must be positive, got {temperature}; refit it on validation data")
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature))


def positive_scores(probs: np.ndarray, classes: Sequence[str], positive_classes: Sequence[str]) -> np.ndarray:
    """One-vs-rest score: the summed probability of the declared positive classes (e.g. mel + bcc + akiec)."""
    probs = np.asarray(probs, dtype=np.float64)
    unknown = [c for c in positive_classes if c not in classes]
    if unknown or not positive_classes:
        raise ConfigError(
            f"positive classes {list(positive_classes)!r}: {unknown or 'none given'} not among the classes "
            f"{list(classes)}; set eval.positive_classes (or eval.positive_class) to some of them"
        )
    idx = [list(classes).index(c) for c in positive_classes]
    return probs[:, idx].sum(axis=1)


def resolve_positive_classes(
    classes: Sequence[str],
    positive_class: str | None = None,
    positive_classes: Sequence[str] | None = None,
) -> list[str]:
    """The run's positive set: ``positive_classes`` when declared, else for binary tasks ``[positive_class]``
    (default the second class), else ``[]`` (multiclass arg-max). Accepts run.json files without the list."""
    if positive_classes:
        return [str(c) for c in positive_classes]
    if len(classes) == 2:
        return [positive_class if positive_class in classes else str(classes[1])]
    return []


def decide(
    probs: np.ndarray,
    classes: Sequence[str],
    threshold: float | None,
    positive_classes: str | Sequence[str] | None,
) -> np.ndarray:
    """The decision (class index per row of ``probs`` [N, C]) at an operating point.

    With a threshold and a positive set: when the summed probability of the positive classes is at least
    ``threshold`` the decision is the most probable positive class, otherwise the most probable of the others
    (binary: ``positive if p_pos >= threshold``). Without either it is the arg-max. So "decided positive" is
    exactly ``positive_scores(...) >= threshold`` -- the group's sensitivity/specificity describe the decisions.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes):
        raise DataError(
            f"probabilities of shape {p.shape} do not match the {len(classes)} classes {list(classes)}"
        )
    names = [positive_classes] if isinstance(positive_classes, str) else list(positive_classes or [])
    if threshold is None or not names:
        return p.argmax(axis=1)
    in_set = np.isin(np.arange(len(classes)), [list(classes).index(c) for c in names if c in classes])
    score = positive_scores(p, classes, names)  # validates the names
    best_pos = np.where(in_set, p, -np.inf).argmax(axis=1)
    if in_set.all():  # every class is "positive": nothing else to fall back to
        return best_pos
    best_neg = np.where(in_set, -np.inf, p).argmax(axis=1)
    return np.where(score >= float(threshold), best_pos, best_neg)
