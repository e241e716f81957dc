"""Callbacks of the engine: per-epoch history, best weights as safetensors, phase-aware early stopping."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping

from medclf._atomic import atomic_path
from medclf.train.history import HISTORY_COLUMNS, HistoryFile

__all__ = ["HISTORY_COLUMNS", "BestWeights", "History", "PhaseEarlyStopping"]


def _metric(trainer: pl.Trainer, key: str) -> float:
    v = trainer.callback_metrics.get(key)
    return float(v) if v is not None else float("nan")


class History(HistoryFile, pl.Callback):
    """One row per epoch in ``history.csv`` (rewritten atomically each epoch; restored on ``--resume``)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._t0 = time.perf_counter()
        self._lr = float("nan")

    @property
    def state_key(self) -> str:
        return "medclf_history"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._lr = float("nan")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        # the learning rate this epoch trained with (schedulers step before validation, phases switch after
        # the callbacks' epoch-start hooks)
        if batch_idx == 0 and trainer.optimizers:
            self._lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        # runs before the checkpoint callbacks (Lightning orders them last), so last.ckpt holds this row
        if trainer.sanity_checking:
            return
        row = {
            "epoch": trainer.current_epoch,
            "phase": "head" if getattr(pl_module, "in_head_phase", lambda: False)() else "train",
            "train_loss": pl_module.last_train_loss,
            **{k: _metric(trainer, k) for k in ("val_loss", "val_acc", "val_bacc", "val_auc")},
            "lr": self._lr,
            "seconds": round(time.perf_counter() - self._t0, 3),
        }
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if trainer.is_global_zero:
            self.write()

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))


class BestWeights(pl.Callback):
    """Saves the model's weights to ``best.safetensors`` whenever the monitored metric improves (no pickle)."""

    def __init__(self, path: str | Path, monitor: str, mode: str) -> None:
        self.path = Path(path)
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None
        self.best_epoch: int | None = None

    @property
    def state_key(self) -> str:
        return "medclf_best_weights"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        value = _metric(trainer, self.monitor)
        if math.isnan(value):
            return
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best, self.best_epoch = value, trainer.current_epoch
            if trainer.is_global_zero:
                from safetensors.torch import save_model

                with atomic_path(self.path, suffix=".safetensors") as tmp:
                    save_model(getattr(pl_module, "eval_model", pl_module.model), str(tmp))

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")
        self.best_epoch = state_dict.get("best_epoch")


class PhaseEarlyStopping(EarlyStopping):
    """Early stopping that starts counting only at ``start_epoch`` (phase 2 of `finetune`)."""

    def __init__(self, *args: Any, start_epoch: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_epoch = start_epoch

    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        if trainer.current_epoch < self.start_epoch:
            return
        super()._run_early_stopping_check(trainer)
