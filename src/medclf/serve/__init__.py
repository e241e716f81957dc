"""Serving: one ``Predictor`` (PyTorch or ONNX Runtime) behind the CLI, the REST API and the web app.

The REST server (FastAPI) and the web app (Streamlit) are imported only where they are used, and the names below
load lazily so that ``medclf --help`` (which imports ``medclf.serve._cli``) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medclf._lazy import lazy_names

__all__ = ["BACKENDS", "Explanation", "FeatureOOD", "Prediction", "Predictor"]

_WHERE = {"FeatureOOD": "ood"} | dict.fromkeys(
    ("BACKENDS", "Explanation", "Prediction", "Predictor"), "predictor"
)

if TYPE_CHECKING:
    from medclf.serve.ood import FeatureOOD
    from medclf.serve.predictor import BACKENDS, Explanation, Prediction, Predictor


__getattr__ = lazy_names(__name__, _WHERE, globals())
