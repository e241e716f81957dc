"""One self-contained HTML report: every number with its interval, every plot, the model card.

Everything is embedded (plots as PNG data URIs, thumbnails as JPEG data URIs, CSS inline), so the file can be
mailed or opened offline on a phone. The report never shows file names, group ids or per-image metadata: those
can carry patient identifiers. A metadata value appears only as the name of a subgroup of at least the minimum
subgroup size (``subgroups.MIN_SUBGROUP_IMAGES`` by default).
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medclf import DISCLAIMER, __version__
from medclf._atomic import atomic_write_text
from medclf._lazy import require_extra
from medclf.evaluate.metrics import TOP1_METRICS
from medclf.explain.overlay import open_for_display, thumbnail_b64

if TYPE_CHECKING:
    import pandas as pd
    from PIL import Image

__all__ = [
    "PRIVACY_STATEMENT",
    "audit_findings",
    "confident_errors",
    "default_limits",
    "headline_rows",
    "write_report",
]

PRIVACY_STATEMENT = (
    "This report contains no patient identifiers: no file names, patient/lesion ids or per-image metadata are "
    "included, only aggregate numbers (a metadata value appears only as the name of a subgroup of at least the "
    "minimum subgroup size; rarer values are pooled unnamed) and, in the error gallery, downscaled image "
    "thumbnails. The full per-image table (predictions.csv, next to this report) keeps file paths, group ids and "
    "the metadata columns; share it only where the data's own terms allow."
)

# figure name -> (caption, spans the full width)
FIGURE_CAPTIONS: dict[str, tuple[str, bool]] = {
    "confusion_matrix": (
        "Confusion matrix: counts and row-normalised (the diagonal is each class's recall).",
        True,
    ),
    "roc": ("ROC curves, one class vs the rest, with AUC.", False),
    "pr": (
        "Precision-recall curves with average precision; dotted: prevalence (a useless model's precision).",
        False,
    ),
    "reliability": ("Reliability before and after temperature scaling (fitted on validation data).", False),
    "threshold_sweep": (
        "Sensitivity, specificity, PPV and NPV against the threshold; dashed: the operating point.",
        False,
    ),
    "training_curves": ("Training curves from the run's history.csv.", True),
    "subgroups": (
        "Each subgroup's figure with its 95% interval; dashed: the overall figure; red: a flagged subgroup.",
        True,
    ),
}

_HEADLINE_LABELS = {
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "auc": "AUC",
    "average_precision": "Average precision",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "macro_auc": "Macro AUC (one-vs-rest)",
    "macro_f1": "Macro F1",
    "weighted_f1": "Weighted F1",
    "cohen_kappa": "Cohen's kappa",
    "mcc": "MCC",
    "ece": "ECE (calibration error)",
    "brier": "Brier score",
    "top1_accuracy": "Accuracy, arg-max decision",
    "top1_balanced_accuracy": "Balanced accuracy, arg-max decision",
    "top1_macro_f1": "Macro F1, arg-max decision",
}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.{digits}f}"


_CI_METHOD_LABELS = {
    "wilson": "Wilson",
    "wilson (mean of per-class intervals)": "Wilson, per-class mean",
    "bootstrap (degenerate)": "bootstrap collapsed: too few cases",
}
"""How the report marks an interval that is not a plain bootstrap one (metrics.ci95_method)."""


def _fmt_ci(ci: Sequence[float | None] | None, method: str | None = None) -> str:
    if not ci or any(v is None or not math.isfinite(v) for v in ci):
        return ""
    label = _CI_METHOD_LABELS.get(method or "")
    return f"95% CI {ci[0]:.3f}–{ci[1]:.3f}" + (f" ({label})" if label else "")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def confident_errors(pred_df: pd.DataFrame, classes: Sequence[str], limit: int = 12) -> pd.DataFrame:
    """The wrong predictions with the highest probability on the predicted class (most confident first)."""
    wrong = pred_df[pred_df["pred"].astype(str) != pred_df["label"].astype(str)].copy()
    if wrong.empty:
        return wrong
    cols = [f"prob_{c}" for c in classes]
    probs = wrong[cols].to_numpy(dtype=np.float64)
    pred_idx = wrong["pred"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    wrong["confidence"] = probs[np.arange(len(wrong)), pred_idx]
    return wrong.sort_values("confidence", ascending=False, kind="mergesort").head(limit)


def default_limits(metrics: Mapping[str, Any]) -> list[str]:
    """Generic limits of a model card; callers add the data-specific ones."""
    threshold_default = f"threshold {_fmt(metrics.get('threshold'))}"
    skipped = (metrics.get("threshold_skipped"), (metrics.get("calibration") or {}).get("skipped"))
    unfitted = [
        (name, default)
        for (name, default), why in zip(
            (("decision threshold", threshold_default), ("temperature", "T = 1")), skipped, strict=True
        )
        if why
    ]
    if unfitted:
        names, defaults = " and the ".join(n for n, _ in unfitted), ", ".join(d for _, d in unfitted)
        fitted_text = (
            f"The validation split was too small to fit the {names}: the default ({defaults}) is used; a site "
            "should fit its own on its labelled data before relying on the decisions."
        )
    else:
        fitted_text = (
            "The decision threshold and the temperature were chosen on validation data; a new site should "
            "re-check them on its own labelled data before relying on them."
        )
    items = [
        "Evaluated retrospectively on images from the same source as the training data; performance on other "
        "hospitals, devices, populations (e.g. skin types, ages) or image qualities is unknown.",
        "Not prospectively or clinically validated; not a medical device.",
        fitted_text,
        "The model sees only the image (and metadata, if configured): no history, no examination, no other tests.",
    ]
    small = [
        name
        for name, pc in (metrics.get("per_class") or {}).items()
        if isinstance(pc, Mapping) and (pc.get("support") or 0) < 30
    ]
    if small:
        items.append(
            f"Few test images for {', '.join(small)} (fewer than 30 each): their per-class numbers have wide intervals."
        )
    return items


def audit_findings(audit: Mapping[str, Any]) -> list[str]:
    """The findings of a `medclf data audit` report as sentences: what was found, then its warnings. Counts and
    class names only; file names, paths and group ids stay out (they may name patients)."""
    if not isinstance(audit.get("dataset"), Mapping):
        return []
    d, g = audit["dataset"], audit.get("groups") or {}
    lines = [
        f"{d.get('images', '?')} images in {len(d.get('classes') or [])} classes "
        f"({', '.join(map(str, d.get('classes') or []))}); layout {d.get('layout', '?')}.",
        f"{len(audit.get('bad_files') or [])} unreadable file(s), {len(audit.get('exact_duplicates') or [])} group(s) "
        f"of exact duplicates, {len(audit.get('near_duplicates') or [])} of near duplicates, "
        f"{len(audit.get('group_leakage') or [])} group(s) in more than one split.",
    ]
    if g:
        lines.append(
            f"{g.get('n_groups', '?')} patients or lesions, {g.get('multi_image_groups', 0)} of them with several "
            f"images (at most {g.get('max_images_per_group', '?')})."
        )
    warnings = [str(w) for w in audit.get("warnings") or [] if "/" not in str(w) and "\\" not in str(w)]
    return lines + [f"Warning: {w}" for w in warnings]


def _summarise(obj: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Flatten an audit mapping into short (key, value) rows: numbers, booleans and short words only.

    Strings that look like paths and long lists are left out (they may name patients or files); lists are
    shown as their length.
    """
    rows: list[tuple[str, str]] = []
    if not isinstance(obj, Mapping) or depth > 2:
        return rows
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            rows.append((name, "yes" if value else "no"))
        elif isinstance(value, int | float | np.integer | np.floating):
            rows.append((name, _fmt(value) if isinstance(value, float | np.floating) else str(value)))
        elif isinstance(value, str):
            if len(value) <= 60 and "/" not in value and "\\" not in value:
                rows.append((name, value))
        elif isinstance(value, list | tuple):
            if (
                value
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
                and len(value) <= 10
            ):
                rows.append((name, ", ".join(_fmt(v) for v in value)))
            else:
                rows.append((name, f"{len(value)} item(s)"))
        elif isinstance(value, Mapping):
            rows.extend(_summarise(value, f"{name}.", depth + 1))
    return rows[:60]


