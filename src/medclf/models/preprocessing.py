"""Preprocessing resolved from the model (or its name) once; the run folder keeps the result."""

from __future__ import annotations

from torch import nn

from medclf.data.transforms import Preprocessing

__all__ = ["resolve_preprocessing"]


def resolve_preprocessing(
    model_or_name: nn.Module | str,
    input_size: int | None = None,
    in_chans: int | None = None,
    jpeg_draft: bool = True,
) -> Preprocessing:
    """The model's ``default_cfg`` (input size, channels, mean, std) with optional overrides."""
    if isinstance(model_or_name, str):
        from medclf.models._registry import model_default_cfg

        cfg = model_default_cfg(model_or_name)
    else:
        cfg = dict(getattr(model_or_name, "default_cfg", {}) or {})
    chans = int(in_chans or cfg.get("in_chans", 3))
    return Preprocessing(
        input_size=int(input_size or cfg.get("input_size", 224)),
        in_chans=chans,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        jpeg_draft=jpeg_draft,
    )
