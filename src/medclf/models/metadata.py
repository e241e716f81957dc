"""Tabular metadata (age, sex, body site ...) -> a fixed-length float vector for the fusion head.

Fitted on the training rows only. Numeric columns are standardised and get a missing-value indicator (a NaN
age becomes 0 with indicator 1); categorical columns are one-hot with an extra 'unknown' slot that takes
missing values and categories never seen in training. The encoder is plain JSON in run.json.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medclf.errors import DataError

__all__ = ["MetadataEncoder"]

_UNKNOWN = "__unknown__"


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip().lower() in ("", "nan", "none", "unknown", "null")


@dataclass
class MetadataEncoder:
    """Column-wise encoder; ``columns`` keeps the order of the output features."""

    columns: list[str] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)
    """column -> "numeric" | "categorical"."""
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    """numeric column -> {mean, std} of the training rows."""
    categories: dict[str, list[str]] = field(default_factory=dict)
    """categorical column -> the categories seen in training (the unknown slot comes after them)."""

    @classmethod
    def fit(
        cls, df: pd.DataFrame, columns: list[str], kinds: Mapping[str, str] | None = None
    ) -> MetadataEncoder:
        """Learn means/stds and category lists from ``df`` (the training rows)."""
        kinds = dict(kinds or {})
        enc = cls(columns=list(columns))
        for col in columns:
            if col not in df.columns:
                raise DataError(
                    f"metadata column {col!r} is not in the dataset records (columns: {', '.join(map(str, df.columns))}); "
                    "fix model.metadata or the dataset spec's metadata section"
                )
            kind = kinds.get(col)
            if kind is None:
                kind = "numeric" if pd.api.types.is_numeric_dtype(df[col]) else "categorical"
            if kind not in ("numeric", "categorical"):
                raise DataError(f"metadata column {col!r}: kind must be numeric or categorical, got {kind!r}")
            enc.kinds[col] = kind
            if kind == "numeric":
                values = pd.to_numeric(df[col], errors="coerce").astype(float)
                mean = float(values.mean()) if values.notna().any() else 0.0
                std = float(values.std(ddof=0)) if values.notna().sum() > 1 else 1.0
                enc.stats[col] = {"mean": mean, "std": std if std > 1e-8 else 1.0}
            else:
                cats = sorted({str(v).strip() for v in df[col] if not _is_missing(v)})
                enc.categories[col] = cats
        return enc

    @property
    def dim(self) -> int:
        """Length of the encoded vector."""
        n = 0
        for col in self.columns:
            n += 2 if self.kinds[col] == "numeric" else len(self.categories[col]) + 1
        return n

    def feature_names(self) -> list[str]:
        names: list[str] = []
        for col in self.columns:
            if self.kinds[col] == "numeric":
                names += [col, f"{col}__missing"]
            else:
                names += [f"{col}={c}" for c in self.categories[col]] + [f"{col}={_UNKNOWN}"]
        return names

    def transform(self, df: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
        """Rows (a DataFrame, or one row as a mapping) -> float32 [N, dim]. Missing columns count as missing."""
        if not isinstance(df, pd.DataFrame):
            df = pd.DataFrame([dict(df)])
        n = len(df)
        out = np.zeros((n, self.dim), dtype=np.float32)
        j = 0
        for col in self.columns:
            raw = df[col].tolist() if col in df.columns else [None] * n
            if self.kinds[col] == "numeric":
                st = self.stats[col]
                vals = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").astype(float).to_numpy()
                missing = np.isnan(vals)
                out[:, j] = np.where(missing, 0.0, (vals - st["mean"]) / st["std"])
                out[:, j + 1] = missing.astype(np.float32)
                j += 2
            else:
                cats = self.categories[col]
                index = {c: i for i, c in enumerate(cats)}
                for i, v in enumerate(raw):
                    k = len(cats) if _is_missing(v) else index.get(str(v).strip(), len(cats))
                    out[i, j + k] = 1.0
                j += len(cats) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "kinds": self.kinds,
            "stats": self.stats,
            "categories": self.categories,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetadataEncoder:
        try:
            return cls(
                columns=list(d["columns"]),
                kinds=dict(d["kinds"]),
                stats={k: dict(v) for k, v in d.get("stats", {}).items()},
                categories={k: list(v) for k, v in d.get("categories", {}).items()},
            )
        except (KeyError, TypeError) as exc:
            raise DataError(f"metadata encoder in run.json is malformed ({exc}); retrain the run") from None
