"""How close medclf's fast CPU path gets to this machine's fp32 limit.

The limit is the best fp32 GEMM on the machine: numpy's OpenBLAS 2048³ matmul, run in a child process with
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset (they pin older, slower kernels), next to torch's matmul. Then
EfficientNet-Lite0 at 224 px through medclf's paths — feature extraction (`medclf.train.features`, decoding
included), batch prediction and single-image latency (`medclf.serve.Predictor`, ONNX Runtime) — each as
images/s × GFLOP/image ÷ GEMM GFLOP/s.

    .venv/bin/python benchmarks/cpu_limit.py [--images 256] [--out docs/benchmarks-cpu.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GEMM_CHILD = r"""
import json, time, numpy as np
from threadpoolctl import threadpool_info
n = 2048
a = np.random.default_rng(0).random((n, n), dtype=np.float32)
b = np.random.default_rng(1).random((n, n), dtype=np.float32)
a @ b
best = min((lambda t0: (a @ b, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(7))
info = [{k: i.get(k) for k in ("internal_api", "version", "architecture", "num_threads")} for i in threadpool_info()
        if i.get("user_api") == "blas"]
print(json.dumps({"gflops": 2 * n**3 / best / 1e9, "blas": info}))
"""


def numpy_gemm() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    out = subprocess.run(
        [sys.executable, "-c", GEMM_CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def torch_gemm() -> float:
    import torch

    n = 2048
    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def model_gflop(size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from medclf.models import create_model

    model = create_model("efficientnet_lite0", num_classes=2, pretrained=False).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="synthetic images to push through each path")
    ap.add_argument("--out", default="docs/benchmarks-cpu.md")
    args = ap.parse_args()

    import numpy as np
    import torch

    from medclf.config import ModelConfig, RunConfig, TrainConfig
    from medclf.data import synth_dataset
    from medclf.models import create_model, resolve_preprocessing
    from medclf.train.features import extract_features, split_backbone

    gemm = numpy_gemm()
    tgemm = torch_gemm()
    limit = max(gemm["gflops"], tgemm)
    gflop = model_gflop(224)
    print(
        f"numpy GEMM {gemm['gflops']:.1f} GFLOP/s, torch GEMM {tgemm:.1f} GFLOP/s, "
        f"EfficientNet-Lite0 {gflop:.3f} GFLOP/image at 224 px"
    )

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        synth_dataset(data, layout="folders", n=args.images, seed=0, size=224)
        paths = sorted(str(p) for p in data.rglob("*.jpg"))

        # 1. feature extraction (decode + preprocess + frozen trunk), both backends, fresh cache each time
        model = create_model("efficientnet_lite0", num_classes=2, pretrained=True).eval()
        pre = resolve_preprocessing(model, input_size=224)
        bottom = split_backbone(model, 0).bottom
        for backend in ("onnx", "torch"):
            cache = Path(tmp) / f"cache-{backend}"
            extract_features(
                bottom, paths[:8], pre, cache_dir=cache, backend=backend, progress=False
            )  # warm-up
            t0 = time.perf_counter()
            fs = extract_features(bottom, paths, pre, cache_dir=cache / "x", backend=backend, progress=False)
            secs = time.perf_counter() - t0
            ips = len(fs.kept) / secs
            rows.append(
                (f"feature extraction ({backend}), decode included, batch 32", ips, ips * gflop / limit)
            )

        # 2. batch prediction and single-image latency through the serving Predictor (ONNX Runtime)
        from medclf.train import train

        cfg = RunConfig(
            name="bench",
            model=ModelConfig(name="efficientnet_lite0", input_size=224),
            train=TrainConfig(strategy="cached", epochs=2, views=1, patience=0),
        )
        cfg.data.root = str(data)
        run_dir = train(cfg, Path(tmp) / "run")
        from medclf.serve.predictor import Predictor

        pred = Predictor.from_run(run_dir, backend="onnx")
        from PIL import Image

        images = [Image.open(p).convert("RGB") for p in paths]
        pred.predict(images[:4])
        t0 = time.perf_counter()
        pred.predict(images)
        secs = time.perf_counter() - t0
        ips = len(images) / secs
        rows.append(("batch prediction (Predictor, ONNX Runtime), decoded images", ips, ips * gflop / limit))
        # the engine alone: preprocessed tensors, batch 32 (what decoding + resizing cost is the difference)
        xb = np.stack([pred.preprocess(im) for im in images[:32]]).astype(np.float32)
        pred.predict_arrays(xb)
        t0 = time.perf_counter()
        for _ in range(3):
            pred.predict_arrays(xb)
        ips = 3 * len(xb) / (time.perf_counter() - t0)
        rows.append(("model only (ONNX Runtime), preprocessed batch of 32", ips, ips * gflop / limit))
        lat = []
        for im in images[:50]:
            t0 = time.perf_counter()
            pred.predict([im])
            lat.append(time.perf_counter() - t0)
        med = statistics.median(lat)
        rows.append(
            (f"single image (Predictor, ONNX), median {med * 1e3:.1f} ms", 1 / med, gflop / med / limit)
        )

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}"
    lines = [
        "# CPU speed against the machine's limit",
        "",
        f"Machine: {machine}. Date: {now}. torch {torch.__version__}, numpy {np.__version__}.",
        f"Command: `.venv/bin/python benchmarks/cpu_limit.py --images {args.images}`",
        "",
        f"- fp32 limit: numpy OpenBLAS 2048³ GEMM **{gemm['gflops']:.1f} GFLOP/s** "
        f"(BLAS: {gemm['blas']}); torch 2048³ matmul {tgemm:.1f} GFLOP/s. Limit used: {limit:.1f} GFLOP/s.",
        f"- EfficientNet-Lite0 at 224 px: {gflop:.3f} GFLOP/image (torch FlopCounterMode, 2 FLOP per MAC).",
        "",
        "| path | images/s | fraction of the fp32 limit |",
        "|---|---:|---:|",
        *[f"| {name} | {ips:.1f} | {frac:.0%} |" for name, ips, frac in rows],
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
