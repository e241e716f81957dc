"""Class-activation maps (Grad-CAM, Grad-CAM++, Score-CAM via pytorch-grad-cam) and heat-map overlays.

Names load lazily so that ``medclf --help`` (which imports ``medclf.explain._cli``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["CAM_METHODS", "MetaBound", "compute_cam", "heatmap_image", "model_view", "overlay_cam"]

_WHERE = {
    "CAM_METHODS": "cam",
    "MetaBound": "cam",
    "compute_cam": "cam",
    "heatmap_image": "overlay",
    "model_view": "overlay",
    "overlay_cam": "overlay",
}

if TYPE_CHECKING:
    from medclf.explain.cam import CAM_METHODS, MetaBound, compute_cam
    from medclf.explain.overlay import heatmap_image, model_view, overlay_cam


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"medclf.explain.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medclf.explain' has no attribute {name!r}")
