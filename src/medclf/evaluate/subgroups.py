"""Performance per subgroup of a metadata column (age band, sex, body site, ...), with intervals and flags.

Each subgroup is evaluated by ``metrics.compute_metrics`` on its own images at the run's operating point, so its
figures and intervals are made exactly like the headline ones (stratified bootstrap resampling whole
patients/lesions; Wilson intervals where the bootstrap degenerates). Values with fewer than ``min_size`` images
are pooled into one subgroup, ``POOLED``; a pool still under ``min_size`` is listed with its size only.

A subgroup is flagged when the 95% interval of one of its figures lies wholly below the overall figure, or when
its sensitivity falls more than ``sensitivity_margin`` below the overall sensitivity (with at least
``MIN_MARGIN_POSITIVES`` positives). Flags are screening signals: with many subgroups some fire by chance, and
none is corrected for multiple comparisons.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medclf.errors import ConfigError
from medclf.evaluate.metrics import compute_metrics

__all__ = [
    "DEFAULT_AGE_BANDS",
    "MIN_SUBGROUP_IMAGES",
    "POOLED",
    "SENSITIVITY_MARGIN",
    "SubgroupOptions",
    "evaluate_subgroups",
    "parse_bands",
    "subgroup_columns",
    "subgroup_labels",
]

MIN_SUBGROUP_IMAGES = 30
"""Values with fewer images are pooled: below it a subgroup's interval is too wide to read, and a rare value
(one clinic, one unusual body site) can come close to identifying the people behind it."""
DEFAULT_AGE_BANDS = (0.0, 30.0, 45.0, 60.0, 75.0)
SENSITIVITY_MARGIN = 0.10
MIN_MARGIN_POSITIVES = 10
"""The sensitivity margin flag needs this many positives: below it one missed case moves the sensitivity by more
than the margin (the interval rule still applies)."""
POOLED = "other (small groups)"
MISSING = "missing"
MAX_VALUES_AS_CATEGORIES = 10
"""A numeric column with at most this many distinct values is read as categories (e.g. a 1-6 skin type)."""
RESERVED_COLUMNS = frozenset({"path", "label", "group", "split", "fold", "augmented", "pred", "confidence"})
"""predictions.csv columns that are not metadata; path and group identify images and patients."""


@dataclass(frozen=True)
class SubgroupOptions:
    """Which columns, how ages are banded, the minimum subgroup size and the sensitivity flag's margin."""

    columns: tuple[str, ...] | None = None
    """None: every metadata column of the evaluated data; else exactly these."""
    age_bands: tuple[float, ...] = DEFAULT_AGE_BANDS
    """Lower edges of the age bands: (0, 30, 45) gives [0, 30), [30, 45), ≥ 45 (and < 0 for values below)."""
    min_size: int = MIN_SUBGROUP_IMAGES
    sensitivity_margin: float = SENSITIVITY_MARGIN

    def __post_init__(self) -> None:
        edges = tuple(float(e) for e in self.age_bands)
        if (
            not edges
            or any(not math.isfinite(e) for e in edges)
            or any(b <= a for a, b in itertools.pairwise(edges))
        ):
            raise ConfigError(
                f"--age-bands {','.join(f'{e:g}' for e in edges)}: give increasing numbers, e.g. 0,30,45,60,75"
            )
        object.__setattr__(self, "age_bands", edges)
        if int(self.min_size) != self.min_size or self.min_size < 1:
            raise ConfigError(f"--subgroup-min {self.min_size}: give a whole number of images >= 1, e.g. 30")
        if not 0.0 <= float(self.sensitivity_margin) <= 1.0:
            raise ConfigError(
                f"--flag-margin {self.sensitivity_margin}: give a number between 0 and 1, e.g. 0.10"
            )


def parse_bands(text: str) -> tuple[float, ...]:
    """``"0,30,45,60,75"`` → band edges (checked by ``SubgroupOptions``)."""
    try:
        edges = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"--age-bands {text!r}: give numbers separated by commas, e.g. 0,30,45,60,75"
        ) from None
    return SubgroupOptions(age_bands=edges).age_bands


