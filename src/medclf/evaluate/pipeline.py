"""From predictions to every artifact of `medclf evaluate`: predictions.csv, metrics.json, plots, report.html.

``evaluate_predictions`` starts where predictions exist (so it is testable without a model);
``evaluate_run`` produces them with the run's model first.

The honest-number rules live here: the decision threshold and the temperature come from the run (fitted on its
validation split) or are fitted now on validation predictions — never on the predictions being evaluated.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medclf import DISCLAIMER
from medclf._atomic import atomic_path, atomic_write_json, atomic_write_text
from medclf._lazy import has_extra, missing_extra, require_extra
from medclf.errors import DataError, MedclfError
from medclf.evaluate.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    log_probs,
    reliability_curve,
    temperature_skip_reason,
)
from medclf.evaluate.metrics import compute_metrics, json_safe
from medclf.evaluate.subgroups import SubgroupOptions, evaluate_subgroups
from medclf.evaluate.thresholds import (
    DEFAULT_THRESHOLD,
    choose_threshold,
    decide,
    positive_scores,
    threshold_skip_reason,
    threshold_sweep,
)
from medclf.models.run_io import RunDir, RunInfo

if TYPE_CHECKING:
    from PIL import Image

    from medclf.data import DatasetSpec

__all__ = [
    "INCOMPLETE_FILE",
    "evaluate_predictions",
    "evaluate_run",
    "prediction_arrays",
    "read_run_context",
    "run_params",
]

INCOMPLETE_FILE = "INCOMPLETE"
"""Present in an evaluation folder from the first file written to the last: an interrupted evaluation keeps it."""


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); restore or regenerate the file") from None
    return data if isinstance(data, dict) else None


def read_run_context(run_dir: str | Path | None) -> dict[str, Any]:
    """What evaluation needs from a run folder: ``info`` (run.json as a ``RunInfo``; with no run folder, one
    with every field at its default), ``config`` (config.yaml as read, ``{}`` when absent), and history.csv,
    split.csv, val_predictions.csv and audit.json, each None when absent."""
    ctx: dict[str, Any] = {
        "run_dir": None,
        "info": RunInfo(classes=[]),
        "config": {},
        "history": None,
        "split": None,
        "val": None,
        "audit": None,
    }
    if run_dir is None:
        return ctx
    import yaml

    run_dir = Path(run_dir)
    ctx["run_dir"] = run_dir
    if RunDir(run_dir).is_run():
        ctx["info"] = RunDir(run_dir).load_info()
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            ctx["config"] = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise DataError(f"{cfg_path}: not valid YAML ({exc}); restore the run's config") from None
    for key, name in (("history", "history.csv"), ("split", "split.csv"), ("val", "val_predictions.csv")):
        path = run_dir / name
        if path.is_file():
            try:
                ctx[key] = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
                raise DataError(f"{path}: cannot be read as CSV ({exc}); restore or regenerate it") from None
    ctx["audit"] = _read_json(run_dir / "audit.json")
    return ctx


def prediction_arrays(
    pred_df: pd.DataFrame, classes: Sequence[str], where: str = "predictions"
) -> tuple[np.ndarray, np.ndarray]:
    """(label indices, probabilities [n, k]) from a predictions table, with messages naming the bad row."""
    missing = [c for c in ("label", *(f"prob_{c}" for c in classes)) if c not in pred_df.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(missing)}; expected path,label,group,prob_<class>...,pred "
            f"for classes {list(classes)}"
        )
    labels = pred_df["label"].astype(str)
    index = {c: i for i, c in enumerate(classes)}
    unknown = ~labels.isin(index.keys())
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(
            f"{where}, row {row + 2}: label {labels.iloc[row]!r} is not one of the run's classes {list(classes)}; "
            "evaluate data labelled with the same classes (rename or merge them in the dataset spec)"
        )
    probs = pred_df[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise DataError(
            f"{where}, row {int(np.flatnonzero(bad)[0]) + 2}: empty or non-numeric probability; regenerate the predictions"
        )
    return labels.map(index).to_numpy(dtype=np.int64), probs


def _positive_indices(classes: Sequence[str], positive: str | Sequence[str] | None) -> list[int] | None:
    if positive is None or positive == []:
        return [1] if len(classes) == 2 else None
    names = [positive] if isinstance(positive, str) else list(positive)
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DataError(
            f"positive class {unknown[0]!r} is not one of the classes {list(classes)}; fix eval.positive_class(es)"
        )
    return [list(classes).index(n) for n in names]


def _split_summary(
    ctx: dict[str, Any], pred_df: pd.DataFrame, classes: Sequence[str], evaluated_on: str
) -> dict[str, Any]:
    """Counts only — images, groups and classes per split, and leakage between splits — never ids."""
    facts: dict[str, str] = {"evaluated on": evaluated_on}
    header: list[str] = []
    rows: list[list[Any]] = []
    split = ctx.get("split")
    if split is not None and {"label", "split"} <= set(split.columns):
        header = ["split", "images", "groups", *classes]
        has_group = "group" in split.columns
        for name in ("train", "val", "test"):
            part = split[split["split"] == name]
            if part.empty:
                continue
            counts = part["label"].astype(str).value_counts()
            rows.append(
                [
                    name,
                    len(part),
                    part["group"].nunique() if has_group else len(part),
                    *(int(counts.get(c, 0)) for c in classes),
                ]
            )
        if has_group:
            n_img, n_grp = len(split), split["group"].nunique()
            facts["grouping"] = (
                f"by patient/lesion id: {n_grp} groups for {n_img} images; a group never spans two splits"
                if n_grp < n_img
                else "none: every image is its own group (the data has no patient/lesion ids)"
            )
            groups_by_split = {
                s: set(split.loc[split["split"] == s, "group"].astype(str)) for s in ("train", "val", "test")
            }
            shared = len(groups_by_split["train"] & groups_by_split["test"])
            facts["groups in both train and test"] = f"{shared}" + (
                " — leakage: results are optimistic" if shared else ""
            )
    elif split is not None and "fold" in split.columns:
        facts["split"] = f"{split['fold'].nunique()} folds"
    if "group" in pred_df.columns:
        facts["evaluated images / groups"] = f"{len(pred_df)} / {pred_df['group'].astype(str).nunique()}"
    return {"header": header, "rows": rows, "facts": facts}


def _model_card(
    ctx: dict[str, Any], classes: Sequence[str], metrics: dict[str, Any], split_summary: dict[str, Any]
) -> dict[str, str]:
    info: RunInfo = ctx["info"]
    cfg = ctx.get("config") or {}
    model_cfg, train_cfg = cfg.get("model") or {}, cfg.get("train") or {}
    task = "binary" if len(classes) == 2 else f"{len(classes)}-class"
    card = {
        "intended use": (
            f"Research and education: {task} classification ({', '.join(classes)}) of images like the training "
            "data; a qualified clinician reviews every output. Not for diagnosis, triage or treatment decisions."
        ),
        "not a diagnosis": DISCLAIMER,
    }
    if info.model or model_cfg:
        parts = [str((info.model or {}).get("name") or model_cfg.get("name"))]
        if model_cfg.get("pretrained") is not None:
            parts.append("ImageNet-pretrained" if model_cfg.get("pretrained") else "trained from scratch")
        if train_cfg.get("strategy"):
            parts.append(f"strategy {train_cfg['strategy']}")
        if model_cfg.get("metadata"):
            parts.append(f"metadata: {', '.join(map(str, model_cfg['metadata']))}")
        card["model"] = ", ".join(parts)
    train_rows = [r for r in split_summary.get("rows", []) if r and r[0] in ("train", "val")]
    if train_rows:
        card["training data"] = "; ".join(
            f"{r[0]}: {r[1]} images ({', '.join(f'{c} {n}' for c, n in zip(classes, r[3:], strict=False))})"
            for r in train_rows
        )
    dataset = (cfg.get("data") or {}).get("root")
    if isinstance(dataset, str):
        card["dataset"] = Path(dataset).name  # the folder name only: full paths can name people
    card["evaluation data"] = split_summary.get("facts", {}).get("evaluated on", "")
    if info.created:
        card["trained"] = str(info.created)
    if info.versions:
        card["versions"] = ", ".join(f"{k} {v}" for k, v in info.versions.items())
    sub = metrics.get("subgroups") or {}
    if sub.get("columns"):
        card["subgroups evaluated"] = "; ".join(
            f"{col} ({len(part['subgroups'])} {part['kind']})" for col, part in sub["columns"].items()
        )
        card["subgroup flags"] = "; ".join(sub["flags"]) or "none"
    card["privacy"] = "No patient identifiers are included in this report."
    return card


def _speed_rows(info: RunInfo, timing: dict[str, Any] | None) -> dict[str, str]:
    rows: dict[str, str] = {}
    if info.train_seconds is not None:
        secs = float(info.train_seconds)
        rows["training time"] = f"{secs:.0f} s ({secs / 60:.1f} min)"
    if timing:
        if timing.get("images_per_second"):
            rows["inference speed"] = (
                f"{timing['images_per_second']:.1f} images/s ({timing.get('images')} images, batch {timing.get('batch_size', '?')})"
            )
        if timing.get("device"):
            rows["inference device"] = str(timing["device"])
    return rows


def run_params(ctx: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a leaderboard shows, from a ``read_run_context``: config.yaml (and run.json)."""
    cfg = ctx.get("config") or {}
    info: RunInfo = ctx["info"]
    out: dict[str, Any] = {}
    for section, keys in (
        ("model", ("name", "pretrained", "input_size", "metadata")),
        ("train", ("strategy", "epochs", "lr", "batch_size", "augment", "loss")),
    ):
        for key in keys:
            value = (cfg.get(section) or {}).get(key)
            if value is not None and value != []:
                out[f"{section}.{key}"] = ",".join(map(str, value)) if isinstance(value, list) else value
    if "model.name" not in out and info.model_name:
        out["model.name"] = info.model_name
    history = ctx.get("history")
    if history is not None and not history.empty:
        out["epochs_trained"] = len(history)
    return out


