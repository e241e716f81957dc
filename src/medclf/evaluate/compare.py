"""Leaderboards of runs, evaluations and cross-validations, with a paired test between the top two.

Each entry is one folder:

- an evaluation folder (``metrics.json`` + ``predictions.csv``, written by `medclf evaluate`);
- a run folder (``run.json``; its ``test_predictions.csv`` is evaluated with the run's threshold);
- a cross-validation folder (``cv_metrics.json`` = {"folds": [...], "mean": {...}, "std": {...}}).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medclf import DISCLAIMER
from medclf._atomic import atomic_write_json, atomic_write_text
from medclf.errors import DataError
from medclf.evaluate.metrics import compute_metrics, json_safe, paired_bootstrap

__all__ = ["Entry", "compare", "load_entry"]

# shown when at least one entry has them, in this order
METRIC_COLUMNS = (
    "auc",
    "macro_auc",
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "cohen_kappa",
    "mcc",
    "ece",
    "brier",
)
_LOWER_IS_BETTER = {"ece", "brier"}


@dataclass
class Entry:
    """One leaderboard row."""

    name: str
    kind: str
    """evaluation, run or cv."""
    source: Path
    metrics: dict[str, Any]
    ci95: dict[str, list[float | None]] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)
    """cv only: standard deviation over folds."""
    n_folds: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    train_seconds: float | None = None
    images_per_second: float | None = None
    predictions: pd.DataFrame | None = None
    classes: list[str] = field(default_factory=list)
    threshold: float | None = None
    positive_class: str | list[str] | None = None


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as JSON ({exc}); regenerate it") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    return data


def load_entry(path: str | Path, *, n_boot: int = 1000, seed: int = 0) -> Entry:
    """Read one folder as a leaderboard entry (see the module docstring for what it may be)."""
    from medclf.evaluate.pipeline import INCOMPLETE_FILE, prediction_arrays, read_run_context, run_params
    from medclf.models.run_io import RunDir

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} is not a folder; pass run, evaluation or cross-validation folders")
    if (path / INCOMPLETE_FILE).exists():
        raise DataError(
            f"{path}: this evaluation did not finish (it holds an {INCOMPLETE_FILE} marker: interrupted, or still "
            "running), so its files may be partial; run medclf evaluate again"
        )
    if (path / "metrics.json").is_file():
        m = _json(path / "metrics.json")
        run = m.get("run") or {}
        timing = m.get("timing") or {}
        preds = pd.read_csv(path / "predictions.csv") if (path / "predictions.csv").is_file() else None
        return Entry(
            name=str(run.get("name") or path.name),
            kind="evaluation",
            source=path,
            metrics=m,
            ci95=m.get("ci95") or {},
            params=run.get("params") or {},
            train_seconds=timing.get("train_seconds"),
            images_per_second=timing.get("images_per_second"),
            predictions=preds,
            classes=list(m.get("classes") or []),
            threshold=m.get("threshold"),
            positive_class=m.get("positive_class"),
        )
    if (path / "cv_metrics.json").is_file():
        m = _json(path / "cv_metrics.json")
        ctx = read_run_context(path)
        mean, std = m.get("mean") or {}, m.get("std") or {}
        if not isinstance(mean, dict) or not mean:
            raise DataError(
                f"{path / 'cv_metrics.json'}: no 'mean' metrics; expected {{'folds': [...], 'mean': {{...}}, 'std': {{...}}}}"
            )
        folds = m.get("folds") or []
        secs = [
            f.get("train_seconds")
            for f in folds
            if isinstance(f, dict) and f.get("train_seconds") is not None
        ]
        return Entry(
            name=str((ctx["config"] or {}).get("name") or m.get("name") or path.name),
            kind="cv",
            source=path,
            metrics=mean,
            std={k: v for k, v in std.items() if isinstance(v, int | float)},
            n_folds=len(folds) or None,
            params=run_params(ctx),
            train_seconds=float(sum(secs)) if secs else mean.get("train_seconds"),
            classes=list(m.get("classes") or []),
        )
    if RunDir(path).is_run():
        ctx = read_run_context(path)
        info = ctx["info"]
        classes = [str(c) for c in info.classes]
        entry = Entry(
            name=str((ctx["config"] or {}).get("name") or path.name),
            kind="run",
            source=path,
            metrics={},
            params=run_params(ctx),
            train_seconds=info.train_seconds,
            classes=classes,
            threshold=info.threshold,
            positive_class=info.positive_class or info.positive_classes or None,
        )
        test_csv = path / "test_predictions.csv"
        if test_csv.is_file():
            preds = pd.read_csv(test_csv)
            y, probs = prediction_arrays(preds, classes, str(test_csv))
            positive = [classes.index(c) for c in info.threshold_classes if c in classes] or None
            groups = preds["group"].astype(str).to_numpy() if "group" in preds.columns else None
            entry.metrics = compute_metrics(
                y,
                probs,
                classes,
                groups=groups,
                threshold=info.threshold,
                positive_index=positive,
                n_boot=n_boot,
                seed=seed,
            )
            entry.ci95 = entry.metrics.get("ci95") or {}
            entry.predictions = preds
        return entry
    raise DataError(
        f"{path}: no metrics.json, cv_metrics.json or run.json; pass folders written by `medclf evaluate`, "
        "`medclf train` or `medclf cv`"
    )


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _cell(e: Entry, metric: str) -> str:
    v = e.metrics.get(metric)
    if not _finite(v):
        return ""
    if e.kind == "cv":
        s = e.std.get(metric)
        return f"{v:.3f} ± {s:.3f}" if _finite(s) else f"{v:.3f}"
    ci = e.ci95.get(metric)
    if ci and all(_finite(c) for c in ci):
        return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{v:.3f}"


def _sort_metric(entries: Sequence[Entry], requested: str | None) -> str:
    if requested:
        if not any(_finite(e.metrics.get(requested)) for e in entries):
            raise DataError(
                f"--sort {requested}: no entry has that metric; choose one of {', '.join(METRIC_COLUMNS)}"
            )
        return requested
    for m in ("auc", "macro_auc", "accuracy"):
        if all(_finite(e.metrics.get(m)) for e in entries if e.metrics):
            return m
    return "accuracy"


def _paired_test(a: Entry, b: Entry, n_boot: int, seed: int) -> dict[str, Any]:
    """Bootstrap difference between the top two, on the images both were evaluated on (matched by path)."""
    if a.predictions is None or b.predictions is None:
        return {
            "done": False,
            "reason": "both entries need per-image predictions (cross-validation summaries have none)",
        }
    if a.classes != b.classes:
        return {"done": False, "reason": f"different classes ({a.classes} vs {b.classes})"}
    classes = a.classes
    cols = ["path", "label", *(f"prob_{c}" for c in classes)]
    for e in (a, b):
        if any(c not in e.predictions.columns for c in cols):
            return {"done": False, "reason": f"{e.source}: predictions lack {cols}"}
    left = a.predictions[[*cols, *(["group"] if "group" in a.predictions.columns else [])]].drop_duplicates(
        "path"
    )
    right = b.predictions[cols].drop_duplicates("path")
    joined = left.merge(right, on="path", suffixes=("_a", "_b"))
    if joined.empty:
        return {
            "done": False,
            "reason": "no image in common (matched by path): they were evaluated on different data",
        }
    if (joined["label_a"].astype(str) != joined["label_b"].astype(str)).any():
        return {"done": False, "reason": "the same image has different labels in the two predictions files"}
    index = {c: i for i, c in enumerate(classes)}
    y = joined["label_a"].astype(str).map(index).to_numpy()
    pa = joined[[f"prob_{c}_a" for c in classes]].to_numpy(dtype=np.float64)
    pb = joined[[f"prob_{c}_b" for c in classes]].to_numpy(dtype=np.float64)
    groups = joined["group"].astype(str).to_numpy() if "group" in joined.columns else None
    pos = a.positive_class
    names = [pos] if isinstance(pos, str) else list(pos or [])
    positive = [classes.index(c) for c in names if c in classes] or None
    result = paired_bootstrap(
        y,
        pa,
        pb,
        classes,
        groups=groups,
        threshold_a=a.threshold,
        threshold_b=b.threshold,
        positive_index=positive,
        n_boot=n_boot,
        seed=seed,
    )
    return {
        "done": True,
        "a": a.name,
        "b": b.name,
        "n_common": len(joined),
        "n_only_a": len(left) - len(joined),
        "n_only_b": len(right) - len(joined),
        "n_boot": n_boot,
        "results": result,
    }


def _tables(entries: Sequence[Entry]) -> tuple[list[str], list[list[str]], pd.DataFrame]:
    metrics = [m for m in METRIC_COLUMNS if any(_finite(e.metrics.get(m)) for e in entries)]
    param_keys: list[str] = []
    for e in entries:
        param_keys += [k for k in e.params if k not in param_keys]
    header = ["#", "name", "kind", "n", *metrics, *param_keys, "train s", "images/s"]
    rows, flat = [], []
    for rank, e in enumerate(entries, 1):
        n = e.metrics.get("n")
        n_text = f"{e.n_folds} folds" if e.kind == "cv" and e.n_folds else (str(n) if n is not None else "")
        rows.append(
            [
                str(rank),
                e.name,
                e.kind,
                n_text,
                *(_cell(e, m) for m in metrics),
                *(str(e.params.get(k, "")) for k in param_keys),
                f"{e.train_seconds:.0f}" if _finite(e.train_seconds) else "",
                f"{e.images_per_second:.1f}" if _finite(e.images_per_second) else "",
            ]
        )
        rec: dict[str, Any] = {"rank": rank, "name": e.name, "kind": e.kind, "n": n, "n_folds": e.n_folds}
        for m in metrics:
            rec[m] = e.metrics.get(m) if _finite(e.metrics.get(m)) else None
            ci = e.ci95.get(m) or [None, None]
            rec[f"{m}_lo"], rec[f"{m}_hi"] = ci[0], ci[1]
            if e.kind == "cv":
                rec[f"{m}_std"] = e.std.get(m)
        rec.update(e.params)
        rec["train_seconds"] = e.train_seconds
        rec["images_per_second"] = e.images_per_second
        rec["source"] = str(e.source)
        flat.append(rec)
    return header, rows, pd.DataFrame(flat)


_SUBGROUP_COLUMNS = ("sensitivity", "specificity", "auc", "balanced_accuracy", "macro_auc")
"""The subgroup figures shown side by side (those every compared evaluation has)."""


def _subgroup_cell(entry: dict[str, Any], metric: str) -> str:
    if entry.get("too_small"):
        return "too small"
    v, ci = entry.get(metric), (entry.get("ci95") or {}).get(metric)
    if not _finite(v):
        return ""
    text = f"{v:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and all(_finite(c) for c in ci) else "")
    return text + (" (flagged)" if any(f.startswith(metric) for f in entry.get("flags") or []) else "")


def _subgroup_comparison(entries: Sequence[Entry]) -> dict[str, Any]:
    """Per-subgroup figures of the evaluations side by side: one table per metadata column they share, when they
    were evaluated on the same images (matched by path)."""
    evals = [
        (rank, e) for rank, e in enumerate(entries, 1) if (e.metrics.get("subgroups") or {}).get("columns")
    ]
    if len(evals) < 2:
        return {
            "done": False,
            "reason": "fewer than two evaluations with subgroups (medclf evaluate on data with metadata)",
        }
    paths = [
        frozenset(e.predictions["path"].astype(str))
        if e.predictions is not None and "path" in e.predictions
        else None
        for _, e in evals
    ]
    if any(p is None for p in paths) or len(set(paths)) > 1:
        return {"done": False, "reason": "the evaluations were not made on the same images (matched by path)"}
    sections = [e.metrics["subgroups"] for _, e in evals]
    metrics = [m for m in _SUBGROUP_COLUMNS if all(m in (s.get("metrics") or []) for s in sections)]
    shared = [c for c in sections[0]["columns"] if all(c in s["columns"] for s in sections[1:])]
    if not shared:
        return {"done": False, "reason": "no metadata column evaluated in all of them"}
    tables: dict[str, Any] = {}
    for column in shared:
        by_name = [{str(g["name"]): g for g in s["columns"][column]["subgroups"]} for s in sections]
        names = list(dict.fromkeys(n for table in by_name for n in table))
        header = ["subgroup", "n", *(f"#{rank} {e.name}: {m}" for rank, e in evals for m in metrics)]
        rows = []
        for name in names:
            n = next(str(t[name]["n"]) for t in by_name if name in t)
            rows.append([name, n, *(_subgroup_cell(t.get(name, {}), m) for t in by_name for m in metrics)])
        tables[column] = {"header": header, "rows": rows}
    return {"done": True, "metrics": metrics, "tables": tables}


def _subgroup_markdown(result: dict[str, Any]) -> list[str]:
    if not result.get("done"):
        return [f"Subgroups side by side: not shown — {result.get('reason', '')}."]
    lines = ["## Subgroups", "", "Brackets: 95% interval; (flagged): flagged by that evaluation.", ""]
    for column, table in result["tables"].items():
        lines += [f"### {column}", "", "| " + " | ".join(table["header"]) + " |"]
        lines += ["|" + "|".join("---" for _ in table["header"]) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table["rows"]]
        lines.append("")
    return lines


def _paired_lines(test: dict[str, Any]) -> list[str]:
    if not test.get("done"):
        return [f"Paired test between the top two: not done — {test.get('reason', '')}."]
    lines = [
        f"Paired bootstrap, {test['a']} − {test['b']} on {test['n_common']} shared images ({test['n_boot']} resamples):"
    ]
    for m, r in test["results"].items():
        lo, hi = r["ci95"]
        lines.append(
            f"{m}: {r['a']:.3f} vs {r['b']:.3f}, difference {r['diff']:+.3f} (95% CI {lo:+.3f} to {hi:+.3f}, p = {r['p_value']:.3f})"
        )
    return lines


def compare(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    sort_by: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``leaderboard.{md,html,csv}`` and ``compare.json`` to ``out_dir``; returns the compare.json content."""
    if not paths:
        raise DataError("no folders to compare; pass two or more run, evaluation or cv folders")
    entries = [load_entry(p, n_boot=n_boot, seed=seed) for p in paths]
    metric = _sort_metric(entries, sort_by)
    sign = 1.0 if metric in _LOWER_IS_BETTER else -1.0
    entries.sort(key=lambda e: sign * e.metrics[metric] if _finite(e.metrics.get(metric)) else math.inf)
    test = (
        _paired_test(entries[0], entries[1], n_boot, seed)
        if len(entries) >= 2
        else {"done": False, "reason": "one entry only"}
    )
    header, rows, flat = _tables(entries)
    subgroups = _subgroup_comparison(entries)

    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "leaderboard.csv", flat.to_csv(index=False))
    md = [f"# Leaderboard (sorted by {metric})", "", f"_{DISCLAIMER}_", ""]
    md += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    md += ["", "Brackets: bootstrap 95% interval; ± : standard deviation over cross-validation folds.", ""]
    md += _paired_lines(test)
    md += ["", *_subgroup_markdown(subgroups)]
    atomic_write_text(out_dir / "leaderboard.md", "\n".join(md) + "\n")
    atomic_write_text(
        out_dir / "leaderboard.html", _html(header, rows, metric, _paired_lines(test), subgroups)
    )
    result = {
        "sort_by": metric,
        "entries": flat.to_dict(orient="records"),
        "paired_test": test,
        "subgroups": subgroups,
        "disclaimer": DISCLAIMER,
    }
    atomic_write_json(out_dir / "compare.json", json_safe(result))
    return result


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _html(
    header: list[str], rows: list[list[str]], metric: str, paired: list[str], subgroups: dict[str, Any]
) -> str:
    esc = html.escape
    paired_html = "".join(f"<p>{esc(line)}</p>" for line in paired)
    if subgroups.get("done"):
        subgroup_html = '<p class="muted">Brackets: 95% interval; (flagged): flagged by that evaluation.</p>'
        subgroup_html += "".join(
            f"<h3>{esc(column)}</h3>" + _html_table(t["header"], t["rows"])
            for column, t in subgroups["tables"].items()
        )
    else:
        subgroup_html = f"<p>Not shown: {esc(str(subgroups.get('reason', '')))}.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>medclf leaderboard</title>
<style>
body {{ font: 15px/1.5 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0; color: #1b1f24; }}
main {{ max-width: 1200px; margin: 0 auto; padding: 12px 16px 40px; }}
.scroll {{ overflow-x: auto; }} table {{ border-collapse: collapse; font-size: .88em; }}
th, td {{ border-bottom: 1px solid #d8dde3; padding: 5px 8px; white-space: nowrap; text-align: right; }}
th {{ background: #f5f7f9; }} td:nth-child(2), th:nth-child(2) {{ text-align: left; }}
.banner {{ background: #fff4e0; border-left: 4px solid #e3a008; padding: 8px 12px; }}
.muted {{ color: #5b6470; font-size: .9em; }}
</style></head><body><main>
<h1>Leaderboard</h1><p class="muted">Sorted by {esc(metric)}. Brackets: bootstrap 95% interval; ±: standard deviation over folds.</p>
<div class="banner">{esc(DISCLAIMER)}</div>
{_html_table(header, rows)}
<h2>Top two</h2>{paired_html}
<h2>Subgroups</h2>{subgroup_html}
</main></body></html>
"""
