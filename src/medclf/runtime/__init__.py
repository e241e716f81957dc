"""Inference runtime: one ONNX export, one ``Engine`` surface (PyTorch, ONNX Runtime, OpenVINO) with one batching
policy, and one softmax / temperature / decision.

Everything that runs a trained model for an answer goes through here: the serving ``Predictor``, batch predictions
(``medclf.models.inference``), evaluation, the feature cache of the ``cached`` strategy and the out-of-distribution
fit. The package knows no run folders or datasets (``medclf.models`` builds on it, not the other way round).
Names load lazily, so that ``import medclf.runtime.decision`` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medclf._lazy import lazy_names

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "ENGINE_BATCH",
    "Engine",
    "ModelRunner",
    "OnnxRuntimeEngine",
    "OpenVinoEngine",
    "TorchEngine",
    "calibrated_probabilities",
    "create_graph_engine",
    "decide",
    "export_graph",
    "parity_gap",
    "resolve_positive_classes",
    "softmax",
]

_WHERE = {
    **dict.fromkeys(
        ("calibrated_probabilities", "decide", "resolve_positive_classes", "softmax"), "decision"
    ),
    **dict.fromkeys(
        (
            "DEFAULT_ENGINE",
            "ENGINES",
            "ENGINE_BATCH",
            "Engine",
            "OnnxRuntimeEngine",
            "OpenVinoEngine",
            "TorchEngine",
            "create_graph_engine",
        ),
        "engine",
    ),
    **dict.fromkeys(("export_graph", "parity_gap"), "onnx"),
    "ModelRunner": "runner",
}

if TYPE_CHECKING:
    from medclf.runtime.decision import calibrated_probabilities, decide, resolve_positive_classes, softmax
    from medclf.runtime.engine import (
        DEFAULT_ENGINE,
        ENGINE_BATCH,
        ENGINES,
        Engine,
        OnnxRuntimeEngine,
        OpenVinoEngine,
        TorchEngine,
        create_graph_engine,
    )
    from medclf.runtime.onnx import export_graph, parity_gap
    from medclf.runtime.runner import ModelRunner


__getattr__ = lazy_names(__name__, _WHERE, globals())
