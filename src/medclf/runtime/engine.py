"""One ``Engine`` surface over PyTorch, ONNX Runtime and OpenVINO, with one batching policy.

An engine takes a feed (input name -> array with a batch axis) and returns its outputs in order. Callers (the
serving ``Predictor``, batch predictions, the out-of-distribution fit, the feature cache, ``medclf export``) pick
the engine once and call ``run``; how a batch is cut into engine calls is decided here:

- **ONNX Runtime** (``DEFAULT_ENGINE``: the engine medclf uses on a CPU unless told otherwise). A single image runs
  on every core (the lowest latency). A batch, when more than one core is allowed, runs one image per call on a
  second, one-thread session, one call per core at a time: the images are independent, so the cores need not meet
  at every layer, and a core slowed by a neighbour on a shared machine holds up only its own image. With one core
  a batch runs in calls of ``engine_batch`` images. Both sessions compute the same numbers (tested).
- **OpenVINO** (``pip install 'medclf[openvino]'``) runs a batch in calls of ``engine_batch`` images on all cores.
- **PyTorch** runs the whole batch in one call on the module's device.

``ENGINE_BATCH``: on a CPU, EfficientNet-Lite0 runs faster in calls of a few images than in one call on a whole
batch, because a few images' activations stay in the CPU's cache (docs/benchmarks-cpu.md, from
``benchmarks/cpu_limit.py``); 4 keeps the per-call overhead small for tiny models.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn

from medclf.errors import ConfigError

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "ENGINE_BATCH",
    "Engine",
    "OnnxRuntimeEngine",
    "OpenVinoEngine",
    "TorchEngine",
    "check_engine",
    "cpu_cores",
    "create_graph_engine",
    "ort_session",
    "run_micro_batches",
]

ENGINES = ("onnx", "openvino", "torch")
DEFAULT_ENGINE = "onnx"
"""ONNX Runtime: faster than PyTorch's eager mode on a CPU for these CNNs (docs/benchmarks-cpu.md), installed
with medclf, and exact to 1e-4 in probability (checked at every export)."""
ENGINE_BATCH = 4


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_engine(engine: str, precision: str = "f32") -> None:
    """ConfigError for an unknown engine or precision, or bf16 on an engine other than OpenVINO."""
    from medclf.runtime.openvino import PRECISIONS

    if engine not in ENGINES:
        raise ConfigError(f"unknown backend {engine!r}; choose one of {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: choose {' or '.join(PRECISIONS)}")
    if precision == "bf16" and engine != "openvino":
        raise ConfigError(f"precision=bf16 runs on backend openvino only (got backend {engine!r})")


def run_micro_batches(
    session: Any,
    output_names: Sequence[str] | None,
    feed: Mapping[str, np.ndarray],
    size: int = ENGINE_BATCH,
    pool: Executor | None = None,
) -> list[np.ndarray]:
    """``session.run(output_names, feed)`` on rows ``[i, i + size)`` of every input in turn, outputs joined along
    the first axis: the same result as one call on the whole batch. Every input must have the same number of
    rows; ``size`` < 1 runs the whole batch at once. With ``pool`` the calls run on its threads, several at once
    (for a session that is safe to call concurrently)."""
    rows = {len(v) for v in feed.values()}
    if len(rows) != 1:
        raise ValueError(f"inputs have different numbers of rows: { {k: len(v) for k, v in feed.items()} }")
    (n,) = rows
    names = None if output_names is None else list(output_names)
    if size < 1 or n <= size:
        return list(session.run(names, dict(feed)))

    def call(i: int) -> Any:
        return session.run(names, {k: v[i : i + size] for k, v in feed.items()})

    starts = range(0, n, size)
    parts = list(pool.map(call, starts)) if pool is not None else [call(i) for i in starts]
    return [np.concatenate(out) for out in zip(*parts, strict=True)]


def ort_session(model: bytes | str | os.PathLike[str], num_threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on a graph (its bytes or its file); ``num_threads`` None: ONNX Runtime's own."""
    import onnxruntime as ort

    # ORT_DISABLE_TELEMETRY (set by `import medclf`) stops ONNX Runtime's telemetry only when it comes before
    # ONNX Runtime's import; when other code imported it first, this at least stops this process's events
    if os.environ.get("ORT_DISABLE_TELEMETRY") != "0":
        ort.disable_telemetry_events()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if num_threads:
        so.intra_op_num_threads = int(num_threads)
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"]
    )


