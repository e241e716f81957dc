"""The `cached` strategy: frozen-backbone features once (disk cache), then the head trains from the cache.

With ``train.finetune_blocks = N > 0`` the cache holds the input maps of the last N backbone blocks and those blocks
train too (from the cached maps, at ``lr × finetune_lr_scale``): they adapt to the data while the frozen bottom
never runs again (docs/benchmarks-training.md). ``train.views > 1`` caches augmented views of each training image;
every epoch draws one view per image, so the head sees augmentation without recomputing the backbone.

The model handed back is the complete image model built by ``medclf.models.create_model`` (its trunk, trained
blocks and head share parameters with what was trained), so the engine saves, evaluates, explains and exports it
like any other. ``--resume``: the expensive half (features) comes back from the cache, and the head re-trains from
the same seed, so a resumed run ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from medclf._atomic import atomic_write_json
from medclf.config import RunConfig
from medclf.errors import ConfigError, DataError
from medclf.train.features import FeatureSet, extract_features, find_trunk, split_backbone
from medclf.train.losses import class_weights, create_loss
from medclf.train.metrics import classification_metrics, diverged_error, monitor_mode, seed_all

__all__ = ["CachedTrainer", "check_ema", "check_mixup", "train_cached"]

log = logging.getLogger(__name__)


def _views(n: int) -> list[str]:
    if n < 1:
        raise ConfigError(f"train.views={n}: must be at least 1 (1 = the image itself)")
    return ["clean", *(f"aug{i}" for i in range(1, n))]


def _set_bn_eval(module: nn.Module) -> None:
    # frozen running statistics: small medical datasets give noisy batch statistics (as the `finetune` engine does)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def cached_bf16(precision: str) -> bool:
    """``train.precision`` for the cached strategy: ``32-true`` (default) or ``bf16-mixed``, the training steps in
    bfloat16 autocast on the CPU (faster on CPUs with AMX or AVX512-BF16; validation stays fp32)."""
    if precision in ("32-true", "32"):
        return False
    if precision == "bf16-mixed":
        return True
    raise ConfigError(
        f"train.precision={precision!r}: the cached strategy trains on the CPU with 32-true or bf16-mixed"
    )


class CachedTrainer:
    """Trains the head (and the top blocks) of ``model`` on cached bottom outputs.

    Kept separate from feature extraction so benchmarks can train many heads on one cache.
    """

    def __init__(
        self, model: nn.Module, top: nn.Module, cfg: RunConfig, num_classes: int, positive: int = 1
    ) -> None:
        self.model = model
        self.top = top
        self.cfg = cfg
        self.t = cfg.train
        self.num_classes = num_classes
        self.positive = positive
        self.mode = monitor_mode(self.t.monitor)
        self.top_params = [p for p in top.parameters()]
        top_ids = {id(p) for p in self.top_params}
        self.head_params = [p for p in model.head.parameters() if id(p) not in top_ids]
        # set by `fit` while it trains blocks from cached maps (see `_channels_last_blocks`)
        self._channels_last = False

    # ---- forward over cached arrays ---------------------------------------------------------------------------
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self._channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.top(x)

    def logits(self, x: np.ndarray, meta: np.ndarray | None, batch_size: int = 256) -> np.ndarray:
        self.model.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                f = self._features(torch.from_numpy(x[i : i + batch_size]))
                m = torch.from_numpy(meta[i : i + batch_size]) if meta is not None else None
                out.append(self.model.forward_head(f, m).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    # ---- optimisation --------------------------------------------------------------------------------------------
    def _optimizer(self) -> torch.optim.Optimizer:
        t = self.t
        groups = [{"params": self.head_params, "lr": t.lr}]
        if self.top_params:
            groups.append({"params": self.top_params, "lr": t.lr * t.finetune_lr_scale})
        if t.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
        if t.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay, nesterov=True)
        raise ConfigError(f"train.optimizer={t.optimizer!r}: choose adamw or sgd")

    def _scheduler(self, opt: torch.optim.Optimizer) -> Any:
        t = self.t
        if t.scheduler == "none":
            return None
        if t.scheduler == "cosine":
            span = max(1, t.epochs)
            return torch.optim.lr_scheduler.LambdaLR(
                opt, lambda e: max(0.5 * (1 + math.cos(math.pi * min(e, span) / span)), 0.01)
            )
        if t.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode=self.mode, factor=0.5, patience=max(1, t.patience // 3)
            )
        raise ConfigError(f"train.scheduler={t.scheduler!r}: choose plateau, cosine or none")

    @contextlib.contextmanager
    def _channels_last_blocks(self) -> Iterator[None]:
        """Blocks trained from cached maps run in channels-last layout: oneDNN's forward and backward convolutions
        are faster on a CPU in it than in the default layout (``benchmarks/block_layout.py`` measures both).
        The ordinary layout is restored afterwards, for saving and for every later user of the model."""
        self._channels_last = any(p.ndim == 4 for p in self.top_params)
        if self._channels_last:
            self.top.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            if self._channels_last:
                self.top.to(memory_format=torch.contiguous_format)
            self._channels_last = False

    def fit(
        self,
        train_x: list[np.ndarray],
        train_y: np.ndarray,
        val_x: np.ndarray,
        val_y: np.ndarray,
        train_meta: np.ndarray | None = None,
        val_meta: np.ndarray | None = None,
        progress: bool = False,
    ) -> list[dict[str, Any]]:
        """``train_x``: one array per view (same rows). Returns the per-epoch history; the best epoch's weights
        (by ``train.monitor``) are left in the model."""
        with self._channels_last_blocks():
            return self._fit(train_x, train_y, val_x, val_y, train_meta, val_meta, progress)

    def _fit(
        self,
        train_x: list[np.ndarray],
        train_y: np.ndarray,
        val_x: np.ndarray,
        val_y: np.ndarray,
        train_meta: np.ndarray | None,
        val_meta: np.ndarray | None,
        progress: bool,
    ) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        t = self.t
        bf16 = cached_bf16(t.precision)
        seed_all(t.seed)
        weight = class_weights(train_y, self.num_classes, t.class_weight_power) if t.class_weights else None
        loss_fn = create_loss(t.loss, weight=weight, label_smoothing=t.label_smoothing, gamma=t.focal_gamma)
        opt = self._optimizer()
        sched = self._scheduler(opt)
        trained = self.head_params + self.top_params
        ema = _Ema(trained, t.ema) if t.ema else None
        n = len(train_y)
        counts = np.bincount(train_y, minlength=self.num_classes)
        history: list[dict[str, Any]] = []
        best, best_epoch, best_state, stale = None, -1, None, 0
        bar = tqdm(range(t.epochs), desc="cached head", unit="epoch", disable=not progress, leave=False)
        for epoch in bar:
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(t.seed * 100_003 + epoch)
            if t.balanced_sampler:
                w = torch.tensor(1.0 / np.maximum(counts[train_y], 1), dtype=torch.double)
                order = torch.multinomial(w, n, replacement=True, generator=g)
            else:
                order = torch.randperm(n, generator=g)
            view_of = torch.randint(len(train_x), (n,), generator=g)
            self.model.train()
            _set_bn_eval(self.top)
            total, seen = 0.0, 0
            for i in range(0, n, t.batch_size):
                idx = order[i : i + t.batch_size].numpy()
                if len(idx) < 2 and seen:  # a batch of one adds noise and nothing else
                    continue
                views = view_of[i : i + t.batch_size].numpy()
                xb = np.stack([train_x[v][j] for v, j in zip(views, idx, strict=True)])
                meta = torch.from_numpy(train_meta[idx]) if train_meta is not None else None
                x, target = torch.from_numpy(xb), torch.from_numpy(train_y[idx]).long()
                mix = _mix(x, meta, t.mixup, g) if t.mixup else None
                if mix is not None:
                    lam, perm, x, meta = mix
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = self.model.forward_head(self._features(x), meta).float()
                loss = loss_fn(logits, target)
                if mix is not None:
                    loss = lam * loss + (1.0 - lam) * loss_fn(logits, target[perm])
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise diverged_error(epoch, "the training loss", opt.param_groups[0]["lr"], t.lr)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema is not None:
                    ema.update()
                total += value * len(idx)
                seen += len(idx)
            with ema.swapped() if ema is not None else contextlib.nullcontext():
                val_logits = self.logits(val_x, val_meta)
            if not np.isfinite(val_logits).all():
                raise diverged_error(epoch, "the model's validation outputs", opt.param_groups[0]["lr"], t.lr)
            m = classification_metrics(val_logits, val_y, self.positive)
            row = {
                "epoch": epoch,
                "train_loss": total / max(seen, 1),
                **{f"val_{k}": v for k, v in m.items()},
                "lr": opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
                # UNIX time at the end of the epoch: lets an outside clock (a benchmark timing the whole
                # process, feature extraction included) place each epoch's score in time
                "wall_time": time.time(),
            }
            history.append(row)
            score = row[t.monitor]
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(score)
            elif sched is not None:
                sched.step()
            improved = best is None or (score > best if self.mode == "max" else score < best)
            if improved and not math.isnan(score):
                best, best_epoch, stale = score, epoch, 0
                # with train.ema the averaged weights were validated, so they are the ones kept
                best_state = [p.detach().clone() for p in (ema.shadow if ema is not None else trained)]
            else:
                stale += 1
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", **{t.monitor: f"{score:.3f}"})
            if t.patience and stale >= t.patience:
                break
        bar.close()
        if best_state is not None:
            with torch.no_grad():
                for p, v in zip(trained, best_state, strict=True):
                    p.copy_(v)
        for row in history:
            row["best"] = row["epoch"] == best_epoch
        self.model.eval()
        return history


def check_mixup(alpha: float) -> None:
    """``train.mixup``: 0 (off) or a positive Beta concentration."""
    if alpha < 0 or not math.isfinite(alpha):
        raise ConfigError(f"train.mixup={alpha}: use a positive Beta parameter (e.g. 0.2), or 0 for off")


def _mix(
    x: torch.Tensor, meta: torch.Tensor | None, alpha: float, g: torch.Generator
) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Manifold mixup of one batch: (weight, partner order, blended maps, blended metadata). The weight is drawn
    from Beta(alpha, alpha) with ``g`` (Gamma draws), so a seeded run, and a resumed one, mixes identically."""
    a = torch.full((2,), float(alpha), dtype=torch.float64)
    ga, gb = torch._standard_gamma(a, generator=g).tolist()
    lam = ga / (ga + gb) if ga + gb > 0 else 0.5
    perm = torch.randperm(len(x), generator=g)
    x = x.float()
    mixed = lam * x + (1.0 - lam) * x[perm]
    meta = lam * meta + (1.0 - lam) * meta[perm] if meta is not None else None
    return lam, perm, mixed, meta


