"""The LightningModule behind every strategy: loss, optimiser, schedule, phases, EMA, mixup, metrics.

`finetune` is one Lightning fit with two phases decided by the epoch number (so ``--resume`` lands in the right
phase): epochs < ``head_epochs`` train the head on a frozen backbone; later epochs also train the top
``finetune_blocks`` backbone blocks, everything at ``lr × finetune_lr_scale`` (as the Keras studies recompiled
with a lower learning rate). The optimiser holds both parameter groups from the start; frozen parameters get no
gradient, so the optimiser skips them. `cached` trains ``medclf.train.cached.CachedNet`` (top blocks and head on
cached bottom outputs) with the blocks at ``lr × finetune_lr_scale`` and their batch-norm statistics frozen.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from medclf.config import TrainConfig
from medclf.errors import ConfigError
from medclf.train.losses import create_loss
from medclf.train.metrics import MONITORS, classification_metrics, diverged_error, monitor_mode, seed_all

__all__ = [
    "MONITORS",
    "ClassifierModule",
    "check_ema",
    "check_mixup",
    "classification_metrics",
    "mix_batch",
    "monitor_mode",
    "seed_all",
]


class ClassifierModule(pl.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        tcfg: TrainConfig,
        *,
        class_weight: torch.Tensor | None = None,
        positive_index: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        self.tcfg = tcfg
        self.positive_index = positive_index
        self.loss_fn = create_loss(
            tcfg.loss, weight=class_weight, label_smoothing=tcfg.label_smoothing, gamma=tcfg.focal_gamma
        )
        self.finetune = tcfg.strategy == "finetune"
        self.cached = tcfg.strategy == "cached"
        self.head_epochs = tcfg.head_epochs if self.finetune else 0
        head_ids = {id(p) for p in model.head.parameters()}
        self.head_params = list(model.head.parameters())
        self._head_modules = {id(m) for m in model.head.modules()}
        groups = model.block_groups() if hasattr(model, "block_groups") else []
        if self.finetune:
            top = groups[-tcfg.finetune_blocks :] if tcfg.finetune_blocks > 0 else []
            self.block_params = [p for g in top for p in g if id(p) not in head_ids]
        else:
            self.block_params = [p for p in model.parameters() if id(p) not in head_ids]
        # the averaged copy validates, is checkpointed with the run (resume) and becomes the saved model
        self.ema_model = (
            torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=_ema_update(tcfg.ema), use_buffers=True)
            if tcfg.ema
            else None
        )
        if self.ema_model is not None:  # updated by copying, never by gradients (DDP checks for unused ones)
            self.ema_model.requires_grad_(False)
        self._val_logits: list[torch.Tensor] = []
        self._val_y: list[torch.Tensor] = []
        self._loss_sum = 0.0
        self._loss_n = 0
        self.last_train_loss = float("nan")

    # ---- phases ---------------------------------------------------------------------------------------------
    def in_head_phase(self, epoch: int | None = None) -> bool:
        epoch = self.current_epoch if epoch is None else epoch
        return self.finetune and epoch < self.head_epochs

    def _apply_trainable(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in self.head_params:
            p.requires_grad_(True)
        if not self.in_head_phase():
            for p in self.block_params:
                p.requires_grad_(True)
        self._freeze_bn()

    def _freeze_bn(self) -> None:
        # a frozen block keeps its ImageNet batch-norm statistics (Keras' trainable=False does the same)
        # (and a block unfrozen in phase 2 goes back to training mode, as after a fresh start or --resume);
        # `cached` blocks keep them too: batch statistics of small medical data sets are noisy
        for m in self.model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                params = list(m.parameters(recurse=False))
                cached_block = self.cached and id(m) not in self._head_modules
                frozen = cached_block or (bool(params) and not any(p.requires_grad for p in params))
                m.train(self.model.training and not frozen)

    def on_fit_start(self) -> None:
        self._apply_trainable()
        # channels-last convolutions train faster on CPUs and GPUs alike (docs/benchmarks-training.md)
        self.to(memory_format=torch.channels_last)

    def on_fit_end(self) -> None:
        self.to(memory_format=torch.contiguous_format)

    def on_train_epoch_start(self) -> None:
        if self.finetune and self.current_epoch == self.head_epochs and self.head_epochs > 0:
            for group in self.trainer.optimizers[0].param_groups:
                group["lr"] = self.tcfg.lr * self.tcfg.finetune_lr_scale
        self._apply_trainable()
        self._loss_sum, self._loss_n = 0.0, 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # dropout & co. draw from the global RNG: fix it per (seed, epoch, batch) so that a resumed run, whose
        # loops may consume random numbers differently while restoring, still takes the very same steps
        seed_all((self.tcfg.seed * 1_000_003 + self.current_epoch) * 100_003 + batch_idx)

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        self._freeze_bn()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema_model is not None and batch is not None:
            self.ema_model.update_parameters(self.model)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that validate and are saved: the moving average with `train.ema`, else the model."""
        return self.ema_model.module if self.ema_model is not None else self.model

    # ---- steps ----------------------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, meta: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (model or self.model)(x if x.numel() else None, meta if meta.numel() else None)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every image of the batch was bad and skipped
            return None
        x, meta, y = batch
        if self.tcfg.mixup:
            lam, perm, x, meta = mix_batch(x, meta, self.tcfg.mixup)
            logits = self._forward(x, meta)
            loss = lam * self.loss_fn(logits, y) + (1.0 - lam) * self.loss_fn(logits, y[perm])
        else:
            loss = self.loss_fn(self._forward(x, meta), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise self._diverged("the training loss")
        self._loss_sum += value * len(y)
        self._loss_n += len(y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch is None:
            return
        x, meta, y = batch
        self._val_logits.append(self._forward(x, meta, self.eval_model).float().detach())
        self._val_y.append(y)

    def on_validation_epoch_end(self) -> None:
        if not self._val_logits:
            return
        logits = torch.cat(self._val_logits)
        y = torch.cat(self._val_y)
        self._val_logits, self._val_y = [], []
        if self.trainer.world_size > 1:
            logits = self.all_gather(logits).flatten(0, 1)
            y = self.all_gather(y).flatten(0, 1)
        if not bool(torch.isfinite(logits).all()):
            raise self._diverged("the model's validation outputs")
        m = classification_metrics(logits.cpu().numpy(), y.cpu().numpy(), self.positive_index)
        self.last_train_loss = self._loss_sum / self._loss_n if self._loss_n else float("nan")
        for k, v in m.items():
            self.log(f"val_{k}", v, prog_bar=k in ("loss", "auc"), sync_dist=False)

    def _diverged(self, what: str) -> Exception:
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else self.tcfg.lr
        return diverged_error(self.current_epoch, what, float(lr), self.tcfg.lr)

    # ---- optimisation ---------------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        t = self.tcfg
        block_lr = t.lr * t.finetune_lr_scale if (self.finetune or self.cached) else t.lr
        groups = [{"params": self.head_params, "lr": t.lr}]
        if self.block_params:
            groups.append({"params": self.block_params, "lr": block_lr})
        if t.optimizer == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        elif t.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True)
        else:
            raise ConfigError(f"train.optimizer={t.optimizer!r}: choose adamw or sgd")
        if t.scheduler == "none":
            return opt
        if t.scheduler == "cosine":
            # stepped every batch, so short schedules (a few epochs of full training) decay smoothly
            steps = max(
                1, int(self.trainer.estimated_stepping_batches) // max(1, self.trainer.max_epochs or 1)
            )
            lambdas = [self._cosine_factor(True, steps), self._cosine_factor(False, steps)][: len(groups)]
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if t.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode=monitor_mode(t.monitor), factor=0.5, patience=max(1, t.patience // 3)
            )
            return {
                "optimizer": opt,
                "lr_scheduler": {
                    "scheduler": sched,
                    "monitor": t.monitor,
                    "interval": "epoch",
                    "strict": False,
                },
            }
        raise ConfigError(f"train.scheduler={t.scheduler!r}: choose plateau, cosine or none")

    def _cosine_factor(self, head: bool, steps_per_epoch: int) -> Any:
        """LR factor at optimisation step ``step``: constant in the head phase of `finetune`, then linear warm-up
        over `train.warmup_epochs` and a cosine decay to 1% at the last epoch."""
        t = self.tcfg
        h = self.head_epochs
        epochs = self.trainer.max_epochs or t.epochs  # a time budget may plan fewer epochs than the recipe's
        span = max(1, epochs - h)  # train.epochs counts the head epochs too
        warm = min(t.warmup_epochs, span)

        def factor(step: int) -> float:
            epoch = step / steps_per_epoch
            if epoch < h:
                return 1.0
            scale = t.finetune_lr_scale if (head and self.finetune) else 1.0
            if epoch - h < warm:
                return scale * max(0.01, (epoch - h) / warm)
            cos = 0.5 * (
                1.0 + math.cos(math.pi * min(epoch - h - warm, span - warm) / max(1e-9, span - warm))
            )
            return scale * max(cos, 0.01)

        return factor

    # ---- resume: the per-epoch history travels inside the Lightning checkpoint --------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["medclf_train_loss"] = self.last_train_loss

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.last_train_loss = float(checkpoint.get("medclf_train_loss", float("nan")))


def _ema_update(decay: float) -> Any:
    """``AveragedModel``'s update: ``avg ← d·avg + (1 − d)·current`` with d = min(decay, (1 + n) / (10 + n)), so
    the first steps are not averaged with the random start; integer buffers (batch counts) are copied."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: Any) -> None:
        step = int(n)
        d = min(decay, (1.0 + step) / (10.0 + step))
        if averaged and torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


def check_ema(decay: float) -> None:
    """``train.ema``: 0 (off) or a decay between 0 and 1."""
    if decay and not 0.0 < decay < 1.0:
        raise ConfigError(f"train.ema={decay}: the decay must be between 0 and 1 (e.g. 0.99), or 0 for off")


def check_mixup(alpha: float) -> None:
    """``train.mixup``: 0 (off) or a positive Beta concentration."""
    if alpha < 0 or not math.isfinite(alpha):
        raise ConfigError(f"train.mixup={alpha}: use a positive Beta parameter (e.g. 0.2), or 0 for off")


def mix_batch(
    x: torch.Tensor, meta: torch.Tensor, alpha: float
) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup of one batch (manifold mixup for the cached strategy's maps): (weight, partner order, blended
    inputs, blended metadata). The weight comes from Beta(alpha, alpha) drawn with the global generator, which
    the module seeds per batch, so a seeded run, and a resumed one, mixes identically."""
    a = torch.tensor(float(alpha), dtype=torch.float64)
    lam = float(torch.distributions.Beta(a, a).sample())
    perm = torch.randperm(len(x))
    x = x.float()
    mixed = lam * x + (1.0 - lam) * x[perm]
    meta = lam * meta + (1.0 - lam) * meta[perm] if meta.numel() else meta
    return lam, perm, mixed, meta