def evaluate_predictions(
    pred_df: pd.DataFrame,
    classes: Sequence[str],
    out_dir: str | Path,
    *,
    run_dir: str | Path | None = None,
    val_pred_df: pd.DataFrame | None = None,
    threshold: float | None = None,
    threshold_rule: str | None = None,
    positive_class: str | Sequence[str] | None = None,
    temperature: float | None = None,
    temperature_applied: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    audit: dict[str, Any] | None = None,
    explain: Callable[[str], Image.Image] | None = None,
    timing: dict[str, Any] | None = None,
    evaluated_on: str = "the given predictions",
    title: str | None = None,
    pdf: bool = False,
    gallery_size: int = 12,
    notes: Sequence[str] = (),
    split_name: str = "test",
    subgroups: SubgroupOptions | None = None,
) -> dict[str, Any]:
    """Write predictions.csv, metrics.json, plots/*.png and report.html (and report.pdf) to ``out_dir``.

    ``pred_df`` (and ``val_pred_df``) are predictions.csv tables. Their probabilities carry the run's temperature
    when ``temperature_applied`` (as ``predict_frame`` writes them); the temperature and the threshold are
    taken, in order, from the arguments, from ``run_dir/run.json``, or fitted on the *validation* predictions
    (``val_pred_df`` or ``run_dir/val_predictions.csv``) — never on ``pred_df`` — and not fitted at all on too
    few validation images (``calibration.temperature_skip_reason``, ``thresholds.threshold_skip_reason``).
    ``warnings`` in the result lists classes with too few evaluated images (``pred_df`` named as the
    ``split_name`` split), fits that were skipped, and the run's own warnings. ``subgroups`` in the result holds
    the figures per subgroup of ``pred_df``'s metadata columns (``medclf.evaluate.subgroups``; ``subgroups``
    chooses the columns, age bands, minimum size and flag margin). Returns the metrics dict. plots/,
    threshold_sweep.csv, report.html and report.pdf need the ``report`` extra; without it the rest is written, with
    a note that names the extra.
    """
    if pdf:
        require_extra("report", "medclf evaluate --pdf")
    out_dir = Path(out_dir)
    classes = [str(c) for c in classes]
    ctx = read_run_context(run_dir)
    info, eval_cfg = ctx["info"], ctx["config"].get("eval") or {}
    if val_pred_df is None:
        val_pred_df = ctx["val"]
    notes = list(notes)  # the caller's (e.g. skipped images) first, so the report shows them too

    y, p_in = prediction_arrays(pred_df, classes, "predictions")
    val = None
    if val_pred_df is not None and len(val_pred_df):
        val = prediction_arrays(val_pred_df, classes, "validation predictions")
        notes += _validation_overlap(pred_df, val_pred_df)
    cal = _calibration(info, eval_cfg, p_in, val, temperature, temperature_applied)
    probs = apply_temperature(cal.logits, cal.temperature)
    val_probs = apply_temperature(cal.val_logits, cal.temperature) if cal.val_logits is not None else None
    op = _operating_point(info, eval_cfg, classes, val, val_probs, threshold, threshold_rule, positive_class)
    notes += [op.note] if op.note else []
    metrics = _scored_metrics(pred_df, y, probs, classes, op, notes, n_boot, seed, subgroups)
    _add_provenance(metrics, ctx, pred_df, y, cal, op, classes, evaluated_on, split_name, timing)
    out = _predictions_table(pred_df, classes, probs, op)
    _mark_incomplete(out_dir)
    with atomic_path(out_dir / "predictions.csv") as tmp:
        out.to_csv(tmp, index=False)

    if has_extra("report"):
        probs_before = apply_temperature(cal.logits, 1.0)
        figures = _make_figures(
            ctx, y, probs, probs_before, classes, metrics, op.positive, op.threshold, out_dir
        )
        atomic_write_json(out_dir / "metrics.json", json_safe(metrics))
        _write_report_files(
            out_dir,
            ctx,
            pred_df,
            out,
            classes,
            metrics,
            figures,
            speed=_speed_rows(info, timing),
            audit=audit if audit is not None else ctx["audit"],
            explain=explain,
            evaluated_on=evaluated_on,
            gallery_size=gallery_size,
            pdf=pdf,
            title=title,
        )
    else:
        metrics["notes"].append(str(missing_extra("report", "the evaluation report (plots/, report.html)")))
        atomic_write_json(out_dir / "metrics.json", json_safe(metrics))
    (out_dir / INCOMPLETE_FILE).unlink(missing_ok=True)
    return metrics


