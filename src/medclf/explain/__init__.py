"""Class-activation maps (Grad-CAM, Grad-CAM++, Score-CAM via pytorch-grad-cam) and heat-map overlays.

Names load lazily so that ``medclf --help`` (which imports ``medclf.explain._cli``) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medclf._lazy import lazy_names

__all__ = ["CAM_METHODS", "MetaBound", "compute_cam", "heatmap_image", "model_view", "overlay_cam"]

_WHERE = dict.fromkeys(("CAM_METHODS", "MetaBound", "compute_cam"), "cam") | dict.fromkeys(
    ("heatmap_image", "model_view", "overlay_cam"), "overlay"
)

if TYPE_CHECKING:
    from medclf.explain.cam import CAM_METHODS, MetaBound, compute_cam
    from medclf.explain.overlay import heatmap_image, model_view, overlay_cam


__getattr__ = lazy_names(__name__, _WHERE, globals())
