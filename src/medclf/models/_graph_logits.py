"""Batch logits (or image features) of a run's PyTorch model through ONNX Runtime, for predictions on a CPU.

``medclf train`` predicts its validation and test splits (for the temperature, the operating point and the
prediction tables) and ``medclf evaluate`` predicts its data, every image once per test-time view. PyTorch's eager
mode runs EfficientNet-Lite0 on this project's 2-core CPU several times slower than ONNX Runtime does
(docs/benchmarks-cpu.md), so on a CPU the model is exported once per call (the TorchScript exporter)
and run one image per call and core, as the serving ``Predictor`` runs batches. The graph is checked against
PyTorch on the first images; a model that does not export, or whose graph disagrees, runs in PyTorch instead.
The out-of-distribution detector's fit (``medclf.serve.predictor.image_features``) runs its features the same way.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from medclf._microbatch import OneImagePerCore
from medclf._onnx_export import onnx_bytes, onnx_session

__all__ = ["PARITY_LOGITS", "GraphLogits", "ModelRunner", "decoded_chunks"]

log = logging.getLogger(__name__)

PARITY_LOGITS = 1e-3
"""Largest |ONNX Runtime - PyTorch| logit allowed on the check images before the graph is used."""


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(image, meta)


class _Features(_Logits):
    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_features(image)


class GraphLogits:
    """``model(image, meta)`` as an ONNX Runtime graph: one image per call, as many calls at once as torch has
    threads. Build with :meth:`build`, which returns None where the graph cannot stand in for the model."""

    def __init__(self, session: Any, has_meta: bool, threads: int) -> None:
        self.has_meta = has_meta
        self.engine = OneImagePerCore(session, threads)

    @classmethod
    def build(
        cls, model: nn.Module, image: np.ndarray, meta: np.ndarray | None, *, features: bool = False
    ) -> GraphLogits | None:
        """Export ``model`` (in eval mode, on the CPU) and check it on ``image`` [B, C, H, W] (+ ``meta`` [B, M])
        against PyTorch. None when the model is not on the CPU, does not export or disagrees. ``features``: the
        graph computes ``model.forward_features(image)`` (the pooled image features, test-time views averaged)
        instead of the logits."""
        param = next(model.parameters(), None)
        if param is not None and param.device.type != "cpu":
            return None  # a GPU runs the model itself faster
        try:
            x = torch.from_numpy(image)
            m = torch.from_numpy(meta) if meta is not None and not features else None
            args: tuple[torch.Tensor, ...] = (x,) if m is None else (x, m)
            names = ["image"] if m is None else ["image", "meta"]
            module = (_Features if features else _Logits)(model).eval()
            data = onnx_bytes(module, args, names, ["y"])
            with torch.no_grad():
                want = module(x, m).float().numpy()
            session = onnx_session(data, num_threads=1)
        except Exception as exc:  # export coverage varies by model; PyTorch always works
            log.info("predicting in PyTorch: the model did not export to ONNX (%s)", exc)
            return None
        graph = cls(session, m is not None, max(1, torch.get_num_threads()))
        got = graph(image, meta)
        gap = float(np.abs(got - want).max()) if got.size else 0.0
        if not np.isfinite(gap) or gap > PARITY_LOGITS:
            log.info("predicting in PyTorch: the ONNX graph's logits differ by %.2g", gap)
            graph.close()
            return None
        return graph

    def __call__(self, image: np.ndarray, meta: np.ndarray | None = None) -> np.ndarray:
        feed = {"image": np.ascontiguousarray(image, dtype=np.float32)}
        if self.has_meta:
            feed["meta"] = np.ascontiguousarray(meta, dtype=np.float32)
        return self.engine.run(["y"], feed)[0]

    def close(self) -> None:
        self.engine.close()


class ModelRunner:
    """Logits (or, with ``features``, pooled image features) of ``model`` for one batch after another.

    With ``graph``, the first batch builds a :class:`GraphLogits` and every batch runs on it when it can stand in
    for the model; otherwise, and without ``graph``, PyTorch computes them on the model's device. Use it as a
    context manager, which frees the graph's threads.
    """

    def __init__(self, model: nn.Module, *, features: bool = False, graph: bool = True) -> None:
        self.model = model
        self.features = features
        self._try_graph = graph
        self._graph: GraphLogits | None = None
        self._module = (_Features if features else _Logits)(model).eval()
        param = next(model.parameters(), None)
        self._device = param.device if param is not None else torch.device("cpu")

    def __call__(self, image: torch.Tensor, meta: np.ndarray | None = None) -> np.ndarray:
        """``image`` [B, C, H, W] (preprocessed), ``meta`` [B, M] encoded metadata or None -> [B, ...] float32."""
        if self._try_graph:  # once, on the first images
            self._try_graph = False
            first = image[:2].numpy()
            if self.features:
                self._graph = GraphLogits.build(self.model, first, None, features=True)
            else:
                self._graph = GraphLogits.build(self.model, first, None if meta is None else meta[:2])
        if self._graph is not None:
            return self._graph(image.numpy(), meta)
        m = torch.from_numpy(meta).to(self._device) if meta is not None and not self.features else None
        with torch.no_grad():
            return self._module(image.to(self._device), m).float().cpu().numpy()

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()

    def __enter__(self) -> ModelRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


T = TypeVar("T")


def decoded_chunks(
    n: int, decode: Callable[[int], T], batch_size: int
) -> Iterator[tuple[Sequence[int], list[T]]]:
    """``(indices, [decode(i) for i in indices])`` for ``batch_size`` indices of ``range(n)`` at a time, each chunk
    decoded on as many threads as torch has (what feeds a :class:`ModelRunner` one batch after another)."""
    with concurrent.futures.ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        for start in range(0, n, batch_size):
            chunk = range(start, min(start + batch_size, n))
            yield chunk, list(pool.map(decode, chunk))