def _validation_overlap(pred_df: pd.DataFrame, val_pred_df: pd.DataFrame) -> list[str]:
    """A note when evaluated images are also the validation images the fits are chosen on."""
    if "path" not in pred_df.columns or "path" not in val_pred_df.columns:
        return []
    overlap = len(set(pred_df["path"].astype(str)) & set(val_pred_df["path"].astype(str)))
    if not overlap:
        return []
    return [
        f"{overlap} evaluated images are validation images (used to choose the threshold/temperature): "
        "these results are optimistic; report the test split"
    ]


@dataclass
class _Calibration:
    """The temperature chosen for the evaluation, and the logits it divides."""

    logits: np.ndarray
    """Of the evaluated predictions, with the probabilities' own temperature undone."""
    val_logits: np.ndarray | None
    temperature: float
    source: str
    skipped: str | None


def _calibration(
    info: RunInfo,
    eval_cfg: dict[str, Any],
    p_in: np.ndarray,
    val: tuple[np.ndarray, np.ndarray] | None,
    temperature: float | None,
    temperature_applied: bool,
) -> _Calibration:
    """The temperature: given > run.json > fitted now on validation > 1."""
    t_run = info.temperature
    t_in = float(t_run) if (temperature_applied and t_run) else 1.0
    logits = log_probs(p_in) * t_in
    val_logits = log_probs(val[1]) * t_in if val is not None else None
    t_skipped = None
    if temperature is not None:
        t_final, t_source = float(temperature), "given"
    elif t_run and info.temperature_skipped:
        t_final, t_skipped = float(t_run), str(info.temperature_skipped)
        t_source = "run.json (not fitted during training: too few validation images)"
    elif t_run:
        t_final, t_source = float(t_run), "run.json (fitted on validation during training)"
    elif val is not None and eval_cfg.get("calibrate", True):
        t_skipped = temperature_skip_reason(len(val[0]))
        if t_skipped:
            t_final, t_source = 1.0, f"none (only {len(val[0])} validation predictions to fit on)"
        else:
            t_final = fit_temperature(val_logits, val[0])
            t_source = f"fitted now on {len(val[0])} validation predictions"
    else:
        t_final, t_source = 1.0, "none (no validation predictions to fit on)"
    return _Calibration(logits, val_logits, t_final, t_source, t_skipped)


