"""Grad-CAM overlays for the report's gallery of the most confident errors."""

from __future__ import annotations

import os
from collections.abc import Callable

from PIL import Image

__all__ = ["run_explainer"]


def run_explainer(
    run_dir: str | os.PathLike[str], *, method: str = "gradcam", alpha: float = 0.5
) -> Callable[[str], Image.Image] | None:
    """``path -> overlay`` for a run's model (the map of the class it decided), or None when it has no image
    layer to explain (the metadata-only model). Metadata is not available per path here, so fusion models are
    explained with their metadata treated as unknown."""
    from medclf.serve.predictor import Predictor

    predictor = Predictor.from_run(run_dir, backend="torch", ood=False)
    if not predictor.can_explain:
        return None

    def explain(path: str) -> Image.Image:
        return predictor.explain(path, method=method, alpha=alpha).overlay

    return explain
