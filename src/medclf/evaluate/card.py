"""A run's model card as Markdown: the facts the run folder holds, filled in, and the fields only the model's owner
can fill in (intended use, data, subgroups, limitations, licence), as placeholders.

`medclf card RUN_DIR` writes it to ``RUN_DIR/model_card.md``, which `medclf app` and the REST API's ``/model``
show. The card holds counts and aggregate figures only: no file names, paths, group ids or metadata values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from medclf import DISCLAIMER
from medclf._atomic import atomic_write_text
from medclf.errors import ConfigError, DataError

if TYPE_CHECKING:
    from medclf.models.run_io import RunInfo

__all__ = ["CARD_FILE", "OWNER_FIELDS", "PLACEHOLDER", "model_card", "write_model_card"]

CARD_FILE = "model_card.md"
"""The card's name in a run folder, where the app and the REST API find it."""

PLACEHOLDER = "To fill in:"
"""Starts every field of the card that the model's owner writes."""

OWNER_FIELDS: dict[str, str] = {
    "Intended use": "the research question this model serves, who reads its output and what they do with it "
    "(e.g. 'orders retrospective dermoscopy images of adults for a reader study at one clinic'), and the images "
    "it is meant for (device, body site, population).",
    "Data": "where the images come from (source, sites, devices, dates), how the labels were established "
    "(histopathology, expert consensus, follow-up), the consent or licence under which they are used, and who "
    "was included or left out.",
    "Subgroups": "the figures for the subgroups that matter for the intended use (sites, devices, age bands, sex, "
    "skin types, disease subtypes), and the subgroups that are absent from or rare in the data.",
    "Limitations": "the failure modes seen in the report's gallery of confident errors, the known differences "
    "between the training data and the intended use, and anything a reader must know before trusting an output.",
    "Licence": "the licence of these weights, and whether the terms of the training data restrict their use (a "
    "model trained on CC BY-NC data such as HAM10000 is for non-commercial use). medclf's Apache-2.0 licence "
    "covers the software, not your data or your model.",
}
"""The card's sections that only the model's owner can write, with what each should say."""

_OUT_OF_SCOPE = (
    "Out of scope, whatever the intended use says: diagnosing, triaging, treating or reassuring a patient; use as "
    "a medical device; images unlike the training data (other devices, sites, populations or image types)."
)
_METRICS = (
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("auc", "AUC"),
    ("macro_auc", "macro AUC (one-vs-rest)"),
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("macro_f1", "macro F1"),
    ("ece", "expected calibration error"),
)


def model_card(run_dir: str | Path, eval_dir: str | Path | None = None) -> str:
    """The model card of ``run_dir`` as Markdown, with the figures of the evaluation in ``eval_dir`` (default:
    ``run_dir/eval`` when it holds a finished evaluation; without one, the validation figures)."""
    from medclf.models.run_io import RunDir

    run = Path(run_dir)
    if not RunDir(run).is_run():
        raise DataError(f"{run} is not a run folder (no run.json); pass a folder written by `medclf train`")
    info = RunDir(run).load_info()
    cfg = _read_yaml(run / "config.yaml")
    metrics = _evaluation(run, eval_dir)
    classes = [str(c) for c in info.classes]
    name = str(info.name or cfg.get("name") or run.name)

    out = [f"# Model card: {name}", "", f"> {DISCLAIMER}", ""]
    out += [
        f"Written by `medclf card` from the run folder `{run.name}`"
        + (" and its evaluation" if metrics else "")
        + f". Replace every **{PLACEHOLDER}** with what only the model's owner knows; the rest comes from the "
        "run. medclf is research software, not a medical device.",
        "",
    ]
    out += ["## Intended use", "", _owner("Intended use"), "", _OUT_OF_SCOPE, ""]
    out += ["## Model", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in _model_rows(info, cfg, classes).items()]
    out += ["", "## Data", "", _owner("Data"), ""]
    out += _data_lines(run, cfg, classes)
    out += ["## Performance", ""]
    out += _performance_lines(run, info, metrics)
    out += ["## Subgroups", "", _owner("Subgroups"), ""]
    out += _subgroup_lines(metrics)
    out += ["## Limitations", "", _owner("Limitations"), "", "Known from the run:", ""]
    out += [f"- {line}" for line in _limits(info, metrics)]
    out += ["", "## Licence", "", _owner("Licence"), ""]
    out += [
        "## Privacy",
        "",
        "This card holds counts and aggregate figures only: no file names, patient ids or metadata values. Weights "
        "trained on patient data are derived patient data: store and share them as you would the images.",
        "",
    ]
    return "\n".join(out)