@dataclass
class _OperatingPoint:
    """The decision rule: the positive classes' indices (None: arg-max) and the threshold on their summed
    probability."""

    positive: list[int] | None
    threshold: float | None = None
    source: str = ""
    skipped: str | None = None
    rule: str = "youden"
    note: str | None = None


def _operating_point(
    info: RunInfo,
    eval_cfg: dict[str, Any],
    classes: list[str],
    val: tuple[np.ndarray, np.ndarray] | None,
    val_probs: np.ndarray | None,
    threshold: float | None,
    threshold_rule: str | None,
    positive_class: str | Sequence[str] | None,
) -> _OperatingPoint:
    """The operating point: given > run.json > chosen on validation > 0.5."""
    positive_names = (
        positive_class
        if positive_class is not None
        else info.positive_classes
        or info.positive_class
        or eval_cfg.get("positive_classes")
        or eval_cfg.get("positive_class")
    )
    op = _OperatingPoint(_positive_indices(classes, positive_names))
    op.rule = threshold_rule or eval_cfg.get("threshold") or "youden"
    if op.positive is None:
        return op
    if threshold is not None:
        op.threshold, op.source = float(threshold), "given"
    elif info.threshold is not None and info.threshold_skipped:
        op.threshold, op.skipped = float(info.threshold), str(info.threshold_skipped)
        op.source = (
            f"default {op.threshold:g} (run.json: not chosen during training, too few validation images)"
        )
    elif info.threshold is not None:
        op.threshold, op.source = float(info.threshold), "run.json (chosen on validation during training)"
    elif val_probs is not None and val is not None:
        y_val_bin = np.isin(val[0], op.positive).astype(np.int8)
        op.skipped = threshold_skip_reason(y_val_bin, op.rule)
        if op.skipped:
            op.threshold = DEFAULT_THRESHOLD
            op.source = f"default {op.threshold:g} (too few validation predictions to apply rule {op.rule})"
        else:
            pos_names = [classes[i] for i in op.positive]
            score = positive_scores(val_probs, classes, pos_names)
            op.threshold = choose_threshold(y_val_bin, score, op.rule)
            op.source = f"chosen now on {len(y_val_bin)} validation predictions (rule {op.rule})"
    else:
        op.threshold, op.source = 0.5, "default 0.5 (no validation predictions: not tuned)"
        op.note = (
            "the threshold is the default 0.5: the run stores none and no validation predictions were given"
        )
    return op


