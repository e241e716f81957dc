"""Class-activation maps (Grad-CAM, Grad-CAM++, Score-CAM) for any model with the medclf surface.

Every medclf model exposes ``cam_layer``, the layer whose activations the map is computed from. Fusion models
take metadata as a second input; pytorch-grad-cam calls ``model(x)`` only, so the metadata is bound into a
small wrapper first (and broadcast over the batches Score-CAM builds).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from medclf._lazy import require_extra
from medclf.errors import ConfigError

__all__ = ["CAM_METHODS", "MetaBound", "compute_cam"]

CAM_METHODS = ("gradcam", "gradcam++", "scorecam")


class MetaBound(nn.Module):
    """``model(x, meta)`` as a one-input module: the metadata row is repeated for every image of a batch."""

    def __init__(self, model: nn.Module, meta: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.meta = meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pytorch-grad-cam asks for the input's gradient, which would make every CAM a full backward pass;
        # the map needs gradients at `cam_layer` only, so the graph starts there (see `_grads_from`)
        x = x.detach()
        if self.meta is None:
            return self.model(x)
        meta = self.meta.to(x.device)
        if meta.shape[0] != x.shape[0]:
            meta = meta[:1].expand(x.shape[0], *meta.shape[1:])
        return self.model(x, meta)


def _tokens_to_map(t: torch.Tensor) -> torch.Tensor:
    # transformers hand the CAM layer [B, tokens, C]: drop the prefix (class/register) tokens, make a square grid
    if t.ndim != 3:
        return t
    n = t.shape[1]
    side = math.isqrt(n)
    while side > 0 and n - side * side > 8:  # at most a few prefix tokens
        side -= 1
    prefix = n - side * side
    grid = t[:, prefix:, :].reshape(t.shape[0], side, side, t.shape[2])
    return grid.permute(0, 3, 1, 2)


def _cam_class(method: str) -> Callable[..., object]:
    require_extra("explain", "Grad-CAM")
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM}
    if method not in classes:
        raise ConfigError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    return classes[method]


@contextlib.contextmanager
def _grads_from(model: nn.Module, layers: list[nn.Module]) -> Iterator[None]:
    """Only the ``layers``' parameters require gradients while the map is computed (restored afterwards).

    The layers before it then build no autograd graph, so the backward pass covers the last block and the
    head instead of the whole network: much less work on a CPU, the same map.
    """
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    own = {id(p) for layer in layers for p in layer.parameters()}
    try:
        for p in params:
            p.requires_grad_(id(p) in own)
        yield
    finally:
        for p, flag in zip(params, saved, strict=True):
            p.requires_grad_(flag)


def compute_cam(
    model: nn.Module,
    image: torch.Tensor,
    *,
    meta: torch.Tensor | None = None,
    method: str = "gradcam",
    target: int | None = None,
    cam_layer: nn.Module | None = None,
) -> np.ndarray:
    """Heat map in [0, 1] of shape [H, W] (the input's size) for one preprocessed image.

    ``image`` is [C, H, W] or [1, C, H, W]; ``target`` is a class index (default: the predicted class).
    The model is used in eval mode; its weights are not changed. A model with several CAM layers (``cam_layers``,
    a fold ensemble) gets the average of their maps. A test-time-augmented model is explained on the original
    view only.
    """
    require_extra("explain", "Grad-CAM")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from medclf.models.tta import unwrap_tta

    model = unwrap_tta(model)  # the map explains the original view, not the average over TTA views
    layer = cam_layer if cam_layer is not None else getattr(model, "cam_layer", None)
    if not isinstance(layer, nn.Module):
        raise ConfigError(
            f"{type(model).__name__} has no `cam_layer`; create it with medclf.models.create_model so it has one"
        )
    layers = [layer]
    if cam_layer is None and getattr(model, "cam_layers", None):
        layers = list(model.cam_layers)
    x = image.unsqueeze(0) if image.ndim == 3 else image[:1]
    if meta is not None and meta.ndim == 1:
        meta = meta.unsqueeze(0)
    bound = MetaBound(model, meta).eval()
    cam_cls = _cam_class(method)
    targets = None if target is None else [ClassifierOutputTarget(int(target))]
    # frozen backbones (cached / fine-tune strategies) still need activation gradients: enable them locally
    with (
        torch.enable_grad(),
        _grads_from(model, layers),
        cam_cls(model=bound, target_layers=layers, reshape_transform=_tokens_to_map) as cam,
    ):
        if method == "scorecam":
            cam.batch_size = 32
        heat = cam(input_tensor=x, targets=targets)
    heat = np.nan_to_num(np.asarray(heat[0], dtype=np.float32), nan=0.0)
    return np.clip(heat, 0.0, 1.0)
