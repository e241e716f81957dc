"""Decoding large JPEGs at a reduced DCT scale (``Preprocessing.jpeg_draft``): time saved and pixels changed.

    .venv/bin/python benchmarks/decode_draft.py [--input-size 224] [--rounds 5]

For photo-like synthetic JPEGs (smooth colour gradients and sensor-like noise, quality 90) from 600×450 to
4032×3024 (a 12-megapixel phone photo), one thread: the time from file bytes to the model's input tensor
(``load_image`` + the evaluation transform) when every pixel is decoded and when ``min_side`` is the
preprocessing's ``decode_side()`` (twice the input size), and how far the model's input moves, in grey levels.
Best of ``--rounds`` interleaved runs. Writes the section ``decode_draft`` of docs/benchmarks-serving.md.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZES = ((600, 450), (1024, 768), (2048, 1536), (3000, 2000), (4032, 3024))


def photo(w: int, h: int, seed: int = 0) -> bytes:
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([128 + 60 * np.sin(x / 97 + c) + 40 * np.cos(y / 53 - c) for c in range(3)], -1)
    rgb += np.random.default_rng(seed).normal(0, 8, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    from medclf.data.images import load_image_bytes
    from medclf.data.transforms import Preprocessing, create_transform

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--doc", default=None, help="page to write (default docs/benchmarks-serving.md)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    pre = Preprocessing(input_size=a.input_size)
    tf = create_transform(pre)
    side = pre.decode_side()
    std = np.asarray(pre.std, np.float32)[:, None, None]
    rows = [
        "## Large JPEGs decoded at a reduced scale (`model.jpeg_draft`)",
        "",
        "Photo-like synthetic JPEGs (smooth colour gradients and sensor-like noise, quality 90). "
        f"Input {a.input_size} px (`decode_side()` = {side}), one thread, best of {a.rounds} interleaved runs; "
        "from the JPEG's bytes to the model's input tensor.",
        "",
        "| JPEG | decoded at | every pixel | reduced scale | faster | input change, mean / max grey levels |",
        "|---|---|---:|---:|---:|---|",
    ]
    for w, h in SIZES:
        data = photo(w, h)
        reps = max(3, int(2e8 // (w * h)))  # about 200 megapixels per timed run

        def run(min_side: int | None, data: bytes = data, reps: int = reps) -> float:
            t0 = time.perf_counter()
            for _ in range(reps):
                tf(load_image_bytes(data, "photo.jpg", min_side=min_side))
            return (time.perf_counter() - t0) / reps * 1e3

        best = {None: float("inf"), side: float("inf")}
        for _ in range(a.rounds):
            for key in best:
                best[key] = min(best[key], run(key))
        small = load_image_bytes(data, "photo.jpg", min_side=side)
        levels = np.abs(tf(small).numpy() - tf(load_image_bytes(data, "photo.jpg")).numpy()) * 255 * std
        rows.append(
            f"| {w}×{h} | {small.size[0]}×{small.size[1]} | {best[None]:.2f} ms | {best[side]:.2f} ms "
            f"| {best[None] / best[side]:.1f}× | {levels.mean():.2f} / {levels.max():.2f} |"
        )
        print(rows[-1], flush=True)
    from _results import DOC, write_section

    write_section("decode_draft", "\n".join(rows), doc=Path(a.doc) if a.doc else DOC)


if __name__ == "__main__":
    main()