def _scored_metrics(
    pred_df: pd.DataFrame,
    y: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    op: _OperatingPoint,
    notes: list[str],
    n_boot: int,
    seed: int,
    subgroups: SubgroupOptions | None,
) -> dict[str, Any]:
    """The figures with their intervals, for all and per subgroup, at the operating point ``op``."""
    groups = pred_df["group"].astype(str).to_numpy() if "group" in pred_df.columns else None
    thr, positive = op.threshold, op.positive
    metrics = compute_metrics(
        y, probs, classes, groups=groups, threshold=thr, positive_index=positive, n_boot=n_boot, seed=seed
    )
    metrics["notes"] = notes + metrics["notes"]
    metrics["subgroups"] = evaluate_subgroups(
        pred_df,
        y,
        probs,
        classes,
        metrics,
        groups=groups,
        threshold=thr,
        positive=positive,
        n_boot=n_boot,
        seed=seed,
        options=subgroups,
    )
    if positive is not None:
        metrics["threshold_source"] = op.source
        metrics["threshold_rule"] = op.rule if op.source.startswith("chosen") else None
        metrics["threshold_skipped"] = op.skipped
    return metrics


def _add_provenance(
    metrics: dict[str, Any],
    ctx: dict[str, Any],
    pred_df: pd.DataFrame,
    y: np.ndarray,
    cal: _Calibration,
    op: _OperatingPoint,
    classes: list[str],
    evaluated_on: str,
    split_name: str,
    timing: dict[str, Any] | None,
) -> None:
    """Where every choice came from: warnings, the calibration, the evaluated set, timing and the run."""
    from medclf.data.splits import small_split_warnings

    info, run_dir = ctx["info"], ctx["run_dir"]
    # the evaluated set's own warnings first, then skipped fits, then the run's (its split, as trained)
    evaluated = pred_df[["label"]].astype(str).assign(split=split_name if split_name == "val" else "test")
    warning_lines = small_split_warnings(evaluated, classes)
    for line in [cal.skipped, op.skipped, *info.warnings]:
        if line and line not in warning_lines:
            warning_lines.append(str(line))
    metrics["warnings"] = warning_lines
    metrics["calibration"] = {
        "temperature": cal.temperature,
        "source": cal.source,
        "skipped": cal.skipped,
        "ece_before": expected_calibration_error(apply_temperature(cal.logits, 1.0), y),
        "ece_after": metrics["ece"],
        "n_bins": 15,
    }
    metrics["evaluated_on"] = evaluated_on
    metrics["timing"] = {"train_seconds": info.train_seconds, **(timing or {})}
    metrics["run"] = {
        "name": ctx["config"].get("name") or info.name or (Path(run_dir).name if run_dir else None),
        "run_dir": str(Path(run_dir).resolve()) if run_dir else None,
        "params": run_params(ctx),
    }
    metrics["disclaimer"] = DISCLAIMER


def _predictions_table(
    pred_df: pd.DataFrame, classes: list[str], probs: np.ndarray, op: _OperatingPoint
) -> pd.DataFrame:
    """predictions.csv: the calibrated probabilities and the decision actually made."""
    out = pred_df.copy()
    for j, c in enumerate(classes):
        out[f"prob_{c}"] = probs[:, j]
    pos_list = [classes[i] for i in op.positive] if op.positive is not None else []
    out["pred"] = [classes[i] for i in decide(probs, classes, op.threshold, pos_list)]
    first = [c for c in ("path", "label", "group") if c in out.columns]
    prob_cols = [f"prob_{c}" for c in classes]
    rest = [c for c in out.columns if c not in (*first, *prob_cols, "pred")]
    return out[[*first, *prob_cols, "pred", *rest]]


