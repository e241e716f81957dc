"""Serving: one ``Predictor`` (PyTorch or ONNX Runtime) behind the CLI, the REST API and the web app.

The REST server (FastAPI) and the web app (Streamlit) are imported only where they are used, and the names below
load lazily so that ``medclf --help`` (which imports ``medclf.serve._cli``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["BACKENDS", "Explanation", "FeatureOOD", "Prediction", "Predictor"]

_WHERE = {
    "BACKENDS": "predictor",
    "Explanation": "predictor",
    "FeatureOOD": "ood",
    "Prediction": "predictor",
    "Predictor": "predictor",
}

if TYPE_CHECKING:
    from medclf.serve.ood import FeatureOOD
    from medclf.serve.predictor import BACKENDS, Explanation, Prediction, Predictor


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"medclf.serve.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medclf.serve' has no attribute {name!r}")
