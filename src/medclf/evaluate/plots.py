"""Evaluation figures as PNG bytes (matplotlib's Agg canvas; no pyplot, no global backend switch).

Each ``*_figure`` function returns a ``matplotlib.figure.Figure``; ``figure_png`` renders one to bytes and
``save_png`` also writes it atomically, so the report can embed exactly the file that was saved.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medclf._atomic import atomic_write_bytes
from medclf._lazy import require_extra

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "confusion_matrix_figure",
    "figure_png",
    "pr_figure",
    "reliability_figure",
    "roc_figure",
    "save_png",
    "subgroup_figure",
    "threshold_sweep_figure",
    "training_curves_figure",
]

_DPI = 110


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **grid: object):  # -> (Figure, axes)
    require_extra("report", "the evaluation plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw=grid or None)
    return fig, axes


def figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path) -> bytes:
    """Write ``fig`` as a PNG (atomically) and return the bytes."""
    data = figure_png(fig)
    atomic_write_bytes(path, data)
    return data


def confusion_matrix_figure(cm: np.ndarray | list[list[int]], classes: Sequence[str]) -> Figure:
    """Counts (left) and row-normalised rates (right: each row is one true class, so the diagonal is recall)."""
    cm = np.asarray(cm, dtype=np.float64)
    k = len(classes)
    side = max(3.2, 0.55 * k + 2.0)
    fig, axes = _figure(2 * side + 0.6, side, ncols=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = cm / cm.sum(axis=1, keepdims=True)
    for ax, data, title, fmt in (
        (axes[0, 0], cm, "Counts", "{:.0f}"),
        (axes[0, 1], rates, "Row-normalised (recall on the diagonal)", "{:.2f}"),
    ):
        shown = np.nan_to_num(data)
        ax.imshow(shown, cmap="Blues", vmin=0, vmax=max(float(shown.max()), 1e-9))
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        high = shown.max() * 0.6
        for i in range(k):
            for j in range(k):
                text = "–" if np.isnan(data[i, j]) else fmt.format(data[i, j])
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shown[i, j] > high else "black",
                )
    return fig


def _curve_classes(classes: Sequence[str], positive_index: int | None) -> list[int]:
    # binary: one curve (the positive class); the negative class's curve is its mirror image
    if len(classes) == 2:
        return [1 if positive_index is None else positive_index]
    return list(range(len(classes)))


def roc_figure(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    positive_index: int | None = None,
    threshold: float | None = None,
) -> Figure:
    """One-vs-rest ROC curve of each class with its AUC; the binary operating point is marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, axes = _figure(5.2, 4.6)
    ax = axes[0, 0]
    y = np.asarray(y_true)
    for c in _curve_classes(classes, positive_index):
        pos = y == c
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos, probs[:, c])
        ax.plot(fpr, tpr, lw=1.6, label=f"{classes[c]} (AUC {roc_auc_score(pos, probs[:, c]):.3f})")
        if threshold is not None and len(classes) == 2:
            called = probs[:, c] >= threshold
            ax.plot(
                [called[~pos].mean()], [called[pos].mean()], "ko", ms=6, label=f"threshold {threshold:.3f}"
            )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title("ROC, one class vs the rest", fontsize=10)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def pr_figure(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, positive_index: int | None = None
) -> Figure:
    """Precision-recall curve of each class with its average precision; dotted lines are the prevalences."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, axes = _figure(5.2, 4.6)
    ax = axes[0, 0]
    y = np.asarray(y_true)
    for c in _curve_classes(classes, positive_index):
        pos = y == c
        if not pos.any():
            continue
        precision, recall, _ = precision_recall_curve(pos, probs[:, c])
        (line,) = ax.plot(
            recall,
            precision,
            lw=1.6,
            label=f"{classes[c]} (AP {average_precision_score(pos, probs[:, c]):.3f})",
        )
        ax.axhline(pos.mean(), ls=":", lw=0.8, color=line.get_color())
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision (PPV)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall, one class vs the rest", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    return fig


def reliability_figure(curves: dict[str, dict[str, np.ndarray]], eces: dict[str, float]) -> Figure:
    """Reliability diagram: accuracy against confidence per bin for each named set of probabilities
    (e.g. "before" and "after" temperature scaling), plus the count of predictions per bin."""
    fig, axes = _figure(5.2, 5.8, nrows=2, height_ratios=[3, 1])
    ax, hist = axes[0, 0], axes[1, 0]
    for i, (name, curve) in enumerate(curves.items()):
        ok = curve["count"] > 0
        ax.plot(
            curve["confidence"][ok], curve["accuracy"][ok], "o-", ms=4, label=f"{name} (ECE {eces[name]:.3f})"
        )
        width = (curve["bin_upper"] - curve["bin_lower"]) / (len(curves) + 0.5)
        hist.bar(
            curve["bin_lower"] + i * width, curve["count"], width=width, align="edge", label=name, alpha=0.8
        )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    hist.set_xlim(0, 1)
    hist.set_xlabel("confidence")
    hist.set_ylabel("images")
    return fig


def threshold_sweep_figure(
    sweep: dict[str, np.ndarray], threshold: float | None = None, *, title: str = ""
) -> Figure:
    """Sensitivity, specificity, PPV and NPV against the decision threshold; the chosen threshold is marked."""
    fig, axes = _figure(5.6, 4.0)
    ax = axes[0, 0]
    t = sweep["threshold"]
    for key in ("sensitivity", "specificity", "ppv", "npv"):
        ax.plot(t, sweep[key], lw=1.6, label=key if len(key) > 3 else key.upper())
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"chosen on validation: {threshold:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("threshold on the positive-class probability")
    ax.set_ylabel("rate")
    ax.set_title(title or "Operating points", fontsize=10)
    ax.legend(fontsize=7, loc="lower center", ncols=3)
    return fig


def subgroup_figure(section: dict[str, Any]) -> Figure | None:
    """Forest plot of ``metrics.json``'s ``subgroups`` section: each evaluated subgroup's figure with its 95%
    interval beside the overall one (dashed), flagged subgroups in red; None when no subgroup was evaluated."""
    names = [m for m in ("sensitivity", "specificity") if m in section["metrics"]] or [
        "accuracy",
        "balanced_accuracy",
    ]
    rows = [
        (f"{column}: {entry['name']} (n={entry['n']})", entry)
        for column, part in section["columns"].items()
        for entry in part["subgroups"]
        if not entry.get("too_small")
    ]
    if not rows:
        return None
    fig, axes = _figure(4.2 * len(names) + 1.6, 0.9 + 0.26 * len(rows), ncols=len(names))
    pos = np.arange(len(rows))[::-1]
    for ax, name in zip(axes[0], names, strict=True):
        for y, (_, entry) in zip(pos, rows, strict=True):
            value, ci = entry.get(name), (entry.get("ci95") or {}).get(name)
            if value is None or not np.isfinite(value):
                continue
            color = "#c0392b" if any(f.startswith(name) for f in entry.get("flags", [])) else "#0b5cad"
            if ci and all(c is not None and np.isfinite(c) for c in ci):
                ax.plot(ci, [y, y], color=color, lw=1.6)
            ax.plot([value], [y], "o", color=color, ms=4)
        overall = section["overall"].get(name)
        if overall is not None and np.isfinite(overall):
            ax.axvline(overall, color="grey", ls="--", lw=1, label=f"overall {overall:.3f}")
            ax.legend(fontsize=7, loc="lower left")
        ax.set_xlim(0, 1.02)
        ax.set_xlabel(name.replace("_", " "))
        ax.grid(axis="x", lw=0.4, alpha=0.5)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_yticks(pos, [label if ax is axes[0, 0] else "" for label, _ in rows], fontsize=7)
    fig.suptitle("Subgroups: figure and 95% interval (red: flagged)", fontsize=10)
    return fig


def training_curves_figure(history: pd.DataFrame) -> Figure | None:
    """Losses (left) and other metrics (right) per epoch from a run's ``history.csv``; None when it is empty."""
    from pandas.api.types import is_numeric_dtype

    if history is None or history.empty:
        return None
    x_name = "epoch" if "epoch" in history.columns else None
    x = history["epoch"].to_numpy() if x_name else np.arange(len(history))
    numeric = [
        c
        for c in history.columns
        if c != x_name and is_numeric_dtype(history[c]) and history[c].notna().any()
    ]
    losses = [c for c in numeric if "loss" in c.lower()]
    others = [c for c in numeric if c not in losses and c.lower() not in ("step", "lr", "seconds", "time")]
    if not losses and not others:
        return None
    fig, axes = _figure(9.0, 3.6, ncols=2)
    for ax, cols, title in ((axes[0, 0], losses, "Loss"), (axes[0, 1], others, "Metrics")):
        for c in cols:
            ok = history[c].notna().to_numpy()
            ax.plot(x[ok], history[c].to_numpy()[ok], "o-", ms=3, lw=1.4, label=c)
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        if cols:
            ax.legend(fontsize=7)
    return fig