def _write_report_files(
    out_dir: Path,
    ctx: dict[str, Any],
    pred_df: pd.DataFrame,
    out: pd.DataFrame,
    classes: list[str],
    metrics: dict[str, Any],
    figures: dict[str, tuple[bytes, Any]],
    *,
    speed: dict[str, str],
    audit: dict[str, Any] | None,
    explain: Callable[[str], Image.Image] | None,
    evaluated_on: str,
    gallery_size: int,
    pdf: bool,
    title: str | None,
) -> None:
    """report.html (and report.pdf) from the metrics, the figures and the run's facts."""
    from medclf.evaluate.report import confident_errors, write_report

    split_summary = _split_summary(ctx, pred_df, classes, evaluated_on)
    card = _model_card(ctx, classes, metrics, split_summary)
    errors = confident_errors(out, classes, limit=gallery_size) if "path" in out.columns else None
    name = metrics["run"]["name"]
    write_report(
        out_dir,
        metrics=metrics,
        figures={k: v for k, (v, _) in figures.items()},
        title=f"Evaluation report: {name}" if name else None,
        subtitle=f"{len(pred_df)} images · {evaluated_on}",
        split_summary=split_summary,
        audit=audit,
        model_card=card,
        speed=speed,
        errors=errors,
        explain=explain,
    )
    if pdf:
        _write_pdf(
            out_dir / "report.pdf",
            metrics,
            [fig for _, fig in figures.values()],
            title or f"Evaluation: {name}",
        )


def _mark_incomplete(out_dir: Path) -> None:
    atomic_write_text(
        out_dir / INCOMPLETE_FILE,
        "medclf evaluate was writing this folder and did not finish (interrupted, or still running): its files "
        "may be partial or left from an earlier evaluation. Run medclf evaluate again.\n",
    )


def _make_figures(
    ctx: dict[str, Any],
    y: np.ndarray,
    probs: np.ndarray,
    probs_before: np.ndarray,
    classes: list[str],
    metrics: dict[str, Any],
    positive: list[int] | None,
    thr: float | None,
    out_dir: Path,
) -> dict[str, tuple[bytes, Any]]:
    from medclf.evaluate import plots

    figs: dict[str, Any] = {}
    figs["confusion_matrix"] = plots.confusion_matrix_figure(metrics["confusion_matrix"], classes)
    single_pos = positive[0] if positive is not None and len(positive) == 1 else None
    figs["roc"] = plots.roc_figure(
        y, probs, classes, positive_index=single_pos, threshold=thr if len(classes) == 2 else None
    )
    figs["pr"] = plots.pr_figure(y, probs, classes, positive_index=single_pos)
    cal = metrics["calibration"]
    figs["reliability"] = plots.reliability_figure(
        {
            "before": reliability_curve(probs_before, y),
            f"after (T = {cal['temperature']:.2f})": reliability_curve(probs, y),
        },
        {"before": cal["ece_before"], f"after (T = {cal['temperature']:.2f})": cal["ece_after"]},
    )
    if positive is not None:
        y_bin = np.isin(y, positive).astype(np.int8)
        score = probs[:, positive].sum(axis=1)
        if 0 < y_bin.sum() < y_bin.size:
            sweep = threshold_sweep(y_bin, score)
            pos_name = " + ".join(classes[i] for i in positive)
            figs["threshold_sweep"] = plots.threshold_sweep_figure(
                sweep, thr, title=f"Operating points for {pos_name}"
            )
            table = pd.DataFrame(sweep)
            atomic_write_text(out_dir / "threshold_sweep.csv", table.to_csv(index=False, float_format="%.6g"))
    subgroup_fig = plots.subgroup_figure(metrics["subgroups"])
    if subgroup_fig is not None:
        figs["subgroups"] = subgroup_fig
    history = ctx.get("history")
    if history is not None:
        fig = plots.training_curves_figure(history)
        if fig is not None:
            figs["training_curves"] = fig
    return {name: (plots.save_png(fig, out_dir / "plots" / f"{name}.png"), fig) for name, fig in figs.items()}


def _write_pdf(path: Path, metrics: dict[str, Any], figures: list[Any], title: str) -> None:
    """A plain PDF: one page of headline numbers, then every plot (matplotlib's PdfPages, no extra dependency)."""
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    from medclf.evaluate.report import headline_rows

    page = Figure(figsize=(8.27, 11.69))
    lines = [title, "", DISCLAIMER, "", f"{metrics['n']} images", ""]
    lines += [f"{r['label']:<28} {r['value']:>7}   {r['ci']}" for r in headline_rows(metrics)]
    lines += ["", *(f"warning: {w}" for w in metrics.get("warnings", [])), *metrics.get("notes", [])]
    lines += [f"subgroup flag: {f}" for f in (metrics.get("subgroups") or {}).get("flags", [])]
    page.text(0.06, 0.95, "\n".join(lines), va="top", family="monospace", fontsize=9, wrap=True)
    with atomic_path(path, suffix=".pdf") as tmp, PdfPages(tmp) as pdf:
        pdf.savefig(page)
        for fig in figures:
            pdf.savefig(fig)


