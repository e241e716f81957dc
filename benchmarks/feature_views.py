"""Feature extraction of several views per image, as a `cached` training run asks for it: this code against another.

A recipe caches the clean view and a few seeded augmented views of every training image
(``medclf.train.features.extract_features(..., views=[...])``). This times that call on the first N images of a
folder, with the recipe's frozen bottom (EfficientNet-Lite0 with offline ImageNet weights, the top blocks cut), on
ONNX Runtime, the engine built beforehand (as in a run, where the engine choice and the export come first). With
``--baseline-src DIR`` (the ``src`` folder of another checkout, e.g. ``git archive 879a09d src | tar -x -C /tmp/old``)
the same call runs on that code too, in alternating rounds, each round a fresh process and a fresh feature cache,
and the script checks that both produce identical arrays.

    python benchmarks/feature_views.py ../shared/datasets/skin_bm --views 4 --augment standard --images 400 \
        --baseline-src /tmp/old/src

Writes its section of docs/benchmarks-training.md (``--section`` names it). Research use only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]


def worker(spec: dict) -> None:
    import shutil

    import numpy as np

    from medclf.models import create_model, resolve_preprocessing
    from medclf.train.features import extract_features, split_backbone

    paths = spec["paths"]
    model = create_model("efficientnet_lite0", num_classes=2, pretrained=True).eval()
    pre = resolve_preprocessing(model, input_size=224)
    bottom = split_backbone(model, spec["blocks"]).bottom
    cache = Path(spec["cache"])
    kw = {"cache_dir": cache, "backend": "onnx", "progress": False, "augment": spec["augment"]}
    extract_features(bottom, paths[:8], pre, **kw)  # export + engine, as a run does before its splits
    for folder in cache.iterdir():
        if folder.name != "onnx":
            shutil.rmtree(folder)
    t0 = time.perf_counter()
    fs = extract_features(bottom, paths, pre, views=spec["views"], **kw)
    seconds = time.perf_counter() - t0
    np.savez(spec["arrays"], **fs.views)
    print(json.dumps({"seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", nargs="?", help="a folder of images (searched recursively for .jpg/.jpeg/.png)")
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--views", type=int, default=4, help="clean + (views - 1) augmented views")
    ap.add_argument("--augment", default="standard")
    ap.add_argument("--blocks", type=int, default=7, help="top blocks cut off the bottom (the recipes' 7)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-src", help="the src folder of the code to compare against")
    ap.add_argument("--section", default="feature_views")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks-training.md"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(json.loads(a.worker))
        return
    if not a.data:
        ap.error("the image folder (data) is required")

    import numpy as np

    exts = {".jpg", ".jpeg", ".png"}
    paths = sorted(str(p) for p in Path(a.data).rglob("*") if p.suffix.lower() in exts)[: a.images]
    if not paths:
        raise SystemExit(f"no images under {a.data}")
    views = ["clean", *(f"aug{i}" for i in range(1, a.views))]
    codes = {"this code": str(ROOT / "src")}
    if a.baseline_src:
        codes = {"baseline": str(Path(a.baseline_src).resolve()), **codes}
    seconds: dict[str, list[float]] = {name: [] for name in codes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name, src in codes.items():
                spec = {
                    "paths": paths,
                    "views": views,
                    "augment": a.augment,
                    "blocks": a.blocks,
                    "cache": f"{tmp}/cache-{name}-{r}",
                    "arrays": f"{tmp}/{name.replace(' ', '_')}.npz",
                }
                env = {**os.environ, "PYTHONPATH": src}
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", json.dumps(spec)],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
                seconds[name].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
                print(f"round {r} {name}: {seconds[name][-1]:.2f} s", flush=True)
        identical = None
        if a.baseline_src:
            x, y = np.load(f"{tmp}/baseline.npz"), np.load(f"{tmp}/this_code.npz")
            identical = all(np.array_equal(x[v], y[v]) for v in views)

    n = len(paths) * len(views)
    lines = [
        f"## Feature extraction, several views per image ({a.section})",
        "",
        f"{len(paths)} images of `{Path(a.data).name}` × {len(views)} views ({', '.join(views)}; augmentation "
        f"`{a.augment}`), EfficientNet-Lite0 bottom with the top {a.blocks} blocks cut, ONNX Runtime; "
        f"{a.rounds} rounds, each a fresh process and feature cache.",
        "",
        "| code | seconds, best | seconds, median | image-views/s, best |",
        "|---|---:|---:|---:|",
    ]
    for name, ts in seconds.items():
        label = f"baseline (`{a.baseline_src}`)" if name == "baseline" else name
        lines.append(f"| {label} | {min(ts):.2f} | {statistics.median(ts):.2f} | {n / min(ts):.0f} |")
    if identical is not None:
        lines += ["", f"Identical arrays from both: **{'yes' if identical else 'NO'}**."]
    from _results import write_section

    write_section(a.section, "\n".join(lines), doc=Path(a.doc))


if __name__ == "__main__":
    main()
