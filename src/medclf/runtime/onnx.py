"""The one ONNX export of a PyTorch module and the one check that an exported graph stands in for the module.

The feature cache, batch predictions, the out-of-distribution fit, the serving ``Predictor`` and ``medclf export``
all export through :func:`export_graph` and check the graph with :func:`parity_gap` before they use it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from medclf.runtime.engine import Engine

__all__ = ["OPSET", "export_graph", "parity_gap"]

OPSET = 17


def export_graph(
    module: nn.Module, args: tuple[torch.Tensor, ...], inputs: Sequence[str], outputs: Sequence[str]
) -> bytes:
    """``module`` (in eval mode) as an ONNX graph whose inputs and outputs all have a dynamic batch axis.

    The TorchScript exporter: much faster to export than the dynamo one on a CPU, and exact for these CNN graphs.
    Its tracer warnings (constant sizes, Python control flow) are silenced; callers check the graph with
    :func:`parity_gap`.
    """
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            buf,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={n: {0: "batch"} for n in [*inputs, *outputs]},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue()


def parity_gap(
    graph: Engine,
    reference: Engine,
    feed: Mapping[str, np.ndarray],
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float]:
    """Largest |graph - reference| of the first output on ``feed`` and on its first row alone (the batch axis must
    really be dynamic), as (raw, transformed): ``transform`` maps the output first (e.g. logits to probabilities;
    without it both are the raw gap). Infinite when either side gives a NaN or infinite value."""
    one = {k: v[:1] for k, v in feed.items()}
    raw, mapped = 0.0, 0.0
    for inputs in (feed, one):
        got = np.asarray(graph.run(inputs)[0], np.float64)
        want = np.asarray(reference.run(inputs)[0], np.float64)
        if not got.size:
            continue
        pairs = [(got, want)] if transform is None else [(got, want), (transform(got), transform(want))]
        gaps = [float(np.abs(a - b).max()) for a, b in pairs]
        gaps = [g if np.isfinite(g) else float("inf") for g in gaps]
        raw, mapped = max(raw, gaps[0]), max(mapped, gaps[-1])
    return raw, mapped