def evaluate_run(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "test",
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    skip_bad: bool = False,
    audit_path: str | Path | None = None,
    pdf: bool = False,
    explain: Callable[[str], Image.Image] | None = None,
    subgroups: SubgroupOptions | None = None,
) -> dict[str, Any]:
    """Predict the run's test split (or ``data``, read with the run's dataset spec) and evaluate it, per subgroup
    of the data's metadata columns too (``subgroups``), whether or not the model uses them."""
    from medclf.models import load_run
    from medclf.models.inference import predict_frame

    run_dir = Path(run_dir)
    if not RunDir(run_dir).is_run():
        raise MedclfError(
            f"{run_dir} is not a medclf run folder (no run.json); pass the folder `medclf train` wrote"
        )
    if split not in ("test", "val", "all"):
        raise MedclfError(f"--split {split!r}: choose test, val or all")
    if pdf:  # before predicting, not after
        require_extra("report", "medclf evaluate --pdf")
    loaded = load_run(run_dir)
    columns = subgroups.columns if subgroups is not None else None
    records, evaluated_on, unreadable = _records(run_dir, data, split, skip_bad, columns)
    if columns is not None:
        from medclf.evaluate.subgroups import subgroup_columns

        subgroup_columns(records, loaded.classes, columns)  # an unknown column stops before predicting
    if records.empty:
        raise DataError(f"no images to evaluate ({evaluated_on}); check --split and --data")
    start = time.perf_counter()
    pred_df = predict_frame(loaded, records, batch_size=batch_size, skip_bad=skip_bad)
    seconds = time.perf_counter() - start
    pred_df = _with_metadata(pred_df, records, loaded.classes, columns)
    param = next(loaded.model.parameters(), None)
    timing = {
        "inference_seconds": seconds,
        "images": len(pred_df),
        "images_per_second": len(pred_df) / seconds if seconds > 0 else None,
        "batch_size": batch_size,
        "device": str(param.device) if param is not None else "cpu",
        "includes": "image decoding and preprocessing",
    }
    # files the dataset loader already refused (header checks) and those that failed to decode while predicting
    skipped = [*unreadable, *(pred_df.attrs.get("skipped") or [])]
    audit = _read_json(Path(audit_path)) if audit_path else None
    if audit_path and audit is None:
        raise DataError(f"--audit {audit_path}: file not found; write one with `medclf data audit`")
    _mark_incomplete(Path(out_dir))  # before skipped.csv; evaluate_predictions removes it after its last file
    if skipped:
        atomic_write_text(
            Path(out_dir) / "skipped.csv",
            pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(index=False),
        )
    metrics = evaluate_predictions(
        pred_df,
        loaded.classes,
        out_dir,
        run_dir=run_dir,
        n_boot=n_boot,
        seed=seed,
        audit=audit,
        timing=timing,
        evaluated_on=evaluated_on,
        pdf=pdf,
        explain=explain,
        notes=[f"{len(skipped)} unreadable images were skipped (listed in skipped.csv)"] if skipped else [],
        split_name=split,
        subgroups=subgroups,
    )
    return metrics


def _is_ensemble(run_dir: Path) -> bool:
    return RunDir(run_dir).is_run() and bool(RunDir(run_dir).load_info().ensemble)


def _with_metadata(
    pred_df: pd.DataFrame, records: pd.DataFrame, classes: Sequence[str], columns: Sequence[str] | None
) -> pd.DataFrame:
    """``pred_df`` with the records' subgroup columns added: the model's predictions keep only the metadata the
    model uses (none for an image-only run), the subgroups need all the data has, or the ``columns`` named."""
    from medclf.evaluate.subgroups import subgroup_columns

    wanted = subgroup_columns(records, classes, None) if columns is None else list(columns)
    add = [c for c in wanted if c in records.columns and c not in pred_df.columns]
    if not add or "path" not in pred_df.columns:
        return pred_df
    table = records[["path", *add]].drop_duplicates("path").astype({"path": str})
    out = pred_df.astype({"path": str}).merge(table, on="path", how="left", validate="many_to_one")
    out.attrs = dict(pred_df.attrs)  # the images skipped while predicting
    return out