def subgroup_columns(df: pd.DataFrame, classes: Sequence[str], requested: Sequence[str] | None) -> list[str]:
    """The metadata columns of a predictions table (``requested`` ones checked), in table order."""
    prob_cols = {f"prob_{c}" for c in classes}
    if requested is None:
        return [c for c in df.columns if c not in RESERVED_COLUMNS and c not in prob_cols]
    for col in requested:
        if col in RESERVED_COLUMNS or col in prob_cols:
            raise ConfigError(
                f"--subgroups {col}: not a metadata column (path and group identify images and patients; per-class "
                "results are in the per-class table); name a metadata column such as sex or age"
            )
        if col not in df.columns:
            have = subgroup_columns(df, classes, None)
            raise ConfigError(
                f"--subgroups {col}: the evaluated data has no such column (metadata columns: "
                f"{', '.join(have) or 'none'}); declare it under `metadata:` in a dataset spec .yaml and pass that "
                "as --data"
            )
    return list(dict.fromkeys(requested))


def is_age_column(name: str) -> bool:
    """``age``, ``age_approx``, ``patient_age``, ``Age``: the columns ``age_bands`` applies to."""
    parts = name.lower().replace("-", "_").replace(" ", "_").split("_")
    return "age" in parts


def _band_label(i: int, edges: Sequence[float]) -> str:
    if i == 0:
        return f"< {edges[0]:g}"
    if i == len(edges):
        return f"≥ {edges[-1]:g}"
    return f"[{edges[i - 1]:g}, {edges[i]:g})"


def subgroup_labels(
    values: pd.Series, column: str, age_bands: Sequence[float]
) -> tuple[pd.Series, str, list[str]]:
    """(subgroup of each row, how the column was read, the subgroups in display order).

    Categorical columns give one subgroup per value; numeric ones with few values too. Age columns are cut at
    ``age_bands``, other numeric columns at their quartiles. Missing values form the subgroup ``missing``.
    """
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        x = values.to_numpy(dtype=np.float64)
        present = np.isfinite(x)
        distinct = np.unique(x[present])
        if is_age_column(column) or distinct.size > MAX_VALUES_AS_CATEGORIES:
            if is_age_column(column):
                edges, kind = np.asarray(age_bands, dtype=np.float64), "age bands"
            else:
                edges = np.unique(np.round(np.quantile(x[present], [0.25, 0.5, 0.75]), 6))
                kind = "quartile bands"
            idx = np.searchsorted(edges, x, side="right")
            names = [_band_label(i, edges) for i in range(len(edges) + 1)]
            labels = pd.Series([names[i] if ok else MISSING for i, ok in zip(idx, present, strict=True)])
            order = [n for n in names if (labels == n).any()]
        else:
            labels = pd.Series([f"{v:g}" if ok else MISSING for v, ok in zip(x, present, strict=True)])
            order = [f"{v:g}" for v in distinct]
            kind = "values"
    else:
        text = values.astype(object).map(lambda v: MISSING if v is None or pd.isna(v) else str(v).strip())
        labels = text.replace("", MISSING).reset_index(drop=True)
        counts = labels[labels != MISSING].value_counts()
        order = sorted(counts.index, key=lambda v: (-counts[v], v))
        kind = "categories"
    if (labels == MISSING).any():
        order.append(MISSING)
    return labels, kind, order


