"""The one model surface every medclf network has, and the heads that sit on pooled features.

``MedclfModel`` = a trunk (image -> pooled features) + a head (features [+ metadata] -> logits). The small CNNs,
the timm adapter and the metadata-only model all subclass it, so training, evaluation, Grad-CAM, export and
serving never ask which kind of network they hold.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["FusionHead", "LinearHead", "MedclfModel", "create_head"]


class LinearHead(nn.Module):
    """Dropout + linear classifier on pooled image features."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, features: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.drop(features))


class FusionHead(nn.Module):
    """Late fusion: image features ‖ MLP(metadata) -> MLP -> logits.

    The metadata branch is small on purpose: a few encoded columns (age, sex, site) must not drown the
    1000+ image features, but they get their own non-linearity before being concatenated.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        num_meta: int,
        drop_rate: float = 0.0,
        meta_hidden: int = 32,
        fusion_hidden: int = 256,
    ) -> None:
        super().__init__()
        self.num_meta = num_meta
        self.meta_mlp = nn.Sequential(
            nn.Linear(num_meta, meta_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(meta_hidden, meta_hidden),
            nn.ReLU(inplace=True),
        )
        self.fusion = nn.Sequential(
            nn.Dropout(drop_rate),
            nn.Linear(num_features + meta_hidden, fusion_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(fusion_hidden, num_classes),
        )

    def forward(self, features: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        if meta is None:
            raise ValueError(
                f"this model fuses {self.num_meta} metadata features with the image; pass meta=[B, {self.num_meta}]"
            )
        parts = [self.meta_mlp(meta.to(dtype=self.meta_mlp[0].weight.dtype))]
        if features.shape[1]:
            parts.insert(0, features)
        return self.fusion(torch.cat(parts, dim=1))


def create_head(
    num_features: int, num_classes: int, *, drop_rate: float = 0.0, num_meta: int = 0, **kw: Any
) -> nn.Module:
    """A linear head for image-only models, a fusion head when metadata features are given."""
    if num_meta > 0:
        return FusionHead(num_features, num_classes, num_meta, drop_rate=drop_rate, **kw)
    return LinearHead(num_features, num_classes, drop_rate)


class MedclfModel(nn.Module):
    """Base class: subclasses set ``trunk``-side modules, ``num_features``, ``cam_layer`` and implement
    ``forward_features``; the head is built here.

    Attributes every model has:
      ``num_features`` pooled image feature size; ``num_classes``; ``num_meta`` metadata features (0 = image only);
      ``default_cfg`` {input_size, in_chans, mean, std}; ``cam_layer`` the module Grad-CAM hooks (None when the
      model does not look at images); ``head`` the trainable classifier; ``meta_only``.
    """

    default_cfg: ClassVar[dict[str, Any]] = {
        "input_size": 224,
        "in_chans": 3,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }
    meta_only: bool = False

    num_features: int
    num_classes: int
    num_meta: int
    cam_layer: nn.Module | None
    head: nn.Module

    def __setattr__(self, name: str, value: Any) -> None:
        # `cam_layer` points at a module that already lives in the trunk; registering it a second time would
        # put aliased keys in the state dict (safetensors then drops one name) and a duplicate in named_children
        if name == "cam_layer":
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def init_head(self, num_classes: int, *, drop_rate: float = 0.0, num_meta: int = 0) -> None:
        self.num_classes = num_classes
        self.num_meta = num_meta
        self.head = create_head(self.num_features, num_classes, drop_rate=drop_rate, num_meta=num_meta)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(features, meta)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x), meta)

    def block_groups(self) -> list[list[nn.Parameter]]:
        """Trunk parameters in groups from the input (first) to the output (last); `finetune` unfreezes the
        last N. The head is not in any group."""
        head_ids = {id(p) for p in self.head.parameters()}
        groups: list[list[nn.Parameter]] = []
        for _, child in self.named_children():
            params = [p for p in child.parameters() if id(p) not in head_ids]
            if params:
                groups.append(params)
        return groups
