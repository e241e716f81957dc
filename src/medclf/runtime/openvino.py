"""OpenVINO sessions on ONNX graphs: the engine beside ONNX Runtime (docs/benchmarks-cpu.md).

Optional (``pip install 'medclf[openvino]'``). Graphs compile at fp32 by default: OpenVINO would otherwise run in
bfloat16 on CPUs with AMX or AVX512-BF16, which is faster but moves probabilities by a few hundredths.
``precision="bf16"`` asks for that explicitly.

`OpenVinoSession` answers the two calls medclf makes on an ``onnxruntime.InferenceSession`` (``get_inputs`` and
``run``), so ``medclf.runtime.engine`` drives either engine the same way. It is safe to share between threads: each thread
gets its own infer request on the one compiled model.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from medclf.errors import ConfigError

__all__ = ["PRECISIONS", "OpenVinoSession", "available"]

PRECISIONS = ("f32", "bf16")


def available() -> bool:
    """True when the ``openvino`` package imports (it is an optional extra)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class _Input:
    name: str


def _name(port: Any) -> str:
    # a port keeps every name of its tensor; OpenVINO may merge an input with the node behind it (e.g. "meta"
    # with "/head/Cast_output_0"): the graph's own name is the one the ONNX exporter did not generate
    names = sorted(port.get_names())
    return next((n for n in names if not n.startswith("/")), port.get_any_name())


class OpenVinoSession:
    """An ONNX graph (bytes or a file path) compiled for the CPU; ``run(names, feed)`` as ONNX Runtime's."""

    def __init__(
        self, model: bytes | str | os.PathLike[str], num_threads: int | None = None, precision: str = "f32"
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision={precision!r}: choose {' or '.join(PRECISIONS)}")
        if not available():
            raise ConfigError(
                "the openvino backend needs the OpenVINO runtime: pip install 'medclf[openvino]', "
                "or choose backend onnx"
            )
        import openvino as ov

        core = ov.Core()
        if isinstance(model, bytes):
            graph = core.read_model(model, ov.Tensor(np.empty(0, dtype=np.uint8)))
        else:
            graph = core.read_model(os.fspath(model))
        config: dict[str, Any] = {
            # one stream, all threads on each request: the lowest single-image latency, and on a small CPU
            # several streams do not speed up batches either
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision,
        }
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        self.compiled = core.compile_model(graph, "CPU", config)
        self._inputs = [_Input(_name(p)) for p in self.compiled.inputs]
        self._input_names = {i.name for i in self._inputs}
        self._outputs = {_name(p): p for p in self.compiled.outputs}
        self._local = threading.local()

    @property
    def output_names(self) -> list[str]:
        return list(self._outputs)

    def get_inputs(self) -> list[_Input]:
        return list(self._inputs)

    def _request(self) -> Any:
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = list(self._outputs) if output_names is None else output_names
        if set(feed) != self._input_names:  # an input left out would silently keep the previous call's values
            raise ValueError(
                f"feed {sorted(feed)} does not match the graph's inputs {sorted(self._input_names)}"
            )
        result = self._request().infer(feed)
        # the request reuses its output buffers on the next call: hand back copies
        return [np.array(result[self._outputs[n]], copy=True) for n in names]