def headline_rows(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    """The report's headline figures: ``{label, value, ci}`` rows of formatted text (the PDF page uses them too)."""
    ci = metrics.get("ci95") or {}
    ci_method = metrics.get("ci95_method") or {}
    names: list[str] = []
    if "sensitivity" in metrics:
        names += ["sensitivity", "specificity", "ppv", "npv", "auc", "average_precision"]
    names += ["accuracy", "balanced_accuracy"]
    if "auc" not in metrics or len(metrics.get("classes") or []) > 2:
        names.append("macro_auc")
    names += ["macro_f1", "weighted_f1", "cohen_kappa", "mcc", "ece", "brier"]
    names += [m for m in TOP1_METRICS if m in metrics]
    positive = metrics.get("positive_class")
    group = "+".join(positive) if isinstance(positive, list) and len(positive) > 1 else ""
    screening = ("sensitivity", "specificity", "ppv", "npv", "auc", "average_precision")

    def label(m: str) -> str:  # a positive group's block says which group it is about
        text = _HEADLINE_LABELS.get(m, m)
        return f"{text} ({group})" if group and m in screening else text

    return [
        {"label": label(m), "value": _fmt(metrics.get(m)), "ci": _fmt_ci(ci.get(m), ci_method.get(m))}
        for m in names
        if m in metrics
    ]


def _per_class_rows(metrics: Mapping[str, Any]) -> list[dict[str, str]]:
    pc_ci = metrics.get("per_class_ci95") or {}
    pc_method = metrics.get("per_class_ci95_method") or {}
    rows = []
    for name, pc in (metrics.get("per_class") or {}).items():
        ci, method = pc_ci.get(name, {}), pc_method.get(name, {})

        def cell(key: str, ci_key: str | None = None, ci=ci, pc=pc, method=method) -> str:
            text = _fmt(pc.get(key))
            bounds = ci.get(ci_key or key)
            if text != "–" and bounds and all(b is not None and math.isfinite(b) for b in bounds):
                text += f" [{bounds[0]:.2f}, {bounds[1]:.2f}]"
                # the marks the table's footnote explains
                kind = str(method.get(ci_key or key) or "")
                text += "*" if kind.startswith("wilson") else "†" if kind == "bootstrap (degenerate)" else ""
            return text

        rows.append(
            {
                "name": name,
                "support": str(pc.get("support", "")),
                "precision": cell("precision"),
                "recall": cell("recall"),
                "specificity": cell("specificity"),
                "npv": _fmt(pc.get("npv")),
                "f1": cell("f1"),
                "auc": cell("auc"),
            }
        )
    return rows


def _operating_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if "threshold" in metrics:
        positive = metrics.get("positive_class")
        thr = _fmt(metrics["threshold"])
        if isinstance(positive, list) and len(positive) > 1:
            rows.append(("positive classes", ", ".join(positive)))
            rows.append(
                (
                    "decision",
                    f"positive when P({'+'.join(positive)}) ≥ {thr}: then the most probable of "
                    f"{', '.join(positive)}, otherwise the most probable other class",
                )
            )
        else:
            positive = positive[0] if isinstance(positive, list) else positive
            rows.append(("positive class", str(positive)))
            rows.append(("decision", f"positive when P({positive}) ≥ {thr}"))
        rows.append(("threshold from", str(metrics.get("threshold_source", "given"))))
    else:
        rows.append(("decision", "the class with the highest probability"))
    cal = metrics.get("calibration") or {}
    if metrics.get("threshold_skipped"):
        rows.append(("threshold not chosen", str(metrics["threshold_skipped"])))
    if cal:
        rows.append(("temperature", f"{_fmt(cal.get('temperature'))} ({cal.get('source', '')})"))
        if cal.get("skipped"):
            rows.append(("temperature not fitted", str(cal["skipped"])))
        rows.append(("ECE before → after", f"{_fmt(cal.get('ece_before'))} → {_fmt(cal.get('ece_after'))}"))
    return rows


def _subgroup_tables(section: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One table per metadata column: n, each subgroup figure with its interval, and the flags."""
    if not section:
        return []
    names = list(section.get("metrics") or [])
    tables = []
    for column, part in (section.get("columns") or {}).items():
        rows = []
        for entry in part["subgroups"]:
            name = str(entry["name"])
            if entry.get("pooled_values"):
                k = entry["pooled_values"]
                name += f" ({k} value{'s' if k > 1 else ''})"
            if entry.get("too_small"):
                note = f"too small (under {section.get('min_size')} images): not evaluated"
                rows.append({"name": name, "n": str(entry["n"]), "cells": [note], "flags": [], "span": True})
                continue
            cells = []
            for m in names:
                text = _fmt(entry.get(m))
                ci = (entry.get("ci95") or {}).get(m)
                if text != "–" and ci and all(c is not None and math.isfinite(c) for c in ci):
                    text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
                cells.append(text)
            n = str(entry["n"]) + (f" ({entry['n_positive']} pos.)" if "n_positive" in entry else "")
            flagged = list(dict.fromkeys(f.split(" ", 1)[0] for f in entry.get("flags") or []))
            rows.append({"name": name, "n": n, "cells": cells, "flags": flagged, "span": False})
        tables.append({"column": column, "kind": part.get("kind", ""), "rows": rows})
    return tables


def write_report(
    out_dir: str | Path,
    *,
    metrics: Mapping[str, Any],
    figures: Mapping[str, bytes] | None = None,
    title: str | None = None,
    subtitle: str = "",
    split_summary: Mapping[str, Any] | None = None,
    audit: Mapping[str, Any] | None = None,
    model_card: Mapping[str, str] | None = None,
    limits: Sequence[str] | None = None,
    speed: Mapping[str, str] | None = None,
    errors: pd.DataFrame | None = None,
    explain: Callable[[str], Image.Image] | None = None,
    filename: str = "report.html",
) -> Path:
    """Render ``out_dir/report.html`` and return its path.

    ``figures`` maps names (``confusion_matrix``, ``roc``, ``pr``, ``reliability``, ``threshold_sweep``,
    ``training_curves`` or others) to PNG bytes. ``errors`` is ``confident_errors(...)``; ``explain(path)``, when
    given, returns an overlay image (e.g. Grad-CAM) shown beside each error's thumbnail.
    ``split_summary`` has ``header`` + ``rows`` (a table) and ``facts`` (a mapping).
    """
    require_extra("report", "the evaluation report (report.html)")
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("medclf.evaluate", "templates"), autoescape=select_autoescape(["html", "j2"])
    )
    template = env.get_template("report.html.j2")

    figs, subgroup_fig = [], None
    for name, data in (figures or {}).items():
        caption, wide = FIGURE_CAPTIONS.get(name, (name.replace("_", " "), False))
        fig = {"data": _b64(data), "caption": caption, "wide": wide}
        if name == "subgroups":  # shown in its own section, beside the tables
            subgroup_fig = fig
        else:
            figs.append(fig)
    subgroups = metrics.get("subgroups") or {}

    gallery = []
    explained = False
    if errors is not None and not errors.empty:
        for _, row in errors.iterrows():
            image = open_for_display(str(row["path"])) if "path" in row else None
            overlay = None
            if explain is not None and image is not None:
                try:
                    overlay = thumbnail_b64(explain(str(row["path"])))
                    explained = True
                except Exception:  # an explanation failure should cost one overlay, not the report
                    overlay = None
            gallery.append(
                {
                    "thumb": thumbnail_b64(image) if image is not None else None,
                    "overlay": overlay,
                    "label": str(row["label"]),
                    "pred": str(row["pred"]),
                    "confidence": f"p = {float(row['confidence']):.3f}",
                }
            )

    boot = metrics.get("bootstrap") or {}
    bootstrap_text = (
        f"bootstrap, {boot.get('n_resamples')} resamples ({boot.get('method', '')}), seed {boot.get('seed')}"
        if boot
        else "not computed"
    )
    if boot and any(str(v).startswith("wilson") for v in (metrics.get("ci95_method") or {}).values()):
        bootstrap_text += "; Wilson score intervals where marked, because the bootstrap collapsed there"
    split_summary = split_summary or {}
    html = template.render(
        title=title or "medclf evaluation report",
        subtitle=subtitle,
        version=__version__,
        created=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        disclaimer=DISCLAIMER,
        privacy=PRIVACY_STATEMENT,
        n=metrics.get("n"),
        n_groups=metrics.get("n_groups"),
        bootstrap_text=bootstrap_text,
        headline=headline_rows(metrics),
        notes=list(metrics.get("notes") or []),
        warnings=list(metrics.get("warnings") or []),
        operating=_operating_rows(metrics),
        figures=figs,
        per_class=_per_class_rows(metrics),
        subgroup_metrics=[_HEADLINE_LABELS.get(m, m) for m in subgroups.get("metrics") or []],
        subgroup_tables=_subgroup_tables(subgroups),
        subgroup_flags=list(subgroups.get("flags") or []),
        subgroup_skipped=list(subgroups.get("skipped") or []),
        subgroup_fig=subgroup_fig,
        subgroup_min=subgroups.get("min_size"),
        subgroup_margin=subgroups.get("sensitivity_margin"),
        split_header=list(split_summary.get("header") or []),
        split_rows=[list(map(str, r)) for r in split_summary.get("rows") or []],
        split_facts=list((split_summary.get("facts") or {}).items()),
        audit_findings=audit_findings(audit) if audit else [],
        audit=_summarise(audit) if audit and not audit_findings(audit) else [],
        model_card=list((model_card or {}).items()),
        limits=list(limits if limits is not None else default_limits(metrics)),
        speed=list((speed or {}).items()),
        gallery=gallery,
        explained=explained,
    )
    path = Path(out_dir) / filename
    atomic_write_text(path, html)
    return path
