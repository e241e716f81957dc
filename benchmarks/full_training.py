"""Training throughput of all layers on this CPU: what the image cache, channels-last and bf16 each buy.

    .venv/bin/python benchmarks/full_training.py                 # EfficientNet-Lite0, 128 and 160 px
    .venv/bin/python benchmarks/full_training.py --sizes 224 --batches 4
    .venv/bin/python benchmarks/full_training.py --model cxr_cnn --sizes 128   # the chest X-ray study's CNN

Every variant trains the model (EfficientNet-Lite0 unless --model says otherwise; all layers, AdamW, batch 32, the `standard` augmentation) on real skin
photos (../shared/datasets/skin_bm) for a few batches, through medclf's own datasets: `files` decodes and augments
each image from its file every time (RecordsDataset), `cache` decodes once and augments tensors
(train.image_cache, the default). Variants run interleaved, each repeated, and the median is reported with its
ratio to the first variant, so a load change during the run hits them alike. Writes the "Full-training
throughput" section of docs/benchmarks-training.md (one section per model).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "skin_bm" / "train"
# (name, input pipeline, channels-last, bf16 autocast)
VARIANTS = [
    ("files, NCHW, fp32", "files", False, False),
    ("cache, NCHW, fp32", "cache", False, False),
    ("cache, channels-last, fp32", "cache", True, False),
    ("cache, channels-last, bf16", "cache", True, True),
]


def loaders(size: int, in_chans: int, n: int, batch: int) -> dict[str, DataLoader]:
    from medclf.data.transforms import Preprocessing, create_transform
    from medclf.train.batches import EpochSampler, RecordsDataset, collate_skip_bad
    from medclf.train.image_cache import CachedImageDataset, DecodedImages, ProgressiveSampler

    paths = sorted(str(p) for p in DATA.rglob("*.jpg"))[:n]
    import pandas as pd

    recs = pd.DataFrame({"path": paths, "label": ["x"] * len(paths)})
    labels = np.zeros(len(paths), dtype=np.int64)
    pre = Preprocessing(input_size=size, in_chans=in_chans)
    files = RecordsDataset(recs, ["x"], create_transform(pre, "standard"))
    cache = CachedImageDataset(DecodedImages.build(paths, pre, skip_bad=False), labels, pre, "standard")
    kw = {"batch_size": batch, "collate_fn": collate_skip_bad, "drop_last": True}
    return {
        "files": DataLoader(files, sampler=EpochSampler(labels), **kw),
        "cache": DataLoader(cache, sampler=ProgressiveSampler(EpochSampler(labels), [size]), **kw),
    }


def measure(
    model: torch.nn.Module, loader: DataLoader, channels_last: bool, bf16: bool, batches: int
) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    seen, t0 = 0, 0.0
    for i, (x, _, y) in enumerate(loader):
        if i == 1:  # the first batch warms up the allocator and kernels
            t0, seen = time.perf_counter(), 0
        if i > batches:
            break
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=fmt)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0", help="a medclf model name (random weights)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 160])
    ap.add_argument("--batches", type=int, default=6, help="timed batches per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from medclf.models import create_model, model_default_cfg

    in_chans = int(model_default_cfg(args.model).get("in_chans", 3))

    rows = []
    for size in args.sizes:
        data = loaders(size, in_chans, 32 * (args.batches + 2), 32)
        model = create_model(args.model, 2, pretrained=False)
        speeds: dict[str, list[float]] = {v[0]: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for name, pipe, cl, bf16 in VARIANTS:
                speeds[name].append(measure(model, data[pipe], cl, bf16, args.batches))
        base = statistics.median(speeds[VARIANTS[0][0]])
        for name, *_ in VARIANTS:
            med = statistics.median(speeds[name])
            rows.append([str(size), name, f"{med:.1f}", f"{med / base:.2f}×"])
            print(rows[-1], flush=True)
    body = (
        f"`{args.model}` ({in_chans} channel(s)), all layers, batch 32, AdamW, `standard` augmentation, images per second "
        f"(median of {args.repeats} interleaved repeats of {args.batches} batches).\n\n"
        + markdown_table(["px", "variant", "images/s", "vs files, NCHW, fp32"], rows)
    )
    print(body)
    if not args.no_write:
        section = "full-training-throughput" + (
            "" if args.model == "efficientnet_lite0" else f"-{args.model}"
        )
        write_section(section, body, doc=ROOT / "docs" / "benchmarks-training.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