def _pool(labels: pd.Series, order: list[str], min_size: int) -> tuple[pd.Series, list[str], int]:
    counts = labels.value_counts()
    small = [v for v in order if counts.get(v, 0) < min_size]
    if not small:
        return labels, order, 0
    pooled = labels.where(~labels.isin(small), POOLED)
    return pooled, [v for v in order if v not in small] + [POOLED], len(small)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _figures_of(m: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    ci, method = m.get("ci95") or {}, m.get("ci95_method") or {}
    out: dict[str, Any] = {"n": m["n"], "n_groups": m["n_groups"]}
    for name in names:
        out[name] = m.get(name)
    out["ci95"] = {name: ci[name] for name in names if name in ci}
    out["ci95_method"] = {name: method[name] for name in names if name in method}
    return out


def _flags(entry: dict[str, Any], overall: dict[str, Any], names: Sequence[str], margin: float) -> list[str]:
    """``names``: the figures the interval rule checks; the margin rule checks the sensitivity."""
    flags = []
    for name in names:
        value, ref, ci = entry.get(name), overall.get(name), entry["ci95"].get(name)
        if _finite(value) and _finite(ref) and ci and _finite(ci[1]) and ci[1] < ref:
            flags.append(
                f"{name} {value:.3f} (95% CI {ci[0]:.3f}–{ci[1]:.3f}) lies wholly below the overall {ref:.3f}"
            )
    sens, ref = entry.get("sensitivity"), overall.get("sensitivity")
    n_pos = entry.get("n_positive") or 0
    if _finite(sens) and _finite(ref) and ref - sens > margin and n_pos >= MIN_MARGIN_POSITIVES:
        flags.append(
            f"sensitivity {sens:.3f} ({round(sens * n_pos)} of {n_pos} positives caught) is {ref - sens:.3f} below "
            f"the overall {ref:.3f} (margin {margin:g})"
        )
    return flags


def evaluate_subgroups(
    pred_df: pd.DataFrame,
    y: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    overall: dict[str, Any],
    *,
    groups: np.ndarray | None = None,
    threshold: float | None = None,
    positive: list[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    options: SubgroupOptions | None = None,
) -> dict[str, Any]:
    """The ``subgroups`` section of metrics.json for the metadata columns of ``pred_df``.

    ``y``, ``probs`` (calibrated), ``groups``, ``threshold`` and ``positive`` are those the ``overall`` metrics
    (``compute_metrics``'s result) were computed with, row for row with ``pred_df``.
    """
    options = options or SubgroupOptions()
    names = ["accuracy", "balanced_accuracy"]
    names += ["sensitivity", "specificity", "auc"] if positive is not None else ["macro_auc"]
    # a multiclass subgroup's balanced accuracy and macro AUC average over the classes present in it, often one or
    # two images of a rare class whose recall is 0 or 1 in every resample: not comparable with the overall figure
    # and with intervals that understate the noise, so they are reported but never flagged
    flag_metrics = [m for m in names if m not in ("balanced_accuracy", "macro_auc") or len(classes) == 2]
    section: dict[str, Any] = {
        "metrics": names,
        "min_size": options.min_size,
        "sensitivity_margin": options.sensitivity_margin if positive is not None else None,
        "age_bands": list(options.age_bands),
        "flag_metrics": flag_metrics,
        "overall": {name: overall.get(name) for name in names},
        "columns": {},
        "skipped": [],
        "flags": [],
    }
    y_bin = np.isin(y, positive) if positive is not None else None
    for column in subgroup_columns(pred_df, classes, options.columns):
        labels, kind, order = subgroup_labels(
            pred_df[column].reset_index(drop=True), column, options.age_bands
        )
        labels, order, n_pooled = _pool(labels, order, options.min_size)
        if len(order) < 2:
            why = (
                "one value only" if n_pooled == 0 else f"every value has fewer than {options.min_size} images"
            )
            section["skipped"].append(f"{column}: {why}")
            continue
        rows = []
        for name in order:
            mask = (labels == name).to_numpy()
            entry: dict[str, Any] = {"name": name, "n": int(mask.sum())}
            if name == POOLED:
                entry["pooled_values"] = n_pooled
            if mask.sum() < options.min_size:
                entry["too_small"] = True
                rows.append(entry)
                continue
            m = compute_metrics(
                y[mask],
                probs[mask],
                classes,
                groups=groups[mask] if groups is not None else None,
                threshold=threshold,
                positive_index=positive,
                n_boot=n_boot,
                seed=seed,
            )
            entry.update(_figures_of(m, names))
            if y_bin is not None:
                entry["n_positive"] = int(y_bin[mask].sum())
            entry["flags"] = _flags(entry, section["overall"], flag_metrics, options.sensitivity_margin)
            section["flags"] += [f"{column} = {name}: {text}" for text in entry["flags"]]
            rows.append(entry)
        section["columns"][column] = {"kind": kind, "subgroups": rows}
    return section
