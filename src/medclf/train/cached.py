"""The `cached` strategy's inputs: frozen-backbone outputs computed once (disk cache), served as training batches.

The bottom of the backbone is frozen, so its outputs for every training and validation image are computed once
(``medclf.train.features``, cached on disk) and the same LightningModule that trains every strategy
(``medclf.train.module``) trains the rest from them: ``CachedNet`` is the trained part, the top
``train.finetune_blocks`` blocks (at ``lr × finetune_lr_scale``) and the head. ``train.views > 1`` caches augmented
views of each training image; every epoch draws one view per image, so the head sees augmentation without
recomputing the backbone.

``CachedNet`` shares its parameters with the complete image model built by ``medclf.models.create_model``, so the
engine saves, evaluates, explains and exports that model like any other.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from medclf._atomic import atomic_write_json
from medclf.config import RunConfig
from medclf.errors import ConfigError, DataError
from medclf.train.features import FeatureSet, extract_features, find_trunk, split_backbone

__all__ = ["CachedInputs", "CachedNet", "FeatureDataset", "cached_inputs"]

log = logging.getLogger(__name__)


def _views(n: int) -> list[str]:
    if n < 1:
        raise ConfigError(f"train.views={n}: must be at least 1 (1 = the image itself)")
    return ["clean", *(f"aug{i}" for i in range(1, n))]


class CachedNet(nn.Module):
    """The trained part of a cached-strategy model: ``top`` (blocks from cached maps, or pooling) then ``head``.

    Both are the image model's own modules, so training this trains the model.
    """

    def __init__(self, top: nn.Module, head: nn.Module, meta_only: bool = False) -> None:
        super().__init__()
        self.top = top
        self.head = head
        self.meta_only = meta_only

    def forward(self, x: torch.Tensor | None, meta: torch.Tensor | None = None) -> torch.Tensor:
        if self.meta_only:  # the metadata-only model's head reads the metadata alone
            return self.head(meta)
        return self.head(self.top(x), meta)


class FeatureDataset(Dataset):
    """``(features, meta, label)`` rows of cached arrays. Keys are an index (validation: the clean view) or
    ``(index, seed)`` from ``EpochSampler`` (training: the seed picks the view, so a resumed run draws the same)."""

    def __init__(self, views: list[np.ndarray], labels: np.ndarray, meta: np.ndarray | None) -> None:
        self.views = views
        self.labels = labels
        self.meta = meta

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        i, seed = key if isinstance(key, tuple) else (key, None)
        view = 0 if seed is None or len(self.views) == 1 else random.Random(seed).randrange(len(self.views))
        x = torch.from_numpy(self.views[view][i]).float()
        m = torch.from_numpy(self.meta[i]) if self.meta is not None else torch.zeros(0)
        return x, m, int(self.labels[i])


@dataclass
class CachedInputs:
    """What the engine trains for the cached strategy: the net, its two datasets and the unreadable images."""

    net: CachedNet
    train: FeatureDataset
    val: FeatureDataset
    bad: list[str]


def _labels(df: pd.DataFrame, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(df["label"]) - set(index))
    if unknown:
        raise DataError(f"split has labels {unknown} that are not among the dataset classes {classes}")
    return df["label"].map(index).to_numpy(np.int64).copy()


def cached_inputs(
    cfg: RunConfig,
    model: nn.Module,
    pre: Any,
    classes: list[str],
    parts: dict[str, pd.DataFrame],
    meta_encoder: Any,
    run_dir: Path,
    *,
    progress: bool,
) -> CachedInputs:
    """Freeze the bottom of ``model``, compute (or read from the cache) its outputs for the ``train`` and ``val``
    rows of ``parts`` and return what the LightningModule trains; ``logs/cached.json`` records the feature time."""
    t = cfg.train
    views = _views(t.views)  # a wrong value fails now, not after the feature extraction
    cache = {"cache_dir": t.cache_dir, "skip_bad": cfg.data.skip_bad, "progress": progress, "seed": t.seed}
    meta_only = bool(getattr(model, "meta_only", False))
    blocks = t.finetune_blocks
    if meta_only:
        top: nn.Module = nn.Identity()
        arrays = {
            s: FeatureSet(
                views={"clean": np.zeros((len(df), 0), np.float32)}, kept=np.arange(len(df)), bad=[]
            )
            for s, df in parts.items()
        }
    else:
        if blocks > 0 and find_trunk(model) is None:
            # the default recipe asks for blocks; small CNNs have no cuttable trunk, so they train the head only
            log.warning("%s has no EfficientNet-style trunk: cached trains the head only", cfg.model.name)
            blocks = 0
        split = split_backbone(model, blocks)
        top = split.top
        arrays = {
            "train": extract_features(
                split.bottom, parts["train"]["path"].tolist(), pre, views=views, augment=t.augment, **cache
            ),
            "val": extract_features(split.bottom, parts["val"]["path"].tolist(), pre, **cache),
        }
    for p in model.parameters():  # the bottom never trains; the engine gives the gradients back afterwards
        p.requires_grad_(False)
    net = CachedNet(top, model.head, meta_only)
    for p in net.parameters():
        p.requires_grad_(True)
    ds = {}
    for s, fs in arrays.items():
        rows = parts[s].iloc[fs.kept]
        meta = meta_encoder.transform(rows).astype(np.float32) if meta_encoder is not None else None
        ds[s] = FeatureDataset(list(fs.views.values()), _labels(rows, classes), meta)
    bad = sorted({b for fs in arrays.values() for b in fs.bad})
    atomic_write_json(
        run_dir / "logs" / "cached.json",
        {
            "feature_seconds": sum(fs.seconds for fs in arrays.values()),
            "views": t.views,
            "finetune_blocks": blocks,
            "preprocessing": pre.to_dict(),
            "bad_images": bad,
        },
    )
    return CachedInputs(net=net, train=ds["train"], val=ds["val"], bad=bad)
