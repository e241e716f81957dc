"""The studies' small CNNs, trained from scratch: a tiny test model, the mpox 2-block CNN, a grayscale
chest X-ray CNN and a small residual CNN."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from medclf.models._registry import register_model
from medclf.models.base import MedclfModel

__all__ = ["CxrCNN", "MpoxCNN", "ResNetSmall", "TinyCNN"]

_HALF = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


class _ConvTrunkModel(MedclfModel):
    """A ``features`` conv stack + global average pooling."""

    features: nn.Sequential

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)

    def block_groups(self) -> list[list[nn.Parameter]]:
        groups = [list(m.parameters()) for m in self.features.children()]
        return [g for g in groups if g]


@register_model(description="a few thousand parameters at 32 px: the fast test model")
class TinyCNN(_ConvTrunkModel):
    default_cfg: ClassVar[dict[str, Any]] = {"input_size": 32, "in_chans": 3, **_HALF}

    def __init__(
        self, num_classes: int, in_chans: int = 3, drop_rate: float = 0.0, num_meta: int = 0
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)),
            nn.MaxPool2d(2),
            nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True)),
        )
        self.num_features = 16
        self.cam_layer = self.features[2][0]
        self.init_head(num_classes, drop_rate=drop_rate, num_meta=num_meta)


@register_model(
    description="the mpox study's CNN: conv 20 and 50 filters 5×5 + max-pool, dense 500, dropout 0.5"
)
class MpoxCNN(MedclfModel):
    """Keras ``Conv2D(20,5) MaxPool Conv2D(50,5) MaxPool Flatten Dense(500) Dropout(0.5) Dense(C)``.

    ``num_features`` is the 500-unit dense layer, so fusion and cached heads see the same features as the
    study's classifier."""

    default_cfg: ClassVar[dict[str, Any]] = {
        "input_size": 32,
        "in_chans": 3,
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
    }

    def __init__(
        self,
        num_classes: int,
        in_chans: int = 3,
        drop_rate: float = 0.5,
        num_meta: int = 0,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 20, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = input_size // 4
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(50 * side * side, 500), nn.ReLU(inplace=True))
        self.num_features = 500
        self.cam_layer = self.features[3]
        self.init_head(num_classes, drop_rate=drop_rate, num_meta=num_meta)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.features(x))

    def block_groups(self) -> list[list[nn.Parameter]]:
        return [
            list(self.features[0].parameters()),
            list(self.features[3].parameters()),
            list(self.dense.parameters()),
        ]


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


@register_model(description="custom grayscale chest X-ray CNN at 128×128 (4 conv blocks)")
class CxrCNN(_ConvTrunkModel):
    default_cfg: ClassVar[dict[str, Any]] = {"input_size": 128, "in_chans": 1, "mean": (0.5,), "std": (0.25,)}

    def __init__(
        self, num_classes: int, in_chans: int = 1, drop_rate: float = 0.3, num_meta: int = 0
    ) -> None:
        super().__init__()
        widths = (32, 64, 128, 256)
        blocks: list[nn.Module] = []
        cin = in_chans
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [_conv_bn(cin, w), _conv_bn(w, w)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            cin = w
        self.features = nn.Sequential(*blocks)
        self.num_features = widths[-1]
        self.cam_layer = self.features[-1]
        self.init_head(num_classes, drop_rate=drop_rate, num_meta=num_meta)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


@register_model(description="small residual CNN (stem + 3 stages of 2 basic blocks), 64 px")
class ResNetSmall(_ConvTrunkModel):
    default_cfg: ClassVar[dict[str, Any]] = {
        "input_size": 64,
        "in_chans": 3,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }

    def __init__(
        self, num_classes: int, in_chans: int = 3, drop_rate: float = 0.2, num_meta: int = 0
    ) -> None:
        super().__init__()
        widths = (32, 64, 128)
        stages: list[nn.Module] = [_conv_bn(in_chans, widths[0])]
        cin = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_BasicBlock(cin, w, stride), _BasicBlock(w, w, 1)))
            cin = w
        self.features = nn.Sequential(*stages)
        self.num_features = widths[-1]
        self.cam_layer = self.features[-1]
        self.init_head(num_classes, drop_rate=drop_rate, num_meta=num_meta)
