"""``history.csv``: one row per epoch, rewritten atomically (every strategy writes it; no Lightning needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medclf._atomic import atomic_write_text

__all__ = ["HISTORY_COLUMNS", "HistoryFile"]

HISTORY_COLUMNS = (
    "epoch",
    "phase",
    "train_loss",
    "val_loss",
    "val_acc",
    "val_bacc",
    "val_auc",
    "lr",
    "seconds",
)


class HistoryFile:
    """The rows of ``history.csv`` and their atomic write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []

    def write(self) -> None:
        lines = [",".join(HISTORY_COLUMNS)]
        for r in self.rows:
            lines.append(",".join("" if _isnan(r.get(c)) else str(r.get(c)) for c in HISTORY_COLUMNS))
        atomic_write_text(self.path, "\n".join(lines) + "\n")


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))