def write_model_card(
    run_dir: str | Path, out: str | Path | None = None, eval_dir: str | Path | None = None
) -> Path:
    """Write ``model_card(run_dir, eval_dir)`` to ``out`` (default ``run_dir/model_card.md``) and return the path.

    An existing card is never overwritten: it may hold the owner's text."""
    path = Path(out) if out is not None else Path(run_dir) / CARD_FILE
    if path.exists():
        raise ConfigError(
            f"{path} already exists and may hold your edits; edit it, or delete it (or pass --out OTHER.md) to "
            "write a new card"
        )
    text = model_card(run_dir, eval_dir)
    atomic_write_text(path, text)
    return path


# ---------------------------------------------------------------------------------------------------------------
def _owner(section: str) -> str:
    return f"**{PLACEHOLDER}** {OWNER_FIELDS[section]}"


def _read_json(path: Path, fix: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a JSON object; {fix}")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); restore the run's file") from None
    return data if isinstance(data, dict) else {}


def _evaluation(run: Path, eval_dir: str | Path | None) -> dict[str, Any] | None:
    folder = Path(eval_dir) if eval_dir is not None else run / "eval"
    if (folder / "INCOMPLETE").exists():  # evaluate_run's marker of an evaluation cut short
        raise DataError(
            f"{folder} holds an interrupted evaluation; run `medclf evaluate {run} --out {folder}` again"
        )
    metrics = _read_json(folder / "metrics.json", f"run `medclf evaluate {run} --out {folder}` again")
    if metrics is None and eval_dir is not None:
        raise DataError(
            f"{folder} has no metrics.json; pass the --out folder of `medclf evaluate`, or evaluate the run first"
        )
    return metrics


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}"


def _model_rows(info: RunInfo, cfg: dict[str, Any], classes: list[str]) -> dict[str, str]:
    model_cfg, train_cfg = cfg.get("model") or {}, cfg.get("train") or {}
    task = "binary" if len(classes) == 2 else f"{len(classes)}-class"
    rows = {"task": f"{task} classification: {', '.join(classes)}"}
    network = [str(info.model_name or model_cfg.get("name") or "unknown")]
    if model_cfg.get("pretrained") is not None:
        network.append("ImageNet-pretrained" if model_cfg["pretrained"] else "trained from scratch")
    if info.strategy or train_cfg.get("strategy"):
        network.append(f"strategy {info.strategy or train_cfg.get('strategy')}")
    if info.epochs_run is not None:
        network.append(f"{info.epochs_run} epochs")
    rows["network"] = ", ".join(network)
    pre = info.preprocessing or {}
    if pre:
        rows["input"] = f"{pre.get('input_size')} px, {pre.get('in_chans')} channel(s)"
    meta = model_cfg.get("metadata") or []
    rows["metadata"] = (
        f"{', '.join(map(str, meta))} ({'alone' if model_cfg.get('metadata_only') else 'with the image'})"
        if meta
        else "none: the image only"
    )
    positive = info.threshold_classes
    if positive and info.threshold is not None:
        how = (
            f"the default threshold: {info.threshold_skipped}"
            if info.threshold_skipped
            else f"rule {info.threshold_rule}, chosen on the validation split"
        )
        rows["decision"] = f"P({' + '.join(positive)}) ≥ {_fmt(info.threshold)}; {how}"
    else:
        rows["decision"] = "the most probable class"
    rows["calibration"] = (
        f"none: {info.temperature_skipped}"
        if info.temperature_skipped
        else f"temperature {_fmt(info.temperature)}, fitted on the validation split"
    )
    if info.created:
        seconds = info.train_seconds
        rows["trained"] = str(info.created) + (f" in {float(seconds):.0f} s" if seconds is not None else "")
    if info.versions:
        rows["software"] = ", ".join(f"{k} {v}" for k, v in info.versions.items())
    return rows


