"""Test-time augmentation: a model whose image features are averaged over flipped and rotated copies of the input.

A run trained with ``eval.tta: [hflip, vflip]`` stores the views in ``run.json``; ``load_run`` wraps the model in
``TTAModel``, so validation predictions (temperature, operating point), ``medclf evaluate``, the
``Predictor``, the ONNX export and the app all see the same averaged prediction. The views average the pooled
features before the head: for a linear head that is exactly the mean of the logits. Training never uses the
wrapper, and the weights saved are the inner model's (``unwrap_tta``).

Grad-CAM explains the un-augmented view (``medclf.explain.compute_cam`` unwraps the model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from medclf.errors import ConfigError
from medclf.models.base import MedclfModel

__all__ = ["TTA_VIEWS", "TTAModel", "check_tta_views", "unwrap_tta", "with_tta"]


def _rot90(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(2, 3).flip(3)


def _rot270(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(2, 3).flip(2)


TTA_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hflip": lambda x: x.flip(3),
    "vflip": lambda x: x.flip(2),
    "rot90": _rot90,
    "rot180": lambda x: x.flip(2, 3),
    "rot270": _rot270,
}
"""View name -> transform of an image batch [B, C, H, W]; the original view is always included."""


def check_tta_views(views: Sequence[str], where: str = "eval.tta") -> tuple[str, ...]:
    """The views as a tuple, or a ConfigError naming the bad entry and the allowed ones."""
    out: list[str] = []
    for v in views:
        if v not in TTA_VIEWS:
            raise ConfigError(
                f"{where}: unknown test-time view {v!r}; choose from {', '.join(TTA_VIEWS)} "
                "(the original image is always included)"
            )
        if v in out:
            raise ConfigError(f"{where}: view {v!r} is listed twice")
        out.append(v)
    return tuple(out)


class TTAModel(MedclfModel):
    """``model`` with its pooled image features averaged over the original input and ``views``.

    Not registered in the model registry and never saved itself: the run folder keeps the inner model's weights
    and the view names, and ``load_run`` rebuilds the wrapper.
    """

    def __init__(self, model: MedclfModel, views: Sequence[str]) -> None:
        nn.Module.__init__(self)
        self.views = check_tta_views(views)
        if getattr(model, "meta_only", False) or not int(getattr(model, "num_features", 0) or 0):
            raise ConfigError("eval.tta: this model does not look at images, so it has nothing to augment")
        self.model = model
        self.num_features = model.num_features
        self.num_classes = model.num_classes
        self.num_meta = model.num_meta
        self.default_cfg = model.default_cfg
        self.cam_layer = model.cam_layer

    @property
    def head(self) -> nn.Module:  # type: ignore[override]
        return self.model.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[-1] != x.shape[-2]) and any(v.startswith("rot") and v != "rot180" for v in self.views):
            raise ConfigError(
                f"eval.tta: rot90/rot270 need square inputs, got {x.shape[-2]}x{x.shape[-1]}; use flips instead"
            )
        feats = self.model.forward_features(x)
        for v in self.views:
            feats = feats + self.model.forward_features(TTA_VIEWS[v](x))
        return feats / (len(self.views) + 1)

    def forward_head(self, features: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_head(features, meta)

    def block_groups(self) -> list[list[nn.Parameter]]:
        return self.model.block_groups()


def with_tta(model: nn.Module, views: Sequence[str] | None) -> nn.Module:
    """``model`` wrapped for test-time augmentation, or unchanged when ``views`` is empty."""
    model = unwrap_tta(model)
    if not views:
        return model
    if not isinstance(model, MedclfModel):
        raise ConfigError(
            f"eval.tta needs a medclf model (medclf.models.create_model), got {type(model).__name__}"
        )
    wrapped = TTAModel(model, views)
    wrapped.train(model.training)
    return wrapped


def unwrap_tta(model: nn.Module) -> nn.Module:
    """The model inside a ``TTAModel`` wrapper (any other model unchanged)."""
    return model.model if isinstance(model, TTAModel) else model
