"""Models: one registry and one surface for the small CNNs, any timm backbone, image+metadata fusion, and
run-folder I/O (safetensors + JSON).

Names are imported lazily so that ``medclf --help`` (which imports ``medclf.models._cli``) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medclf._lazy import lazy_names

__all__ = [
    "FusionHead",
    "LinearHead",
    "LoadedRun",
    "MedclfModel",
    "MetadataEncoder",
    "MetadataOnlyModel",
    "ModelEntry",
    "RunDir",
    "RunInfo",
    "TimmClassifier",
    "create_model",
    "get_model_entry",
    "list_models",
    "load_run",
    "model_default_cfg",
    "predict_frame",
    "register_model",
    "resolve_preprocessing",
    "save_run_model",
]

_WHERE = {
    "FusionHead": "base",
    "LinearHead": "base",
    "MedclfModel": "base",
    "LoadedRun": "run_io",
    "RunDir": "run_io",
    "RunInfo": "run_io",
    "load_run": "run_io",
    "save_run_model": "run_io",
    "MetadataEncoder": "metadata",
    "MetadataOnlyModel": "fusion",
    "ModelEntry": "_registry",
    "create_model": "_registry",
    "get_model_entry": "_registry",
    "list_models": "_registry",
    "model_default_cfg": "_registry",
    "register_model": "_registry",
    "TimmClassifier": "timm_adapter",
    "predict_frame": "inference",
    "resolve_preprocessing": "preprocessing",
}

if TYPE_CHECKING:
    from medclf.models._registry import (
        ModelEntry,
        create_model,
        get_model_entry,
        list_models,
        model_default_cfg,
        register_model,
    )
    from medclf.models.base import FusionHead, LinearHead, MedclfModel
    from medclf.models.fusion import MetadataOnlyModel
    from medclf.models.inference import predict_frame
    from medclf.models.metadata import MetadataEncoder
    from medclf.models.preprocessing import resolve_preprocessing
    from medclf.models.run_io import LoadedRun, RunDir, RunInfo, load_run, save_run_model
    from medclf.models.timm_adapter import TimmClassifier


__getattr__ = lazy_names(__name__, _WHERE, globals())
