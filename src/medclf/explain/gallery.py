"""Grad-CAM overlays for the report's gallery of the most confident errors."""

from __future__ import annotations

import os
from collections.abc import Callable

from PIL import Image

__all__ = ["run_explainer"]


def run_explainer(
    run_dir: str | os.PathLike[str], *, method: str = "gradcam", alpha: float = 0.5
) -> Callable[[str], Image.Image] | None:
    """``path -> overlay`` for a run's model (the map of the class it decided at the run's operating point, as the
    ``Predictor`` decides), or None when it has no image layer to explain (the metadata-only model). Metadata is
    not available per path here, so fusion models are explained with their metadata treated as unknown."""
    import numpy as np
    import pandas as pd
    import torch

    from medclf.data.images import load_image
    from medclf.data.transforms import create_transform
    from medclf.explain.cam import compute_cam
    from medclf.explain.overlay import overlay_cam
    from medclf.models import load_run
    from medclf.runtime.decision import calibrated_probabilities, decide, resolve_positive_classes
    from medclf.runtime.engine import TorchEngine

    run = load_run(run_dir)
    if getattr(run.model, "cam_layer", None) is None:
        return None
    pre = run.preprocessing
    transform = create_transform(pre)
    engine = TorchEngine(run.model)
    binary = len(run.classes) == 2
    positive = resolve_positive_classes(
        run.classes, run.positive_class if binary else None, getattr(run, "positive_classes", None)
    )
    temperature = max(float(run.temperature or 1.0), 1e-6)
    meta = None
    if run.meta_encoder is not None:  # one row of unknown values
        enc = run.meta_encoder
        meta = enc.transform(pd.DataFrame([{}], columns=enc.columns)).astype(np.float32)

    def explain(path: str) -> Image.Image:
        image = load_image(path, min_side=pre.decode_side())
        x = transform(image)[None].numpy().astype(np.float32)
        feed = {"image": x} if meta is None else {"image": x, "meta": meta}
        probs = calibrated_probabilities(engine.run(feed)[0], temperature)
        target = int(decide(probs, run.classes, run.threshold, positive)[0])
        cam = compute_cam(
            run.model,
            torch.from_numpy(x),
            meta=None if meta is None else torch.from_numpy(meta),
            method=method,
            target=target,
        )
        return overlay_cam(image, cam, alpha, resize=pre.resize)

    return explain
