"""The metadata-only model of the fusion ablation (the fusion head itself is ``base.FusionHead``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from medclf.models._registry import register_model
from medclf.models.base import MedclfModel

__all__ = ["MetadataOnlyModel"]


@register_model(name="metadata_mlp", description="metadata-only MLP (the fusion ablation's tabular baseline)")
class MetadataOnlyModel(MedclfModel):
    """Ignores the image: ``forward(x, meta)`` uses only ``meta``. ``num_features`` is 0, ``cam_layer`` None."""

    default_cfg: ClassVar[dict[str, Any]] = {
        "input_size": 32,
        "in_chans": 3,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    }
    meta_only = True

    def __init__(
        self, num_classes: int, num_meta: int = 0, drop_rate: float = 0.0, in_chans: int = 3, hidden: int = 64
    ) -> None:
        super().__init__()
        if num_meta <= 0:
            raise ValueError("the metadata-only model needs num_meta > 0")
        self.num_features = 0
        self.cam_layer = None
        self.num_classes = num_classes
        self.num_meta = num_meta
        self.head = nn.Sequential(
            nn.Linear(num_meta, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(drop_rate),
            nn.Linear(hidden, num_classes),
        )

    def forward_features(self, x: torch.Tensor | None) -> torch.Tensor:
        n = 0 if x is None else x.shape[0]
        return torch.zeros(n, 0)

    def forward_head(self, features: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        if meta is None:
            raise ValueError(f"the metadata-only model needs meta=[B, {self.num_meta}]")
        return self.head(meta.to(dtype=self.head[0].weight.dtype))

    def forward(self, x: torch.Tensor | None, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(torch.zeros(0), meta)

    def block_groups(self) -> list[list[nn.Parameter]]:
        return []
