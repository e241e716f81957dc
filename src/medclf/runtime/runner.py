"""A model's logits (or pooled image features) for one batch after another, on ONNX Runtime when it agrees.

``medclf train`` predicts its validation and test splits, ``medclf evaluate`` predicts its data (every image once
per test-time view) and the serving out-of-distribution detector is fitted on image features. On a CPU ONNX Runtime
runs these CNNs faster than PyTorch's eager mode (docs/benchmarks-cpu.md), so on a CPU, from ``GRAPH_MIN_IMAGES``
images up, the model is exported once per call
(``medclf.runtime.onnx``) and run by an ``OnnxRuntimeEngine``, one image per call and core. The graph is checked
against PyTorch on the first images; a model that does not export, or whose graph disagrees, runs in PyTorch.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from medclf.runtime.engine import Engine, OnnxRuntimeEngine, TorchEngine
from medclf.runtime.onnx import export_graph, parity_gap

__all__ = ["GRAPH_MIN_IMAGES", "PARITY_LOGITS", "ModelRunner", "decoded_chunks"]

log = logging.getLogger(__name__)

PARITY_LOGITS = 1e-3
"""Largest |ONNX Runtime - PyTorch| logit (or feature) allowed on the check images before the graph is used."""
GRAPH_MIN_IMAGES = 16
"""From this many images up the model is exported for ONNX Runtime; fewer are quicker to run in PyTorch than to
export."""


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(image, meta)


class _Features(_Logits):
    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.forward_features(image)


class ModelRunner:
    """Logits (or, with ``features``, pooled image features) of ``model`` for one batch after another.

    With ``graph``, the first batch exports the model and checks the graph against PyTorch on its first two images
    (``PARITY_LOGITS``); every batch then runs on the graph when it stands in for the model. Otherwise, and without
    ``graph``, PyTorch computes them on the model's device. Use it as a context manager, which frees the graph
    engine's threads.
    """

    def __init__(self, model: nn.Module, *, features: bool = False, graph: bool = True) -> None:
        self.model = model
        self.features = features
        self._try_graph = graph
        self._torch = TorchEngine((_Features if features else _Logits)(model), outputs=("y",))
        self.engine: Engine = self._torch
        """The engine the batches run on (PyTorch until a graph is built and checked)."""

    def _build_graph(self, feed: dict[str, np.ndarray]) -> Engine | None:
        if self._torch.device.type != "cpu":
            return None  # a GPU runs the model itself faster
        try:
            args = tuple(torch.from_numpy(feed[n]) for n in ("image", "meta") if n in feed)
            data = export_graph(self._torch.module, args, list(feed), ["y"])
            engine = OnnxRuntimeEngine(
                data, threads=max(1, torch.get_num_threads()), single_image_session=False
            )
        except Exception as exc:  # export coverage varies by model; PyTorch always works
            log.info("predicting in PyTorch: the model did not export to ONNX (%s)", exc)
            return None
        gap, _ = parity_gap(engine, self._torch, feed)
        if not gap <= PARITY_LOGITS:
            log.info("predicting in PyTorch: the ONNX graph's outputs differ by %.2g", gap)
            engine.close()
            return None
        return engine

    def __call__(self, image: torch.Tensor, meta: np.ndarray | None = None) -> np.ndarray:
        """``image`` [B, C, H, W] (preprocessed), ``meta`` [B, M] encoded metadata or None -> [B, ...] float32."""
        feed = {"image": np.ascontiguousarray(image.numpy(), dtype=np.float32)}
        if meta is not None and not self.features:
            feed["meta"] = np.ascontiguousarray(meta, dtype=np.float32)
        if self._try_graph:  # once, on the first images
            self._try_graph = False
            self.engine = self._build_graph({k: v[:2] for k, v in feed.items()}) or self._torch
        return self.engine.run(feed)[0]

    def close(self) -> None:
        self.engine.close()

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
