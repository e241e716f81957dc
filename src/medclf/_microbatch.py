"""A graph engine that runs a whole batch on all its threads gets it as micro-batches of a few images.

That is OpenVINO, and ONNX Runtime limited to one thread. ONNX Runtime with several cores runs a batch one image
per call and core instead (``OneImagePerCore``, below; ``medclf.train.features`` queues such calls itself).

On a CPU, EfficientNet-Lite0 can run faster in micro-batches of a few images than in one call on 16: a few
images' activations stay in the CPU's cache, 16 images' do not. How much depends on the cache the machine has to
itself: on this project's 2-core VM, engine calls of 4 ran up to about 20% faster than calls of 16 while the VM
was undisturbed, and within a few percent of them (either way) while other tenants loaded it
(``benchmarks/cpu_limit.py`` sweeps calls of 1, 4 and 16; docs/benchmarks-cpu.md). 4 keeps the per-call overhead
small for tiny models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = ["ENGINE_BATCH", "OneImagePerCore", "run_micro_batches"]

ENGINE_BATCH = 4


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


class OneImagePerCore:
    """A one-thread session run one image per call, ``threads`` calls at a time: the images are independent, so
    the cores need not meet at every layer (the serving ``Predictor``'s batches, ``medclf.models._graph_logits``).
    The session must be safe to call from several threads (ONNX Runtime's is)."""

    def __init__(self, session: Any, threads: int) -> None:
        self.session = session
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="medclf-onnx") if threads > 1 else None

    def run(self, output_names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return run_micro_batches(self.session, output_names, feed, 1, pool=self.pool)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
