"""Serving: one ``Predictor`` (PyTorch or ONNX Runtime) behind the CLI, the REST API and the web app.

The REST server (FastAPI) and the web app (Streamlit) are imported only where they are used.
"""

from __future__ import annotations

from medclf.serve.ood import FeatureOOD
from medclf.serve.predictor import BACKENDS, Explanation, Prediction, Predictor

__all__ = ["BACKENDS", "Explanation", "FeatureOOD", "Prediction", "Predictor"]
