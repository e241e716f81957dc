"""One way to export a PyTorch module to ONNX, shared by the feature cache, validation predictions and serving."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["OPSET", "onnx_bytes"]

OPSET = 17


def onnx_bytes(
    module: nn.Module, args: tuple[torch.Tensor, ...], inputs: Sequence[str], outputs: Sequence[str]
) -> bytes:
    """``module`` (in eval mode) as an ONNX graph whose inputs and outputs all have a dynamic batch axis.

    The TorchScript exporter: on a CPU about 100 times faster than the dynamo one, and exact for these CNN graphs.
    Its tracer warnings (constant sizes, Python control flow) are silenced; the callers check the graph's output.
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
