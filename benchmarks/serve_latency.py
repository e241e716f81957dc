"""Serving latency on this CPU: ONNX Runtime single image, /predict over a socket, Grad-CAM, ONNX-vs-PyTorch.

Targets (issue 5): ONNX Runtime ≤ 40 ms median and /predict ≤ 60 ms median for one 224-px image with
EfficientNet-Lite0; Grad-CAM ≤ 0.5 s; ONNX and PyTorch agree to 1e-4. Random weights (latency does not depend on
them); a small synthetic split lets the run fit its OOD detector, which is part of the served graph.

    python benchmarks/serve_latency.py [--model efficientnet_lite0] [--n 50]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_bench_run(root: Path, model_name: str = "efficientnet_lite0", n_images: int = 24) -> Path:
    """A run folder with random weights and a synthetic split (enough images to fit the OOD detector)."""
    import pandas as pd
    import torch
    from PIL import Image

    from medclf.models import create_model, resolve_preprocessing, save_run_model

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = create_model(model_name, 2, pretrained=False).eval()
    pre = resolve_preprocessing(model)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_images):
        base = rng.integers(60, 200, 3)
        arr = np.clip(base + rng.normal(0, 25, (pre.input_size, pre.input_size, 3)), 0, 255).astype(np.uint8)
        p = img_dir / f"img_{i:03d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        rows.append(
            {
                "path": str(p),
                "label": ["benign", "malignant"][i % 2],
                "group": p.stem,
                "split": "train" if i < n_images * 2 // 3 else "val",
            }
        )
    run_dir = root / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(run_dir / "split.csv", index=False)
    save_run_model(
        run_dir,
        model,
        {
            "classes": ["benign", "malignant"],
            "preprocessing": pre.to_dict(),
            "positive_class": "malignant",
            "threshold": 0.5,
            "temperature": 1.0,
        },
    )
    return run_dir


def bench_predictor(run_dir: Path, backend: str, threads: int, max_ood_images: int = 400):
    """The served path: Predictor.from_run on the run folder."""
    from medclf.serve import Predictor

    return Predictor.from_run(run_dir, backend, num_threads=threads, max_ood_images=max_ood_images)


def jpeg_bytes(size: int = 224, seed: int = 1) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90
    )
    return buf.getvalue()


def timed(fn, n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def parity_check(onnx_p, torch_p) -> tuple[float, float]:
    """Max |ONNX - PyTorch| of probabilities and logits on 8 random images (batch 8 and batch 1)."""
    rng = np.random.default_rng(0)
    pre = onnx_p.serving.preprocessing
    x = rng.normal(size=(8, pre.in_chans, pre.input_size, pre.input_size)).astype(np.float32)
    lo, _ = onnx_p.run_engine(x)
    lt, _ = torch_p.run_engine(x)
    l1, _ = onnx_p.run_engine(x[:1])
    from medclf.runtime.decision import softmax

    dl = max(np.abs(lo - lt).max(), np.abs(l1 - lt[:1]).max())
    dp = np.abs(softmax(lo) - softmax(lt)).max()
    return float(dp), float(dl)


def summary(ms: list[float]) -> str:
    q = np.percentile(ms, [50, 90, 99])
    return f"{q[0]:.1f} | {q[1]:.1f} | {q[2]:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--n", type=int, default=50, help="timed repetitions per measurement")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime / torch intra-op threads")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import httpx
    import torch

    from medclf.serve.server import BackgroundServer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="medclf-bench-") as tmp:
        run_dir = make_bench_run(Path(tmp), args.model)
        onnx_p = bench_predictor(run_dir, "onnx", args.threads)
        torch_p = bench_predictor(run_dir, "torch", args.threads)
        parity = parity_check(onnx_p, torch_p)
        data = jpeg_bytes(onnx_p.serving.preprocessing.input_size)
        x = onnx_p.preprocess(onnx_p.load(data))[None]

        rows = {}
        rows["ONNX Runtime, model only (preprocessed 1×3×224×224)"] = timed(
            lambda: onnx_p.predict_arrays(x), args.n
        )
        rows["ONNX Runtime, `Predictor.predict(jpeg bytes)` (decode + preprocess + model + OOD)"] = timed(
            lambda: onnx_p.predict(data), args.n
        )
        rows["PyTorch, `Predictor.predict(jpeg bytes)` (reference)"] = timed(
            lambda: torch_p.predict(data), args.n
        )
        with BackgroundServer(onnx_p) as url, httpx.Client(base_url=url) as client:
            files = {"file": ("x.jpg", data, "image/jpeg")}

            def post() -> None:
                r = client.post("/predict", files=files)
                assert r.status_code == 200, r.text

            rows["`POST /predict` over 127.0.0.1 (uvicorn + httpx, ONNX backend)"] = timed(post, args.n)
        cam_n = max(5, args.n // 5)
        rows["Grad-CAM (`Predictor.explain`, PyTorch, incl. overlay)"] = timed(
            lambda: torch_p.explain(data, method="gradcam"), cam_n, warmup=1
        )
        rows["Grad-CAM++"] = timed(lambda: torch_p.explain(data, method="gradcam++"), cam_n, warmup=1)

    lines = [
        f"## Latency: {args.model}, one {onnx_p.serving.preprocessing.input_size}-px image, {args.threads} threads",
        "",
        "| measurement | median ms | p90 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | {summary(v)} |" for k, v in rows.items()]
    med = {k: statistics.median(v) for k, v in rows.items()}
    keys = list(rows)
    lines += [
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| ONNX Runtime single image ≤ 40 ms median | {med[keys[1]]:.1f} ms (model only {med[keys[0]]:.1f} ms) "
        f"| {'yes' if med[keys[1]] <= 40 else 'NO'} |",
        f"| `/predict` ≤ 60 ms median | {med[keys[3]]:.1f} ms | {'yes' if med[keys[3]] <= 60 else 'NO'} |",
        f"| Grad-CAM ≤ 0.5 s | {med[keys[4]] / 1000:.3f} s | {'yes' if med[keys[4]] <= 500 else 'NO'} |",
        f"| ONNX vs PyTorch max abs difference ≤ 1e-4 | probabilities {parity[0]:.1e}, logits {parity[1]:.1e} "
        f"(8 random inputs, batch 8 and 1) | {'yes' if max(parity) <= 1e-4 else 'NO'} |",
    ]
    print("\n".join(lines))
    if not args.no_write:
        from _results import write_section

        write_section("latency", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