def check_ema(decay: float) -> None:
    """``train.ema``: 0 (off) or a decay between 0 and 1."""
    if decay and not 0.0 < decay < 1.0:
        raise ConfigError(f"train.ema={decay}: the decay must be between 0 and 1 (e.g. 0.99), or 0 for off")


class _Ema:
    """An exponential moving average of ``params`` (``train.ema``), updated after every optimiser step."""

    def __init__(self, params: list[torch.Tensor], decay: float) -> None:
        check_ema(decay)
        self.params = params
        self.decay = decay
        self.steps = 0
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))  # early steps follow the weights closely
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model for the duration; the trained ones back afterwards."""
        with torch.no_grad():
            current = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadow, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, c in zip(self.params, current, strict=True):
                    p.copy_(c)


# ---------------------------------------------------------------------------------------------------------------


def _labels(df: pd.DataFrame, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(df["label"]) - set(index))
    if unknown:
        raise DataError(f"split has labels {unknown} that are not among the dataset classes {classes}")
    return df["label"].map(index).to_numpy(np.int64).copy()


def _meta_encoder(cfg: RunConfig, dataset: Any, train_df: pd.DataFrame) -> Any:
    if not cfg.model.metadata:
        return None
    from medclf.models import MetadataEncoder

    return MetadataEncoder.fit(train_df, list(cfg.model.metadata), getattr(dataset, "metadata", None) or {})


def train_cached(
    cfg: RunConfig,
    dataset: Any,
    split_df: pd.DataFrame,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    meta_encoder: Any = None,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train ``cfg`` with the cached strategy on the ``train``/``val`` rows of ``split_df``.

    Returns the model (standard surface; ``model.medclf_meta_encoder`` holds the fitted metadata encoder when the
    recipe fuses metadata, ``model.medclf_preprocessing`` the preprocessing its features were computed with,
    ``model.medclf_bad_images`` the skipped images) and the per-epoch history.
    """
    from medclf.models import create_model, resolve_preprocessing

    t = cfg.train
    cached_bf16(t.precision)  # a wrong value fails now, not after the feature extraction
    run_dir = Path(run_dir)
    classes = list(dataset.classes)
    if "split" not in split_df.columns:
        raise DataError(
            "strategy=cached needs a split with train/val rows (column 'split'); make one with medclf data split"
        )
    parts_df = {s: split_df[split_df["split"] == s].reset_index(drop=True) for s in ("train", "val")}
    for s, df in parts_df.items():
        if df.empty:
            raise DataError(f"the split has no {s!r} rows; the cached strategy needs both train and val rows")

    enc = meta_encoder if meta_encoder is not None else _meta_encoder(cfg, dataset, parts_df["train"])
    num_meta = int(enc.dim) if enc is not None else 0
    seed_all(t.seed)
    kwargs = dict(cfg.model.kwargs)
    if cfg.model.input_size:
        kwargs.setdefault("input_size", cfg.model.input_size)
    model = create_model(
        cfg.model.name,
        len(classes),
        pretrained=cfg.model.pretrained,
        in_chans=cfg.model.in_chans,
        drop_rate=cfg.model.drop_rate,
        num_meta=num_meta,
        meta_only=cfg.model.metadata_only,
        **kwargs,
    )
    pre = resolve_preprocessing(model, cfg.model.input_size, cfg.model.in_chans, cfg.model.jpeg_draft)
    positive = (
        classes.index(cfg.eval.positive_class)
        if cfg.eval.positive_class in classes
        else min(1, len(classes) - 1)
    )

    cache = {"cache_dir": t.cache_dir, "skip_bad": cfg.data.skip_bad, "progress": progress, "seed": t.seed}
    arrays: dict[str, FeatureSet] = {}
    blocks = 0
    if cfg.model.metadata_only:
        top: nn.Module = nn.Identity()
        for s, df in parts_df.items():
            arrays[s] = FeatureSet(
                views={"clean": np.zeros((len(df), 0), np.float32)}, kept=np.arange(len(df)), bad=[]
            )
    else:
        blocks = t.finetune_blocks
        if blocks > 0 and find_trunk(model) is None:
            # the default recipe asks for 2 blocks; small CNNs have no cuttable trunk, so they train the head only
            log.warning("%s has no EfficientNet-style trunk: cached trains the head only", cfg.model.name)
            blocks = 0
        parts = split_backbone(model, blocks)
        top = parts.top
        for p in model.parameters():
            p.requires_grad_(False)
        for p in [*top.parameters(), *model.head.parameters()]:
            p.requires_grad_(True)
        arrays["train"] = extract_features(
            parts.bottom,
            parts_df["train"]["path"].tolist(),
            pre,
            views=_views(t.views),
            augment=t.augment,
            **cache,
        )
        arrays["val"] = extract_features(parts.bottom, parts_df["val"]["path"].tolist(), pre, **cache)

    bad = sorted({b for fs in arrays.values() for b in fs.bad})
    y = {s: _labels(parts_df[s].iloc[fs.kept], classes) for s, fs in arrays.items()}
    meta = {
        s: (enc.transform(parts_df[s].iloc[fs.kept]).astype(np.float32) if enc is not None else None)
        for s, fs in arrays.items()
    }
    trainer = CachedTrainer(model, top, cfg, len(classes), positive)
    t0 = time.perf_counter()
    history = trainer.fit(
        list(arrays["train"].views.values()),
        y["train"],
        arrays["val"].views["clean"],
        y["val"],
        meta["train"],
        meta["val"],
        progress=progress,
    )
    for p in model.parameters():
        p.requires_grad_(True)
    atomic_write_json(
        run_dir / "logs" / "cached.json",
        {
            "feature_seconds": sum(fs.seconds for fs in arrays.values()),
            "head_seconds": time.perf_counter() - t0,
            # history.csv has fixed columns (shared with the Lightning strategies), so the stamps live here
            "epoch_wall_times": [round(r["wall_time"], 3) for r in history],
            "views": t.views,
            "finetune_blocks": blocks,
            "preprocessing": pre.to_dict(),
            "bad_images": bad,
            "resumed": resume,
        },
    )
    model.medclf_meta_encoder = enc
    model.medclf_preprocessing = pre
    model.medclf_bad_images = bad
    return model.eval(), history
