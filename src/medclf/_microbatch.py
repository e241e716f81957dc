"""Graph engines (ONNX Runtime, OpenVINO) run a batch as micro-batches of a few images.

On a CPU, EfficientNet-Lite0 runs faster in micro-batches of 1-4 images than in one call on 16: one image's
activations stay in the L2 cache, 16 images' do not. Measured on the 2-core AMD EPYC VM, fp32, model only:
ONNX Runtime 453 / 445 / 360 images/s and OpenVINO 437 / 412 / 375 images/s at 1 / 4 / 16 images per call
(``benchmarks/cpu_limit.py`` sweeps this; docs/benchmarks-cpu.md). 4 keeps most of that gain while the per-call
overhead stays small for tiny models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["ENGINE_BATCH", "run_micro_batches"]

ENGINE_BATCH = 4


def run_micro_batches(
    session: Any, output_names: Sequence[str] | None, feed: Mapping[str, np.ndarray], size: int = ENGINE_BATCH
) -> list[np.ndarray]:
    """``session.run(output_names, feed)`` on rows ``[i, i + size)`` of every input in turn, outputs joined along
    the first axis: the same result as one call on the whole batch. Every input must have the same number of
    rows; ``size`` < 1 runs the whole batch at once."""
    rows = {len(v) for v in feed.values()}
    if len(rows) != 1:
        raise ValueError(f"inputs have different numbers of rows: { {k: len(v) for k, v in feed.items()} }")
    (n,) = rows
    names = None if output_names is None else list(output_names)
    if size < 1 or n <= size:
        return list(session.run(names, dict(feed)))
    parts = [session.run(names, {k: v[i : i + size] for k, v in feed.items()}) for i in range(0, n, size)]
    return [np.concatenate(out) for out in zip(*parts, strict=True)]
