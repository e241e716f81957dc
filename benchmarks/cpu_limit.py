"""How close medclf's fast CPU path gets to this machine's fp32 limit.

The limit is the best fp32 GEMM on the machine: numpy's OpenBLAS 2048³ matmul, run in a child process with
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset (they pin older, slower kernels), next to torch's matmul. Then
EfficientNet-Lite0 at 224 px through medclf's paths — feature extraction (`medclf.train.features`, decoding
included, on each engine, with the one ``auto`` picks named), batch prediction and single-image latency (`medclf.serve.Predictor`,
on OpenVINO and on ONNX Runtime; the engines alone, ONNX Runtime also one image per call and core, and every
core on each call in calls of 1, 4 and 16 images) — each as images/s ×
GFLOP/image ÷ GEMM GFLOP/s; beside them the transform alone and a single image without the out-of-distribution score. Last, OpenVINO in bfloat16
against torch's bf16 GEMM, for CPUs with bf16 units (medclf itself computes in fp32).

    .venv/bin/python benchmarks/cpu_limit.py [--images 256] [--out docs/benchmarks-cpu.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

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


def numpy_gemm(threads: int | None = None) -> dict:
    """numpy's OpenBLAS 2048³ fp32 GEMM in a fresh process (on ``threads`` threads; default: all)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    if threads:
        env["OPENBLAS_NUM_THREADS"] = str(threads)
    out = subprocess.run(
        [sys.executable, "-c", GEMM_CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def torch_gemm(dtype: Any = None) -> float:
    import torch

    n = 2048
    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


DECODE, PREP, NO_OOD, BF16 = (
    "decode + preprocess only",
    "preprocess only",
    "single image, no OOD",
    "OpenVINO bf16",
)


def timed(fn: Callable[[], Any], n: int) -> Callable[[], float]:
    """One timed run of ``fn``, which handles ``n`` images, as images/s."""

    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t0)

    return run


def single_image(pred: Any, images: list[Any]) -> Callable[[], float]:
    """One timed run of single-image prediction: the median latency over ``images``, as images/s."""

    def run() -> float:
        out = []
        for im in images:
            t0 = time.perf_counter()
            pred.predict([im])
            out.append(time.perf_counter() - t0)
        return 1 / statistics.median(out)

    return run


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
    ap.add_argument("--repeats", type=int, default=5, help="runs of every path (best and median reported)")
    ap.add_argument("--out", default="docs/benchmarks-cpu.md")
    args = ap.parse_args()

    import numpy as np
    import torch

    from medclf.config import ModelConfig, RunConfig, TrainConfig
    from medclf.data import synth_dataset
    from medclf.models import create_model, resolve_preprocessing
    from medclf.runtime.engine import ENGINE_BATCH
    from medclf.train.features import extract_features, split_backbone

    gemm = numpy_gemm()
    tgemm = torch_gemm()
    gflop = model_gflop(224)
    print(
        f"numpy GEMM {gemm['gflops']:.1f} GFLOP/s, torch GEMM {tgemm:.1f} GFLOP/s, "
        f"EfficientNet-Lite0 {gflop:.3f} GFLOP/image at 224 px"
    )
    R = args.repeats

    # Every path is built first, then timed in R rounds that visit every path in turn: this VM's speed drifts by
    # tens of percent over minutes, so paths timed one after the other would be compared across different moments.
    jobs: dict[str, Callable[[], float]] = {}  # path -> one timed run, in images/s
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        synth_dataset(data, layout="folders", n=args.images, seed=0, size=224)
        paths = sorted(str(p) for p in data.rglob("*.jpg"))

        # 1. feature extraction (decode + preprocess + frozen trunk) on every engine; `auto` is the default engine
        from medclf.runtime.openvino import available
        from medclf.train.features import DEFAULT_BACKEND

        model = create_model("efficientnet_lite0", num_classes=2, pretrained=True).eval()
        pre = resolve_preprocessing(model, input_size=224)
        bottom = split_backbone(model, 0).bottom
        auto_pick = DEFAULT_BACKEND
        engine_names = {"onnx": "ONNX Runtime", "openvino": "OpenVINO", "torch": "PyTorch"}
        for backend in ["onnx", *(["openvino"] if available() else []), "torch"]:
            cache = Path(tmp) / f"cache-{backend}"
            extract_features(
                bottom, paths[:8], pre, cache_dir=cache, backend=backend, progress=False
            )  # warm-up

            def extract(backend: str = backend, cache: Path = cache) -> None:
                # features never come back from the cache (its feature folders are deleted first); the exported
                # graph and the engine built in this process do, as they would for a training run's second split
                for folder in cache.iterdir():
                    if folder.name != "onnx":
                        shutil.rmtree(folder)
                extract_features(bottom, paths, pre, cache_dir=cache, backend=backend, progress=False)

            label = engine_names[backend] + (", `auto`'s pick here" if backend == auto_pick else "")
            jobs[f"feature extraction ({label}), decode included, batch 16"] = timed(extract, len(paths))

        # what the decode-included rows pay besides the model: decoding + preprocessing alone, one thread
        from medclf.data import load_image
        from medclf.data.transforms import create_transform

        prep = create_transform(pre, "none")
        jobs[DECODE] = timed(lambda: [prep(load_image(p)) for p in paths], len(paths))

        # 2. batch prediction and single-image latency through the serving Predictor, on each graph engine
        from medclf.train import train

        cfg = RunConfig(
            name="bench",
            model=ModelConfig(name="efficientnet_lite0", input_size=224),
            train=TrainConfig(strategy="cached", epochs=2, views=1, patience=0),
        )
        cfg.data.root = str(data)
        run_dir = train(cfg, Path(tmp) / "run")
        from PIL import Image

        from medclf.serve.predictor import Predictor

        images = [Image.open(p).convert("RGB") for p in paths]
        jobs[PREP] = timed(lambda: [prep(im) for im in images], len(images))  # the transform alone, decoded
        predictors = {}
        for engine in ("openvino", "onnx"):
            pred = predictors[engine] = Predictor.from_run(run_dir, backend=engine)
            name = {"openvino": "OpenVINO", "onnx": "ONNX Runtime"}[engine]
            pred.predict(images[:4])
            how = (
                "one image per call and core" if pred.backend.per_image else f"engine calls of {ENGINE_BATCH}"
            )
            jobs[
                f"batch prediction (Predictor, {name}, batches of {pred.batch_size}, {how}), decoded images"
            ] = timed(lambda pred=pred: pred.predict(images), len(images))
            # the engine alone on preprocessed tensors (decoding + resizing cost is the difference): ONNX Runtime's
            # default one image per call and core, then every core on each call in engine calls of 1, the default
            # micro-batch and the whole batch (medclf._microbatch)
            xb = np.stack([pred.preprocess(im) for im in images[: pred.batch_size]]).astype(np.float32)
            ways = [(True, 1)] if pred.backend.per_image else []
            ways += [(False, eb) for eb in sorted({1, ENGINE_BATCH, len(xb)})]
            for per_image, eb in ways:

                def engine_only(
                    pred: Any = pred, xb: np.ndarray = xb, eb: int = eb, per_image: bool = per_image
                ) -> None:
                    default = pred.backend.per_image
                    pred.backend.engine_batch, pred.backend.per_image = eb, per_image
                    try:
                        for _ in range(4):
                            pred.predict_arrays(xb)
                    finally:
                        pred.backend.engine_batch, pred.backend.per_image = ENGINE_BATCH, default

                engine_only()
                if per_image:
                    label = "one image per call and core (default)"
                else:
                    default = " (default)" if eb == ENGINE_BATCH and not pred.backend.per_image else ""
                    label = f"every core on each call, engine calls of {eb}{default}"
                jobs[f"model only ({name}), preprocessed batch of {len(xb)}, {label}"] = timed(
                    engine_only, 4 * len(xb)
                )
            # single image: the median latency over 40 images, as images/s
            jobs[f"single image (Predictor, {name})"] = single_image(pred, images[:40])

        # what the out-of-distribution score (in the graph, a Mahalanobis product) adds to a single image
        bare = Predictor.from_run(run_dir, backend="onnx", ood=False)
        bare.predict(images[:4])
        jobs[NO_OOD] = single_image(bare, images[:40])

        # 3. beyond fp32: OpenVINO in bfloat16 (AMX / AVX512-BF16), against torch's bf16 GEMM on the same CPU
        bgemm = torch_gemm(torch.bfloat16)
        fast = Predictor.from_run(run_dir, backend="openvino", precision="bf16")
        fast.predict_arrays(xb)
        jobs[BF16] = timed(lambda: [fast.predict_arrays(xb) for _ in range(4)], 4 * len(xb))
        drift = max(
            abs(p.probabilities[c] - q.probabilities[c])
            for p, q in zip(fast.predict_arrays(xb), predictors["openvino"].predict_arrays(xb), strict=True)
            for c in p.probabilities
        )

        runs: dict[str, list[float]] = {label: [] for label in jobs}
        for _ in range(R):
            for label, job in jobs.items():
                runs[label].append(job())
    stats = {label: (max(v), statistics.median(v)) for label, v in runs.items()}
    decode_rate, prep_rate, no_ood = stats.pop(DECODE)[0], stats.pop(PREP)[0], stats.pop(NO_OOD)[0]
    bf16_rows = [(f"model only (OpenVINO bf16), preprocessed batch of {len(xb)}", *stats.pop(BF16))]
    rows = [
        (
            f"{label}, {1e3 / best:.1f} ms / {1e3 / med:.1f} ms" if label.startswith("single") else label,
            best,
            med,
        )
        for label, (best, med) in stats.items()
    ]
    # the limit again at the end: the best of both measurements, like every path's best of R
    tgemm = max(tgemm, torch_gemm())
    gemm["gflops"] = max(gemm["gflops"], numpy_gemm()["gflops"])
    bgemm = max(bgemm, torch_gemm(torch.bfloat16))
    limit = max(gemm["gflops"], tgemm)

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from _results import machine as describe_machine

    machine = f"{platform.machine()}, {describe_machine()}, {platform.platform()}"
    lines = [
        "# CPU speed against the machine's limit",
        "",
        f"Machine: {machine}. Date: {now}. torch {torch.__version__}, numpy {np.__version__}.",
        f"Command: `.venv/bin/python benchmarks/cpu_limit.py --images {args.images} --repeats {args.repeats}`",
        "",
        f"- fp32 limit: numpy OpenBLAS 2048³ GEMM **{gemm['gflops']:.1f} GFLOP/s** "
        f"(BLAS: {gemm['blas']}); torch 2048³ matmul {tgemm:.1f} GFLOP/s. Limit used: {limit:.1f} GFLOP/s.",
        f"- EfficientNet-Lite0 at 224 px: {gflop:.3f} GFLOP/image (torch FlopCounterMode, 2 FLOP per MAC).",
        f"- JPEG decoding + preprocessing alone, one thread, no model: {decode_rate:.0f} images/s (best run). "
        "The rows that decode spend that CPU time on work that is not the model's arithmetic, so they sit "
        "below the model-only rows. Of that, the evaluation transform alone on decoded images (resize when "
        f"needed, normalisation): {1e6 / prep_rate:.0f} µs per image ({prep_rate:.0f} images/s, best run).",
        f"- Feature extraction's `auto` runs the default engine, {engine_names[auto_pick]} (PyTorch for a bottom that "
        "does not export); no engine is chosen by timing.",
        "- The single-image rows include the out-of-distribution score that the served graph computes beside the "
        f"logits; ONNX Runtime without it: {1e3 / no_ood:.2f} ms per image ({no_ood * gflop / limit:.0%} of the "
        "limit, best run).",
        "",
        f"Every path ran {R} times, in {R} rounds that visit every path in turn, so that all paths share the VM's "
        "slow and fast moments; the table gives the best and the median run. This machine is a VM whose speed "
        "moves by up to 2x from one second to the next (other tenants), so the best run is its speed undisturbed, "
        "as for the GEMM limit (the best of 7 runs, measured at the start and again at the end). Single image: the "
        "median latency over 40 images, best and median of the runs.",
        "",
        "| path | images/s, best | images/s, median | fraction of the fp32 limit, best | median |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {name} | {best:.1f} | {med:.1f} | {best * gflop / limit:.0%} | {med * gflop / limit:.0%} |"
            for name, best, med in rows
        ],
        "",
        "Every path above computes in fp32. OpenVINO compiles fp32 graphs on purpose (`medclf._openvino`): on "
        "CPUs with bfloat16 units it would otherwise switch to bf16. What bf16 would give, against torch's bf16 "
        f"2048³ matmul ({bgemm:.1f} GFLOP/s) as the limit, with the largest change in any probability over the "
        f"batch ({drift:.1e}):",
        "",
        "| path | images/s, best | images/s, median | fraction of the bf16 limit, best | median |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {name} | {best:.1f} | {med:.1f} | {best * gflop / bgemm:.0%} | {med * gflop / bgemm:.0%} |"
            for name, best, med in bf16_rows
        ],
        "",
    ]
    out = Path(args.out)
    # sections that other scripts keep in this page (benchmarks/ort_ops.py) survive its regeneration
    previous = out.read_text() if out.is_file() else ""
    kept = [m.group(0) for m in re.finditer(r"<!-- (\S+):start -->.*?<!-- \1:end -->", previous, re.S)]
    out.write_text("\n".join([*lines, *kept, ""] if kept else lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
