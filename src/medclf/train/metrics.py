"""The monitored validation figures, the divergence error and the seeding of training runs.

Kept free of Lightning so that cross-validation, tuning and the budget planner can use them without it.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch
from torch import nn

from medclf.errors import ConfigError, MedclfError

__all__ = ["MONITORS", "classification_metrics", "diverged_error", "monitor_mode", "seed_all"]

MONITORS = ("val_auc", "val_loss", "val_acc", "val_bacc")


def monitor_mode(monitor: str) -> str:
    if monitor not in MONITORS:
        raise ConfigError(f"train.monitor={monitor!r}: choose one of {', '.join(MONITORS)}")
    return "min" if monitor == "val_loss" else "max"


def classification_metrics(logits: np.ndarray, y: np.ndarray, positive: int = 1) -> dict[str, float]:
    """loss (unweighted CE), acc, bacc, auc (binary: of ``positive``; multiclass: macro one-vs-rest over the
    classes present; 0.5 when undefined)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    z = torch.from_numpy(np.array(logits, dtype=np.float64))
    yt = torch.from_numpy(np.array(y, dtype=np.int64))
    loss = float(nn.functional.cross_entropy(z, yt)) if len(y) else float("nan")
    probs = torch.softmax(z, 1).numpy()
    pred = probs.argmax(1)
    acc = float((pred == y).mean()) if len(y) else float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bacc = float(balanced_accuracy_score(y, pred)) if len(y) else float("nan")
    k = probs.shape[1]
    if k == 2:
        pos = y == positive
        auc = float(roc_auc_score(pos, probs[:, positive])) if 0 < pos.sum() < len(y) else 0.5
    else:
        aucs = [float(roc_auc_score(y == c, probs[:, c])) for c in range(k) if 0 < (y == c).sum() < len(y)]
        auc = float(np.mean(aucs)) if aucs else 0.5
    return {"loss": loss, "acc": acc, "bacc": bacc, "auc": auc}


def diverged_error(epoch: int, what: str, lr: float, configured_lr: float) -> MedclfError:
    """Training stops here: NaN or infinite ``what`` (the loss, the validation outputs) in ``epoch`` (numbered as in
    history.csv), while training at learning rate ``lr`` (``configured_lr`` is train.lr)."""
    return MedclfError(
        f"training diverged in epoch {epoch}: {what} became NaN or infinite at learning rate {lr:g}; "
        f"lower train.lr (now {configured_lr:g}, e.g. --set train.lr={configured_lr / 10:g}) and train into a new "
        "--out folder"
    )


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
