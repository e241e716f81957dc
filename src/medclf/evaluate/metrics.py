"""Every metric of a classifier's predictions, each with a bootstrap 95% interval.

All metrics are written as *weighted* statistics of per-image quantities, evaluated on a ``[B, n]`` weight
matrix: ``W = 1`` gives the point estimate and bootstrap count matrices give the replicates. One code path for
both means the interval is always the interval of the reported number.

Metrics that are proportions of images (accuracy, sensitivity, specificity, PPV, NPV, per-class precision,
recall and specificity; balanced accuracy as the mean of its per-class recalls) also get a Wilson score interval,
which is reported instead of the bootstrap's when the bootstrap degenerates (``bootstrap.degenerate_reason``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medclf.errors import DataError
from medclf.evaluate.bootstrap import degenerate_reason, percentile_interval, resample_weights
from medclf.evaluate.calibration import bin_index
from medclf.evaluate.thresholds import decide

__all__ = [
    "BINARY_METRICS",
    "HEADLINE_METRICS",
    "compute_metrics",
    "json_safe",
    "paired_bootstrap",
    "weighted_auc",
    "weighted_average_precision",
    "wilson_interval",
]

HEADLINE_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "weighted_f1",
    "macro_auc",
    "cohen_kappa",
    "mcc",
    "ece",
    "brier",
)
BINARY_METRICS = ("sensitivity", "specificity", "ppv", "npv", "auc", "average_precision")
TOP1_METRICS = ("top1_accuracy", "top1_balanced_accuracy", "top1_macro_f1")
"""Multiclass with a positive group: the label-based metrics of the plain arg-max decision, beside the operating
point's (the figures a paper without an operating point reports)."""
_PER_CLASS_CI = ("precision", "recall", "specificity", "f1", "auc")
ECE_BINS = 15
WILSON = "wilson"
WILSON_MEAN = "wilson (mean of per-class intervals)"
BOOTSTRAP = "bootstrap"
BOOTSTRAP_DEGENERATE = "bootstrap (degenerate)"
"""``ci95_method`` values: which method gave each reported interval."""


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def _pos_neg_blocks(w: np.ndarray, score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weight of positives and of negatives in each block of tied scores, blocks by descending score ([B, U])."""
    order = np.argsort(-score, kind="mergesort")
    s = score[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each block of tied scores
    ws = w[:, order]
    pos_w = ws * positive[order].astype(np.float64)
    neg_w = ws - pos_w
    if ends.size == s.size:  # no ties (the usual case with float probabilities)
        return pos_w, neg_w
    # block sums via cumulative sums at block ends: much faster than np.add.reduceat along rows
    cum_pos = np.cumsum(pos_w, axis=1)[:, ends]
    cum_neg = np.cumsum(neg_w, axis=1)[:, ends]
    return np.diff(cum_pos, axis=1, prepend=0.0), np.diff(cum_neg, axis=1, prepend=0.0)


def weighted_auc(w: np.ndarray, score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC of ``score`` for the 0/1 ``positive`` labels under each row of weights ``w`` ([B, n] → [B]).

    Ties count one half (the Mann-Whitney statistic, equal to scikit-learn's ``roc_auc_score``).
    """
    p_blocks, n_blocks = _pos_neg_blocks(w, score, positive)
    n_pos, n_neg = p_blocks.sum(axis=1), n_blocks.sum(axis=1)
    # negatives strictly below each block = all negatives minus those in this block and above it
    below = n_neg[:, None] - np.cumsum(n_blocks, axis=1)
    u = (p_blocks * (below + 0.5 * n_blocks)).sum(axis=1)
    return _div(u, n_pos * n_neg)


def weighted_average_precision(w: np.ndarray, score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Average precision (step-wise area under the PR curve, as scikit-learn's) under each row of ``w``."""
    p_blocks, n_blocks = _pos_neg_blocks(w, score, positive)
    tp, fp = np.cumsum(p_blocks, axis=1), np.cumsum(n_blocks, axis=1)
    precision = _div(tp, tp + fp)
    n_pos = p_blocks.sum(axis=1)
    return _div(np.nansum(p_blocks * np.nan_to_num(precision), axis=1), n_pos)


class _Inputs:
    """Per-image quantities that every resample re-weights."""

    def __init__(
        self,
        y: np.ndarray,
        probs: np.ndarray,
        pred: np.ndarray,
        k: int,
        positive: list[int] | None,
        threshold: float | None,
    ) -> None:
        self.y, self.probs, self.pred, self.k = y, probs, pred, k
        n = y.size
        # confusion cell of each image, one-hot, so that W @ cells is a stack of confusion matrices
        self.cells = np.zeros((n, k * k))
        self.cells[np.arange(n), y * k + pred] = 1.0
        onehot = np.eye(k)[y]
        if k == 2 and positive is not None:
            self.brier = (probs[:, positive[0]] - onehot[:, positive[0]]) ** 2
        else:
            self.brier = ((probs - onehot) ** 2).sum(axis=1)
        conf = probs.max(axis=1)
        correct = (probs.argmax(axis=1) == y).astype(np.float64)
        bins = np.eye(ECE_BINS)[bin_index(conf, ECE_BINS)]
        self.ece_terms = np.concatenate([bins * conf[:, None], bins * correct[:, None]], axis=1)
        self.class_pos = [(y == c) for c in range(k)]
        self.positive = positive
        if positive is not None:
            self.y_bin = np.isin(y, positive)
            self.score = probs[:, positive].sum(axis=1)
            self.pred_bin = self.score >= (0.5 if threshold is None else threshold)
            bin_cells = np.zeros((n, 4))
            bin_cells[np.arange(n), self.y_bin * 2 + self.pred_bin] = 1.0  # tn, fp, fn, tp
            self.bin_cells = bin_cells
        # macro averages run over the classes present in the labels or the predictions, as scikit-learn's
        present = np.bincount(y, minlength=k) + np.bincount(pred, minlength=k)
        self.f1_classes = present > 0
        self.top1: _Inputs | None = None
        if k > 2 and positive is not None:
            self.top1 = _Inputs(y, probs, probs.argmax(axis=1), k, None, None)


_LABEL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _label_metrics(cm: np.ndarray, f1_classes: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 of a stack of confusion matrices [B, k, k], plus the per-class
    recall and F1 ([B, k]; F1 0 where undefined) they come from."""
    tp = np.einsum("bii->bi", cm)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)
    recall = _div(tp, support)
    with np.errstate(invalid="ignore"):
        bacc = np.nanmean(np.where(support > 0, recall, np.nan), axis=1)
    f1 = np.nan_to_num(_div(2 * tp, support + predicted))
    return {
        "accuracy": tp.sum(axis=1) / cm.sum(axis=(1, 2)),
        "balanced_accuracy": bacc,
        "macro_f1": f1[:, f1_classes].mean(axis=1),
        "recall": recall,
        "f1": f1,
    }


def _evaluate(inp: _Inputs, w: np.ndarray) -> dict[str, np.ndarray]:
    """All metrics under weights ``w`` [B, n]: scalars as [B], per-class values as [B, k]."""
    k = inp.k
    total = w.sum(axis=1)
    cm = (w @ inp.cells).reshape(-1, k, k)
    tp = np.einsum("bii->bi", cm)
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    fp, fn = predicted - tp, support - tp
    tn = total[:, None] - tp - fp - fn
    labels = _label_metrics(cm, inp.f1_classes)
    out: dict[str, np.ndarray] = {m: labels[m] for m in _LABEL_METRICS}
    recall, f1 = labels["recall"], labels["f1"]
    out["weighted_f1"] = (f1 * support).sum(axis=1) / total
    pe = (support * predicted).sum(axis=1) / total**2
    out["cohen_kappa"] = _div(out["accuracy"] - pe, 1.0 - pe)
    cov_tp = tp.sum(axis=1) * total - (support * predicted).sum(axis=1)
    cov_pp = total**2 - (predicted**2).sum(axis=1)
    cov_tt = total**2 - (support**2).sum(axis=1)
    denom = np.sqrt(cov_tt * cov_pp)
    out["mcc"] = np.where(denom > 0, cov_tp / np.where(denom > 0, denom, 1.0), 0.0)
    ece = w @ inp.ece_terms
    out["ece"] = np.abs(ece[:, :ECE_BINS] - ece[:, ECE_BINS:]).sum(axis=1) / total
    out["brier"] = (w @ inp.brier) / total
    auc = np.stack([weighted_auc(w, inp.probs[:, c], inp.class_pos[c]) for c in range(k)], axis=1)
    out["per_class_auc"] = auc
    if k == 2 and inp.positive is not None:
        out["macro_auc"] = auc[:, inp.positive[0]]
    else:
        # one-vs-rest, averaged over the classes whose AUC is defined (present and not alone)
        out["macro_auc"] = _div(np.nansum(auc, axis=1), np.isfinite(auc).sum(axis=1).astype(np.float64))
    out["per_class_precision"] = _div(tp, predicted)
    out["per_class_recall"] = recall
    out["per_class_specificity"] = _div(tn, tn + fp)
    out["per_class_npv"] = _div(tn, tn + fn)
    out["per_class_f1"] = np.where(support + predicted > 0, f1, np.nan)
    out["per_class_support"] = support
    out["confusion_matrix"] = cm
    if inp.positive is not None:
        b = w @ inp.bin_cells
        btn, bfp, bfn, btp = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
        out["sensitivity"] = _div(btp, btp + bfn)
        out["specificity"] = _div(btn, btn + bfp)
        out["ppv"] = _div(btp, btp + bfp)
        out["npv"] = _div(btn, btn + bfn)
        out["auc"] = weighted_auc(w, inp.score, inp.y_bin)
        out["average_precision"] = weighted_average_precision(w, inp.score, inp.y_bin)
    if inp.top1 is not None:
        top1 = _label_metrics((w @ inp.top1.cells).reshape(-1, k, k), inp.top1.f1_classes)
        for name in _LABEL_METRICS:
            out[f"top1_{name}"] = top1[name]
    return out


def _float(x: Any) -> float:
    return float(x) if x is not None else float("nan")


def wilson_interval(successes: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n`` (NaN when ``n`` is 0).

    Unlike a bootstrap it keeps a width at 0/n and n/n: 15 of 15 gives about 0.80–1.00."""
    if n <= 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(round(successes), round(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def _proportions(inp: _Inputs, point: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(successes, trials) of every metric that is a proportion of images: headline ones by name, per-class
    ones as ``{metric: (successes [k], trials [k])}``. Balanced accuracy is listed by its per-class recalls."""
    cm = point["confusion_matrix"][0]
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    fp, fn = predicted - tp, support - tp
    tn = cm.sum() - tp - fp - fn
    headline: dict[str, Any] = {
        "accuracy": (tp.sum(), cm.sum()),
        "balanced_accuracy": [(tp[c], support[c]) for c in range(inp.k) if support[c] > 0],
    }
    if inp.positive is not None:
        btn, bfp, bfn, btp = inp.bin_cells.sum(axis=0)
        headline.update(
            sensitivity=(btp, btp + bfn),
            specificity=(btn, btn + bfp),
            ppv=(btp, btp + bfp),
            npv=(btn, btn + bfn),
        )
    if inp.top1 is not None:
        cm1 = inp.top1.cells.sum(axis=0).reshape(inp.k, inp.k)
        tp1, support1 = np.diag(cm1), cm1.sum(axis=1)
        headline["top1_accuracy"] = (tp1.sum(), cm1.sum())
        headline["top1_balanced_accuracy"] = [(tp1[c], support1[c]) for c in range(inp.k) if support1[c] > 0]
    per_class = {"precision": (tp, predicted), "recall": (tp, support), "specificity": (tn, tn + fp)}
    return headline, per_class


def _wilson(counts: Any, level: float) -> tuple[tuple[float, float], str]:
    """The Wilson interval of one proportion, or of a mean of per-class proportions (the mean of their bounds)."""
    if isinstance(counts, list):
        bounds = [wilson_interval(k, n, level) for k, n in counts]
        if not bounds:
            return (float("nan"), float("nan")), WILSON_MEAN
        return (float(np.mean([b[0] for b in bounds])), float(np.mean([b[1] for b in bounds]))), WILSON_MEAN
    return wilson_interval(counts[0], counts[1], level), WILSON


def _choose_interval(
    samples: np.ndarray, point: float, level: float, wilson: tuple[float, float] | None, method: str
) -> tuple[list[float], str, str | None]:
    """(interval, method, why the bootstrap was degenerate): the bootstrap's percentile interval, or the Wilson
    one when the bootstrap degenerated and the metric is a proportion."""
    boot = percentile_interval(samples, level)
    reason = degenerate_reason(samples, boot, point, proportion=wilson is not None)
    if reason is None:
        return list(boot), BOOTSTRAP, None
    if wilson is not None and all(np.isfinite(wilson)):
        return list(wilson), method, reason
    return list(boot), BOOTSTRAP_DEGENERATE, reason


def check_inputs(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities; rows that sum to 1 within 1e-3 are renormalised exactly."""
    y = np.asarray(y_true).ravel()
    p = np.asarray(probs, dtype=np.float64)
    k = len(classes)
    if p.ndim != 2 or p.shape[1] != k:
        raise DataError(
            f"probabilities have shape {p.shape}; expected [n, {k}] (one column per class {list(classes)})"
        )
    if y.size != p.shape[0]:
        raise DataError(f"{y.size} labels but {p.shape[0]} probability rows; pass one row per image")
    if y.size == 0:
        raise DataError("no predictions to evaluate; the selected split is empty")
    if not np.issubdtype(y.dtype, np.integer):
        if np.all(np.mod(y.astype(np.float64), 1) == 0):
            y = y.astype(np.int64)
        else:
            raise DataError(
                "labels must be class indices (integers); map class names with classes.index(name)"
            )
    if y.min() < 0 or y.max() >= k:
        raise DataError(f"labels must be class indices 0..{k - 1} for classes {list(classes)}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise DataError("probabilities contain NaN, infinity or negative values; check the predictions file")
    sums = p.sum(axis=1)
    if np.abs(sums - 1.0).max() > 1e-3:
        raise DataError(
            f"probability rows must sum to 1 (softmax outputs); found a row summing to {sums[np.argmax(np.abs(sums - 1))]:.4f}"
        )
    return y.astype(np.int64), p / sums[:, None]


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    *,
    groups: np.ndarray | None = None,
    threshold: float | None = None,
    positive_index: int | Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """All metrics of ``probs`` ([n, k], rows sum to 1) against ``y_true`` (class indices), with bootstrap CIs.

    Binary tasks (k == 2): ``positive_index`` defaults to 1 and images are called positive when
    ``p_pos >= threshold`` (default 0.5); the confusion matrix and all label-based metrics use that decision.
    Multiclass: label-based metrics use the arg-max; giving ``positive_index`` (one index or a set of indices,
    e.g. all malignant classes) adds the same screening block (sensitivity, specificity, ... of "any positive
    class" vs the rest at ``threshold``, default 0.5) and the label-based metrics then use the run's decision
    rule (``thresholds.decide``): the most probable positive class when the group's summed probability reaches
    the threshold, else the most probable other class; ``top1_accuracy``, ``top1_balanced_accuracy`` and
    ``top1_macro_f1`` then give the plain arg-max decision's figures beside them.

    ``groups`` (patient/lesion id per image) makes the bootstrap resample whole groups. ``n_boot=0`` skips
    intervals. Undefined values (e.g. the AUC of a class absent from ``y_true``) are NaN and listed in ``notes``.

    Intervals: ``ci95`` / ``per_class_ci95`` hold the reported ones and ``ci95_method`` /
    ``per_class_ci95_method`` the method of each (``bootstrap``, ``wilson``, ``wilson (mean of per-class
    intervals)`` or ``bootstrap (degenerate)`` where no exact interval exists); ``wilson95`` /
    ``per_class_wilson95`` the Wilson intervals of the proportions; ``ci95_degenerate`` why a headline bootstrap
    interval was degenerate.
    """
    y, p = check_inputs(y_true, probs, classes)
    k = len(classes)
    positive = _positive_set(positive_index, k)
    if positive_index is not None and (not positive or min(positive) < 0 or max(positive) >= k):
        raise DataError(f"positive_index {positive_index!r} is not a class index 0..{k - 1}")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise DataError(f"threshold {threshold} must be between 0 and 1")
    if groups is not None:
        groups = np.asarray(groups).ravel()
        if groups.size != y.size:
            raise DataError(
                f"{groups.size} group ids for {y.size} images; pass one group per image (or none)"
            )
    inp = _decided_inputs(y, p, classes, positive, threshold)
    point = _evaluate(inp, np.ones((1, y.size)))
    notes = _notes(inp, point, classes)
    result = _point_figures(inp, point, classes, threshold)
    result["n_groups"] = int(np.unique(groups.astype(str)).size) if groups is not None else int(y.size)
    if n_boot > 0:
        result.update(_intervals(inp, point, result, classes, groups, n_boot, seed, level))
    else:
        result["ci95"] = {}
    result["notes"] = notes
    return result


def _positive_set(positive_index: int | Sequence[int] | None, k: int) -> list[int] | None:
    """The positive class indices as a list (binary default: class 1; multiclass default: none)."""
    if positive_index is None:
        return [1] if k == 2 else None
    return [int(positive_index)] if np.isscalar(positive_index) else [int(i) for i in positive_index]  # type: ignore[arg-type]


def _decided_inputs(
    y: np.ndarray, p: np.ndarray, classes: Sequence[str], positive: list[int] | None, threshold: float | None
) -> _Inputs:
    """The per-image quantities of ``p`` at its decision: with a positive set, the operating point's decisions
    ("decided positive" is exactly score >= threshold, so accuracy and the confusion matrix describe the same
    decisions as sensitivity/specificity: ``thresholds.decide``); without one, the arg-max."""
    if positive is not None:
        thr = 0.5 if threshold is None else float(threshold)
        pred = decide(p, list(classes), thr, [classes[i] for i in positive])
    else:
        pred = p.argmax(axis=1)
    return _Inputs(y, p, pred, len(classes), positive, threshold)


def _notes(inp: _Inputs, point: dict[str, np.ndarray], classes: Sequence[str]) -> list[str]:
    """Sentences naming the figures that the evaluated labels leave undefined (null)."""
    notes: list[str] = []
    support = point["per_class_support"][0].astype(int)
    for c, name in enumerate(classes):
        if support[c] == 0:
            notes.append(
                f"class {name!r} has no images in the evaluated labels: its AUC, recall and F1 are undefined (null)"
            )
        elif support[c] == inp.y.size:
            notes.append(f"only class {name!r} is present: AUCs are undefined (null)")
    if inp.positive is not None and (inp.y_bin.all() or not inp.y_bin.any()):
        notes.append(
            "the evaluated labels contain only one side of the positive/negative split: AUC, sensitivity or specificity are undefined (null)"
        )
    return notes


def _point_figures(
    inp: _Inputs, point: dict[str, np.ndarray], classes: list[str], threshold: float | None
) -> dict[str, Any]:
    """The point estimates of the result: headline, per-class, screening and arg-max figures, confusion matrix."""
    support = point["per_class_support"][0].astype(int)
    per_class: dict[str, dict[str, float | int]] = {}
    for c, name in enumerate(classes):
        per_class[name] = {
            "precision": _float(point["per_class_precision"][0, c]),
            "recall": _float(point["per_class_recall"][0, c]),
            "specificity": _float(point["per_class_specificity"][0, c]),
            "f1": _float(point["per_class_f1"][0, c]),
            "auc": _float(point["per_class_auc"][0, c]),
            "ppv": _float(point["per_class_precision"][0, c]),
            "npv": _float(point["per_class_npv"][0, c]),
            "support": int(support[c]),
        }
    result: dict[str, Any] = {"n": int(inp.y.size), "classes": list(classes)}
    for name in HEADLINE_METRICS:
        result[name] = _float(point[name][0])
    result["per_class"] = per_class
    positive = inp.positive
    if positive is not None:
        result["positive_class"] = (
            classes[positive[0]] if len(positive) == 1 else [classes[i] for i in positive]
        )
        result["threshold"] = 0.5 if threshold is None else float(threshold)
        for name in BINARY_METRICS:
            result[name] = _float(point[name][0])
    if inp.top1 is not None:
        for name in TOP1_METRICS:
            result[name] = _float(point[name][0])
    result["confusion_matrix"] = point["confusion_matrix"][0].astype(int).tolist()
    return result


def _intervals(
    inp: _Inputs,
    point: dict[str, np.ndarray],
    result: dict[str, Any],
    classes: list[str],
    groups: np.ndarray | None,
    n_boot: int,
    seed: int,
    level: float,
) -> dict[str, Any]:
    """The interval keys of the result (``ci95`` ... ``bootstrap``) for the point figures in ``result``."""
    names = list(HEADLINE_METRICS) + (list(BINARY_METRICS) if inp.positive is not None else [])
    names += list(TOP1_METRICS) if inp.top1 is not None else []
    reps: dict[str, list[np.ndarray]] = {m: [] for m in names}
    per_class_reps: dict[str, list[np.ndarray]] = {m: [] for m in _PER_CLASS_CI}
    for w in resample_weights(inp.y, groups, n_boot=n_boot, seed=seed):
        values = _evaluate(inp, w)
        for m in names:
            reps[m].append(values[m])
        for m in _PER_CLASS_CI:
            per_class_reps[m].append(values[f"per_class_{m}"])
    # proportions also get a Wilson interval; it replaces a degenerate bootstrap (e.g. 15 of 15 positives
    # caught: every resample gives 1.000, an interval of zero width that hides how few cases there were)
    counts, pc_counts = _proportions(inp, point)
    ci: dict[str, list[float]] = {}
    wilson: dict[str, list[float]] = {}
    method: dict[str, str] = {}
    degenerate: dict[str, str] = {}
    for m in names:
        w_ci, w_method = _wilson(counts[m], level) if m in counts else (None, "")
        if w_ci is not None:
            wilson[m] = list(w_ci)
        ci[m], method[m], why = _choose_interval(np.concatenate(reps[m]), result[m], level, w_ci, w_method)
        if why:
            degenerate[m] = why
    pc_ci, pc_method, pc_wilson = _per_class_intervals(
        per_class_reps, pc_counts, result["per_class"], classes, level
    )
    return {
        "ci95": ci,
        "per_class_ci95": pc_ci,
        "ci95_method": method,
        "ci95_degenerate": degenerate,
        "wilson95": wilson,
        "per_class_ci95_method": pc_method,
        "per_class_wilson95": pc_wilson,
        "bootstrap": {
            "n_resamples": int(n_boot),
            "seed": int(seed),
            "level": float(level),
            "method": "percentile; stratified by class"
            + ("; whole groups resampled" if groups is not None else ""),
        },
    }


def _per_class_intervals(
    per_class_reps: dict[str, list[np.ndarray]],
    pc_counts: dict[str, Any],
    per_class: dict[str, dict[str, float | int]],
    classes: list[str],
    level: float,
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, str]], dict[str, dict[str, list[float]]]]:
    """(interval, method, Wilson interval) of every per-class figure in ``_PER_CLASS_CI``, by class name."""
    pc_ci: dict[str, dict[str, list[float]]] = {name: {} for name in classes}
    pc_wilson: dict[str, dict[str, list[float]]] = {name: {} for name in classes}
    pc_method: dict[str, dict[str, str]] = {name: {} for name in classes}
    for m in _PER_CLASS_CI:
        stacked = np.concatenate(per_class_reps[m], axis=0)
        for c, name in enumerate(classes):
            w_ci = None
            if m in pc_counts:
                w_ci = wilson_interval(pc_counts[m][0][c], pc_counts[m][1][c], level)
                pc_wilson[name][m] = list(w_ci)
            pc_ci[name][m], pc_method[name][m], _ = _choose_interval(
                stacked[:, c], float(per_class[name][m]), level, w_ci, WILSON
            )
    return pc_ci, pc_method, pc_wilson


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dump`` writes as standard JSON: NaN/inf → null, numpy → Python."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def paired_bootstrap(
    y_true: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    classes: list[str],
    *,
    groups: np.ndarray | None = None,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    positive_index: int | Sequence[int] | None = None,
    metrics: Sequence[str] = ("auc", "accuracy"),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Difference A − B of each metric for two models' predictions on the *same* images, on shared resamples.

    Returns ``{metric: {a, b, diff, ci95: [lo, hi], p_value}}``; the two-sided p-value is twice the smaller tail
    of the bootstrap differences around zero (a resampling test, not an exact one). ``"auc"`` means the
    positive-class AUC for binary tasks and the macro AUC otherwise.
    """
    y, pa = check_inputs(y_true, probs_a, classes)
    _, pb = check_inputs(y_true, probs_b, classes)
    positive = _positive_set(positive_index, len(classes))
    ia = _decided_inputs(y, pa, classes, positive, threshold_a)
    ib = _decided_inputs(y, pb, classes, positive, threshold_b)

    def key(m: str) -> str:
        return m if m != "auc" or positive is not None else "macro_auc"

    point_a, point_b = _evaluate(ia, np.ones((1, y.size))), _evaluate(ib, np.ones((1, y.size)))
    diffs: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for w in resample_weights(y, groups, n_boot=n_boot, seed=seed):
        va, vb = _evaluate(ia, w), _evaluate(ib, w)
        for m in metrics:
            diffs[m].append(va[key(m)] - vb[key(m)])
    out: dict[str, dict[str, Any]] = {}
    for m in metrics:
        d = np.concatenate(diffs[m])
        d = d[np.isfinite(d)]
        p_value = float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean()))) if d.size else float("nan")
        a, b = float(point_a[key(m)][0]), float(point_b[key(m)][0])
        out[m] = {
            "a": a,
            "b": b,
            "diff": a - b,
            "ci95": list(percentile_interval(d, level)),
            "p_value": p_value,
        }
    return out
