"""Would LiteRT (TensorFlow Lite) with XNNPACK, or torch.compile, run EfficientNet-Lite0 faster than ONNX Runtime?

EfficientNet-Lite was designed for TensorFlow Lite, whose XNNPACK kernels are tuned for depthwise-separable
networks; ONNX Runtime's depthwise convolutions are what keep medclf under 60% of the CPU's limit
(``benchmarks/ort_ops.py``). This probe converts the same trunk (timm ``efficientnet_lite0``, global pooling,
no classifier; random weights: the arithmetic is the same) with ``litert-torch``, compiles it with
``torch.compile`` (channels-last), and times the three engines on one thread, one image per call, in interleaved
rounds. It needs its own environment (litert-torch pulls JAX and transformers, which medclf does not need)::

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


def ms_per_call(run, n: int) -> float:
    """Mean milliseconds of ``n`` calls of ``run`` after 20 warm-up calls."""
    for _ in range(20):
        run()
    t0 = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - t0) / n * 1e3


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

    # PyTorch's own compiler (inductor's C++ code and oneDNN convolutions), channels-last, one thread
    torch.set_num_threads(1)
    cl = model.to(memory_format=torch.channels_last)
    xc = x.to(memory_format=torch.channels_last)
    compiled = torch.compile(cl)
    with torch.inference_mode():
        compiled(xc)

    def run_compiled() -> None:
        with torch.inference_mode():
            compiled(xc)

    engines = {
        "LiteRT (XNNPACK)": (run_lite, metadata.version("ai-edge-litert")),
        "ONNX Runtime": (lambda: onnx.run(None, {"x": xn}), ort.__version__),
        "PyTorch torch.compile, channels-last": (run_compiled, torch.__version__),
    }
    times = dict.fromkeys(engines, float("inf"))
    for _ in range(a.rounds):  # interleaved: the engines share the VM's slow and fast moments
        for name, (run, _version) in engines.items():
            times[name] = min(times[name], ms_per_call(run, a.images))
    base = times["ONNX Runtime"]
    rows = [
        "## LiteRT (XNNPACK) and torch.compile against ONNX Runtime: EfficientNet-Lite0's trunk, one core",
        "",
        f"One image per call, one thread, best of {a.rounds} interleaved rounds of {a.images} images; random "
        f"weights. LiteRT's output differs from PyTorch's by at most {diff:.1e}.",
        "",
        "| engine | ms per image | relative |",
        "|---|---:|---:|",
        *[f"| {k} {engines[k][1]} | {v:.2f} | {v / base:.2f}× |" for k, v in times.items()],
        "",
        "medclf keeps ONNX Runtime: no other engine is faster for this network on this CPU."
        if min(times.values()) >= base
        else "An engine here is faster than ONNX Runtime: worth an engine of its own (not built yet).",
    ]
    print("\n".join(rows), flush=True)
    from _results import write_section

    write_section("litert", "\n".join(rows), doc=Path(a.doc))


if __name__ == "__main__":
    main()