def _data_lines(run: Path, cfg: dict[str, Any], classes: list[str]) -> list[str]:
    spec = _read_yaml(run / "dataset.yaml")
    root = (cfg.get("data") or {}).get("root") or spec.get("root")
    name = spec.get("name") or (Path(str(root)).name if root else None)
    lines = [f"From the run: data set `{name}`." if name else "From the run:"]
    split_path = run / "split.csv"
    if not split_path.is_file():
        return [*lines, ""]
    import pandas as pd

    try:
        split = pd.read_csv(split_path, usecols=lambda c: c in ("label", "split", "group"), dtype=str)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{split_path}: cannot be read as CSV ({exc}); restore the run's split.csv") from None
    if not {"label", "split"} <= set(split.columns):
        return [*lines, ""]
    grouped = "group" in split.columns and split["group"].nunique() < len(split)
    lines[0] += (
        " Split by patient or lesion: no group spans two parts."
        if grouped
        else " No patient or lesion ids: each image is its own group."
    )
    lines += ["", f"| part | images | groups | {' | '.join(classes)} |", "|---" * (3 + len(classes)) + "|"]
    for part in ("train", "val", "test"):
        rows = split[split["split"] == part]
        if rows.empty:
            continue
        counts = rows["label"].value_counts()
        groups = rows["group"].nunique() if "group" in rows.columns else len(rows)
        cells = " | ".join(str(int(counts.get(c, 0))) for c in classes)
        lines.append(f"| {part} | {len(rows)} | {groups} | {cells} |")
    return [*lines, ""]


def _performance_lines(run: Path, info: RunInfo, metrics: dict[str, Any] | None) -> list[str]:
    if not metrics:
        vm = info.val_metrics or {}
        return [
            f"Validation split only (it chose the epoch and the operating point, so these are optimistic): "
            f"accuracy {_fmt(vm.get('acc'))}, balanced accuracy {_fmt(vm.get('bacc'))}, AUC {_fmt(vm.get('auc'))}. "
            f"No held-out evaluation yet: run `medclf evaluate {run} --out {run / 'eval'}`, then write the card "
            "again.",
            "",
        ]
    ci, method = metrics.get("ci95") or {}, metrics.get("ci95_method") or {}
    lines = [
        f"{metrics.get('n')} images ({metrics.get('evaluated_on', 'held-out')}), never used for training or "
        "tuning; 95% intervals.",
        "",
        "| metric | value | 95% interval |",
        "|---|---|---|",
    ]
    for key, label in _METRICS:
        value = metrics.get(key)
        if _fmt(value) == "n/a":
            continue
        lo, hi = [*(ci.get(key) or []), None, None][:2]
        interval = f"{_fmt(lo)} – {_fmt(hi)}" if _fmt(lo) != "n/a" and _fmt(hi) != "n/a" else "n/a"
        if interval != "n/a" and method.get(key) and method[key] != "bootstrap":
            interval += f" ({method[key]})"
        lines.append(f"| {label} | {_fmt(value)} | {interval} |")
    return [*lines, ""]


def _subgroup_lines(metrics: dict[str, Any] | None) -> list[str]:
    section = (metrics or {}).get("subgroups") or {}
    columns = section.get("columns") or {}
    if not columns:
        return (
            ["The evaluation had no metadata columns to compare subgroups by.", ""]
            if metrics
            else ["Not evaluated yet.", ""]
        )
    compared = "; ".join(
        f"{col} ({len(part.get('subgroups') or [])} subgroups)" for col, part in columns.items()
    )
    lines = [f"The evaluation compared {compared}: the report's Subgroups section has the figures."]
    flags = section.get("flags") or []
    if flags:
        lines += ["", "Flagged (a subgroup doing worse than the whole):", *(f"- {f}" for f in flags)]
    return [*lines, ""]


def _limits(info: RunInfo, metrics: dict[str, Any] | None) -> list[str]:
    from medclf.evaluate.report import default_limits

    if metrics is None:
        metrics = {
            "threshold": info.threshold,
            "threshold_skipped": info.threshold_skipped,
            "calibration": {"skipped": info.temperature_skipped},
        }
    return default_limits(metrics)
