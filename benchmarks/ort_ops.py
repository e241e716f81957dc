"""Where ONNX Runtime's time goes in EfficientNet-Lite0, by kind of convolution, against one core's fp32 limit.

    .venv/bin/python benchmarks/ort_ops.py [--size 224] [--runs 200]

The frozen trunk that feature extraction runs (``split_backbone(model, 0).bottom``, offline ImageNet weights),
exported as medclf exports it, in one ONNX Runtime session on one thread, one image per call, with ONNX Runtime's
own per-operator profiler. Every operator of the optimised graph is a convolution with its batch norm and
activation folded in; each is classed as 1×1 (pointwise), depthwise, or the 3×3 stem. Its arithmetic is counted
from the PyTorch convolutions it comes from (2 FLOP per multiply-add). The limit is numpy's OpenBLAS 2048³ fp32
GEMM on one thread (as ``benchmarks/cpu_limit.py`` measures on every core). Writes the section ``ort_ops`` of
docs/benchmarks-cpu.md, which ``cpu_limit.py`` keeps when it rewrites the page.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-cpu.md"


def conv_kind(depthwise: bool, kernel: tuple[int, ...]) -> str:
    if depthwise:
        return "depthwise"
    return "1×1 (pointwise)" if tuple(kernel) == (1, 1) else f"{kernel[0]}×{kernel[1]} (stem)"


def torch_flops(bottom, size: int) -> collections.Counter:
    """FLOPs of every convolution kind for one image, from forward hooks on the PyTorch trunk."""
    import torch

    flops: collections.Counter = collections.Counter()

    def hook(mod, _inp, out) -> None:
        kh, kw = mod.kernel_size
        per_output = 2 * (mod.in_channels // mod.groups) * kh * kw
        depthwise = mod.groups > 1 and mod.groups == mod.in_channels
        flops[conv_kind(depthwise, mod.kernel_size)] += per_output * out[0].numel()

    handles = [m.register_forward_hook(hook) for m in bottom.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        bottom(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return flops


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from medclf.models import create_model
    from medclf.runtime.onnx import export_graph as onnx_bytes
    from medclf.train.features import split_backbone

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--doc", default=str(DOC))
    a = ap.parse_args(argv)

    from cpu_limit import numpy_gemm

    limit = float(numpy_gemm(threads=1)["gflops"])
    model = create_model("efficientnet_lite0", num_classes=2, pretrained=True).eval()
    bottom = split_backbone(model, 0).bottom.eval()
    flops = torch_flops(bottom, a.size)
    graph = onnx_bytes(bottom, (torch.zeros(1, 3, a.size, a.size),), ["x"], ["y"])
    x = np.random.default_rng(0).random((1, 3, a.size, a.size), dtype=np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        # plain session: the time per image, best of 5 runs of ``--runs`` images
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        plain = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
        for _ in range(20):
            plain.run(None, {"x": x})
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(a.runs):
                plain.run(None, {"x": x})
            best = min(best, (time.perf_counter() - t0) / a.runs)
        # profiled session: each operator's share of the time; its optimised graph names the operators
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "prof")
        so.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        prof = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
        for _ in range(20 + a.runs):
            prof.run(None, {"x": x})
        events = json.loads(Path(prof.end_profiling()).read_text())
        nodes = {n.name: n for n in onnx.load(str(Path(tmp) / "optimised.onnx")).graph.node}

    shares: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node = nodes.get(e["name"][: -len("_kernel_time")])
        attrs = {at.name: at for at in node.attribute} if node is not None else {}
        if node is None or not node.op_type.endswith("Conv"):
            shares["other (pooling, layout)"] += e["dur"]
            continue
        groups = attrs["group"].i if "group" in attrs else 1
        kernel = tuple(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else (1, 1)
        shares[conv_kind(groups > 1, kernel)] += e[
            "dur"
        ]  # EfficientNet's only grouped convolutions are depthwise
    total_us = sum(shares.values())
    total_flop = sum(flops.values())
    rows = [
        f"## Where the time goes: EfficientNet-Lite0's trunk in ONNX Runtime, one core ({a.size} px)",
        "",
        f"One image per call, one thread: **{best * 1e3:.2f} ms per image**, "
        f"{total_flop / best / 1e9:.1f} GFLOP/s = **{total_flop / best / 1e9 / limit:.0%}** of one core's fp32 "
        f"limit ({limit:.1f} GFLOP/s, numpy OpenBLAS 2048³ GEMM on one thread). Shares of the time from ONNX "
        f"Runtime's profiler ({a.runs} images after 20 warm-up runs); each kind's GFLOP/s is its arithmetic over "
        "its share of the unprofiled time.",
        "",
        "| operators | share of the arithmetic | share of the time | GFLOP/s | fraction of the one-core limit |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, us in shares.most_common():
        f = flops.get(kind, 0)
        seconds = best * us / total_us
        rate = f / seconds / 1e9 if f else 0.0
        rows.append(
            f"| {kind} | {f / total_flop:.1%} | {us / total_us:.1%} | "
            + (f"{rate:.1f} | {rate / limit:.0%} |" if f else "– | – |")
        )
    print("\n".join(rows), flush=True)
    from _results import write_section

    write_section("ort_ops", "\n".join(rows), doc=Path(a.doc))


if __name__ == "__main__":
    main()