class Engine:
    """A model (or graph) that maps a feed to its named outputs. Safe to call from several threads."""

    name: str = ""
    inputs: frozenset[str] = frozenset()
    """The feed names the engine takes."""
    outputs: tuple[str, ...] = ()
    """The outputs ``run`` returns, in order."""
    per_image: bool = False
    """Whether a batch runs one image per call, one call per core at a time."""
    engine_batch: int = ENGINE_BATCH
    """Images per engine call when a batch is not split over the cores (< 1: the whole batch in one call)."""

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs for a batch (every input has the batch on its first axis)."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the engine's threads (the engine stays usable, one call at a time)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TorchEngine(Engine):
    """An ``nn.Module`` called eagerly with the feed's arrays as positional tensors, in ``inputs`` order (an input
    missing from the feed is passed as None); its output (a tensor or a tuple of them) comes back as float32."""

    name = "torch"

    def __init__(
        self,
        module: nn.Module,
        inputs: Sequence[str] = ("image", "meta"),
        outputs: Sequence[str] = ("logits",),
        *,
        channels_last: bool = False,
    ) -> None:
        self.module = module.eval()
        self.input_order = tuple(inputs)
        self.inputs = frozenset(inputs)
        self.outputs = tuple(outputs)
        self.channels_last = channels_last
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        param = next(module.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        args: list[torch.Tensor | None] = []
        for name in self.input_order:
            value = feed.get(name)
            t = None if value is None else torch.from_numpy(np.asarray(value)).to(self.device)
            if t is not None and self.channels_last and t.ndim == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            args.append(t)
        while args and args[-1] is None:  # optional trailing inputs keep the module's defaults
            args.pop()
        # inference_mode keeps no autograd state, so concurrent calls on one eval-mode module do not interact
        with torch.inference_mode():
            out = self.module(*args)
        outs = out if isinstance(out, tuple | list) else (out,)
        return [o.float().cpu().numpy() if o is not None else None for o in outs]  # type: ignore[misc]


class OnnxRuntimeEngine(Engine):
    """An ONNX graph on ONNX Runtime (the batching policy is in the module docstring).

    ``threads``: cores to use (default: every core this process may run on). ``single_image_session``: build the
    all-core session that answers single images at once (serving); without it every call goes to the one-thread
    session (batch work, where the second session would only cost its build).
    """

    name = "onnx"

    def __init__(
        self,
        graph: bytes | str | os.PathLike[str],
        *,
        threads: int | None = None,
        outputs: Sequence[str] | None = None,
        single_image_session: bool = True,
    ) -> None:
        self._graph = graph
        self._requested = threads
        self.threads = int(threads or cpu_cores())
        self.per_image = self.threads > 1
        self._lock = threading.Lock()
        self._one: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self.session: Any = None
        """The all-core session (single images, and batches when only one core is allowed)."""
        if single_image_session or not self.per_image:
            self.session = ort_session(graph, 1 if self.threads == 1 else threads)
            if self.threads == 1:
                self._one = self.session  # one core: one session answers every call
        probe = self.session if self.session is not None else self._per_core_session()
        self.inputs = frozenset(i.name for i in probe.get_inputs())
        self.outputs = tuple(outputs or (o.name for o in probe.get_outputs()))
        self._output_list = list(self.outputs)

    def _per_core_session(self) -> Any:
        with self._lock:
            if self._one is None:
                self._one = ort_session(self._graph, 1)
                if self.threads > 1:
                    self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="medclf-onnx")
            return self._one

    @property
    def per_core_ready(self) -> bool:
        """Whether the one-thread session (built at the first batch) exists."""
        return self._one is not None

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        n = len(next(iter(feed.values())))
        if self.per_image and (n > 1 or self.session is None):
            one = self._per_core_session()
            return run_micro_batches(one, self.outputs, feed, 1, pool=self._pool)
        return run_micro_batches(self.session, self.outputs, feed, self.engine_batch)

    def run_one(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """One call on the one-thread session in the calling thread, for callers that spread the calls over the
        cores themselves (``medclf.train.features`` queues them beside its decoding)."""
        one = self._one if self._one is not None else self._per_core_session()
        return list(one.run(self._output_list, dict(feed)))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None


class OpenVinoEngine(Engine):
    """An ONNX graph compiled by OpenVINO for the CPU (fp32, or bf16 when asked); batches in calls of
    ``engine_batch`` images on all cores."""

    name = "openvino"

    def __init__(
        self,
        graph: bytes | str | os.PathLike[str],
        *,
        threads: int | None = None,
        precision: str = "f32",
        outputs: Sequence[str] | None = None,
    ) -> None:
        from medclf.runtime.openvino import OpenVinoSession

        self.session = OpenVinoSession(graph, num_threads=threads, precision=precision)
        self.inputs = frozenset(i.name for i in self.session.get_inputs())
        self.outputs = tuple(outputs or self.session.output_names)

    def run(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return run_micro_batches(self.session, self.outputs, feed, self.engine_batch)


def create_graph_engine(
    engine: str,
    graph: bytes | str | os.PathLike[str],
    *,
    threads: int | None = None,
    precision: str = "f32",
    outputs: Sequence[str] | None = None,
    single_image_session: bool = True,
) -> OnnxRuntimeEngine | OpenVinoEngine:
    """The engine ``engine`` (``onnx`` or ``openvino``) on an exported graph (its bytes or its file)."""
    check_engine(engine, precision)
    if engine == "openvino":
        return OpenVinoEngine(graph, threads=threads, precision=precision, outputs=outputs)
    if engine == "onnx":
        return OnnxRuntimeEngine(
            graph, threads=threads, outputs=outputs, single_image_session=single_image_session
        )
    raise ConfigError(f"engine {engine!r} does not run an exported graph; choose onnx or openvino")
