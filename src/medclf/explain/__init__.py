"""Class-activation maps (Grad-CAM, Grad-CAM++, Score-CAM via pytorch-grad-cam) and heat-map overlays."""

from __future__ import annotations

from medclf.explain.cam import CAM_METHODS, MetaBound, compute_cam
from medclf.explain.overlay import heatmap_image, model_view, overlay_cam

__all__ = ["CAM_METHODS", "MetaBound", "compute_cam", "heatmap_image", "model_view", "overlay_cam"]
