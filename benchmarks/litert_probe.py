"""Would LiteRT (TensorFlow Lite) with its XNNPACK kernels run EfficientNet-Lite0 faster than ONNX Runtime here?

EfficientNet-Lite was designed for TensorFlow Lite, whose XNNPACK kernels are tuned for depthwise-separable
networks; ONNX Runtime's depthwise convolutions are what keep medclf under 60% of the CPU's limit
(``benchmarks/ort_ops.py``). This probe converts the same trunk (timm ``efficientnet_lite0``, global pooling,
no classifier; random weights: the arithmetic is the same) with ``litert-torch`` and times both engines on one
thread, one image per call, in interleaved rounds. It needs its own environment (litert-torch pulls JAX and
transformers, which medclf does not need)::

    python3.11 -m venv /tmp/venv-lrt
    /tmp/venv-lrt/bin/pip install torch==2.14.1 torchvision==0.29.1 timm litert-torch onnx onnxruntime
    PYTHONPATH=src /tmp/venv-lrt/bin/python benchmarks/litert_probe.py

Writes the section ``litert`` of docs/benchmarks-cpu.md (``cpu_limit.py`` keeps it when it rewrites the page).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-cpu.md"


def best_ms(run, rounds: int, n: int) -> float:
    for _ in range(20):
        run()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            run()
        best = min(best, (time.perf_counter() - t0) / n * 1e3)
    return best


def main(argv: list[str] | None = None) -> None:
    import litert_torch
    import numpy as np
    import onnxruntime as ort
    import timm
    import torch
    from ai_edge_litert.interpreter import Interpreter

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=100, help="images per timed round")
    ap.add_argument("--doc", default=str(DOC))
    a = ap.parse_args(argv)

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0).eval()
    x = torch.rand(1, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lite0.tflite"
        litert_torch.convert(model, (x,)).export(str(path))
        lite = Interpreter(model_path=str(path), num_threads=1)
        lite.allocate_tensors()
    inp, out = lite.get_input_details()[0], lite.get_output_details()[0]
    xn = x.numpy()
    lite.set_tensor(inp["index"], xn)
    lite.invoke()
    with torch.no_grad():
        ref = model(x).numpy()
    diff = float(np.abs(lite.get_tensor(out["index"]).reshape(ref.shape) - ref).max())

    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    onnx = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])

    def run_lite() -> None:
        lite.set_tensor(inp["index"], xn)
        lite.invoke()

    times: dict[str, float] = {"LiteRT (XNNPACK)": float("inf"), "ONNX Runtime": float("inf")}
    for _ in range(a.rounds):  # interleaved: both engines share the VM's slow and fast moments
        times["LiteRT (XNNPACK)"] = min(times["LiteRT (XNNPACK)"], best_ms(run_lite, 1, a.images))
        times["ONNX Runtime"] = min(
            times["ONNX Runtime"], best_ms(lambda: onnx.run(None, {"x": xn}), 1, a.images)
        )
    rows = [
        "## LiteRT (XNNPACK) against ONNX Runtime: EfficientNet-Lite0's trunk, one core",
        "",
        f"One image per call, one thread, best of {a.rounds} interleaved rounds of {a.images} images; random "
        f"weights. LiteRT's output differs from PyTorch's by at most {diff:.1e}.",
        "",
        "| engine | ms per image | relative |",
        "|---|---:|---:|",
        *[
            f"| {k} {metadata.version('ai-edge-litert') if 'Lite' in k else ort.__version__} | {v:.2f} | "
            f"{v / times['ONNX Runtime']:.2f}× |"
            for k, v in times.items()
        ],
        "",
        "medclf keeps ONNX Runtime: LiteRT is not faster for this network on this CPU.",
    ]
    if times["LiteRT (XNNPACK)"] < times["ONNX Runtime"]:
        rows[-1] = "LiteRT is faster here: worth an engine of its own (not built yet)."
    print("\n".join(rows), flush=True)
    from _results import write_section

    write_section("litert", "\n".join(rows), doc=Path(a.doc))


if __name__ == "__main__":
    main()