def _with_columns(
    records: pd.DataFrame, spec: DatasetSpec | None, columns: Sequence[str] | None
) -> pd.DataFrame:
    """``records`` with the named CSV columns it lacks, read from the data's CSV (``--subgroups dx_type`` where
    the dataset spec does not declare dx_type as metadata); other missing names are left for
    ``subgroups.subgroup_columns`` to refuse."""
    import dataclasses

    from medclf.data import load_dataset
    from medclf.errors import ConfigError

    missing = [c for c in columns or () if c not in records.columns]
    if not missing or spec is None or spec.layout not in ("csv", "auto") or "path" not in records.columns:
        return records
    try:
        extra = load_dataset(
            dataclasses.replace(spec, metadata=missing), skip_bad=True, verify="none"
        ).records
    except ConfigError as exc:
        raise ConfigError(
            f"--subgroups {', '.join(missing)}: not a column of the evaluated data or of its CSV ({exc})"
        ) from None
    found = [c for c in missing if c in extra.columns]
    if not found:
        return records
    table = extra[["path", *found]].drop_duplicates("path").astype({"path": str})
    if not records["path"].astype(str).isin(table["path"]).any():
        raise ConfigError(
            f"--subgroups {', '.join(found)}: none of the evaluated images is in the data's CSV (matched by path); "
            "pass the data as --data with a dataset spec .yaml that declares the column under `metadata:`"
        )
    return records.astype({"path": str}).merge(table, on="path", how="left", validate="many_to_one")


def _records(
    run_dir: Path,
    data: str | Path | None,
    split: str,
    skip_bad: bool,
    columns: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, str, list[tuple[str, str]]]:
    if data is None:
        from medclf.data import read_split_csv

        path = run_dir / "split.csv"
        if not path.is_file():
            raise MedclfError(
                f"{path} is missing; pass --data DIR to evaluate other images with the run's dataset spec"
            )
        records = read_split_csv(path)
        if split != "all" and (records.get("split") == "train").all() and _is_ensemble(run_dir):
            raise MedclfError(
                f"{run_dir} is a fold ensemble: every image trained one of its members, so it has no {split} "
                "split; its estimate is the cross-validation's (cv_metrics.json); evaluate it on external "
                "images with --data DIR"
            )
        if "split" not in records.columns:
            raise DataError(
                f"{path} has no split column (a fold file); pass --data DIR or evaluate the cv folds"
            )
        if split != "all":
            records = records[records["split"] == split]
        if "augmented" in records.columns:
            records = records[~records["augmented"].fillna(False).astype(bool)]
        if columns:
            from medclf.data import DatasetSpec

            spec_path = run_dir / "dataset.yaml"
            run_spec = DatasetSpec.from_yaml(spec_path) if spec_path.is_file() else None
            records = _with_columns(records.reset_index(drop=True), run_spec, columns)
        return records.reset_index(drop=True), f"split={split} of the run's split.csv", []
    import dataclasses

    from medclf.data import DatasetSpec, load_dataset, resolve_spec
    from medclf.errors import ConfigError

    spec_path = run_dir / "dataset.yaml"
    rules = DatasetSpec.from_yaml(spec_path) if spec_path.is_file() else None
    # a folder is read in its own layout with the run's rules; a spec .yaml keeps what it says (resolve_spec)
    spec = resolve_spec(data, rules)
    if spec.layout not in ("csv", "auto") and spec.group_by and not spec.group_by.startswith("regex:"):
        # the run grouped by a CSV column; images without a table have none, so each image is its own group
        spec = dataclasses.replace(spec, group_by=None)
    try:
        ds = load_dataset(spec, skip_bad=skip_bad)
    except (ConfigError, DataError) as exc:
        if rules is None:
            raise
        raise DataError(
            f"--data {data} (read as layout {spec.layout} with the run's dataset rules, {spec_path}): {exc}; if "
            "those rules do not fit this data, describe it in a dataset spec .yaml (layout, csv columns, class_map, "
            "group_by) and pass that as --data"
        ) from None
    records = ds.records
    premade = "fold" in records.columns
    if premade:
        records = records.drop_duplicates("path")  # one row per image: its role in the first pre-made fold
    parts = [
        s for s in ("train", "val", "test") if "split" in records.columns and (records["split"] == s).any()
    ]
    if split == "all" or not parts:
        where = f"all {len(records)} images of {ds.root}"
    elif split in parts:
        records = records[records["split"] == split]
        where = f"split={split} of {ds.root}" + (" (its first pre-made fold)" if premade else "")
    else:
        raise DataError(
            f"--data {ds.root} has {', '.join(parts)} split folders but no {split}; pass --split all to score every "
            f"image, --split {parts[-1]}, or point --data at one split folder"
        )
    if "augmented" in records.columns:
        records = records[~records["augmented"].fillna(False).astype(bool)]
    records = _with_columns(records.reset_index(drop=True), spec, columns)
    return records.reset_index(drop=True), where, list(ds.bad_files)
