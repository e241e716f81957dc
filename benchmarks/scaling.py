"""How cost grows: feature extraction and training time and peak memory against data size and image size
(docs/benchmarks-scaling.md).

    .venv/bin/python benchmarks/scaling.py --out /tmp/medclf-scaling.jsonl            # the full sweep
    .venv/bin/python benchmarks/scaling.py --out /tmp/medclf-scaling.jsonl --resume   # go on / re-render
    .venv/bin/python benchmarks/scaling.py --smoke    # 6 tiny processes (~1.5 min idle); page under /tmp

Data: HAM10000 (``configs/datasets/ham10000.yaml``, images under ``../shared/datasets`` or
$MEDCLF_SHARED_DATASETS), nested seeded subsets of N images (the first N of one fixed permutation), each split
85/15 train/val grouped by lesion. Model: EfficientNet-Lite0 with its offline ImageNet weights at
``model.input_size`` = S. Data-size sweep at S = --base-size (224); image-size sweep at N = --base-n (2000).

Every point runs :func:`medclf.train.train` (what ``medclf train`` runs) with ``train.strategy=cached`` in a
fresh subprocess with an empty temporary feature cache, twice: head only (pooled features) and
``finetune_blocks=2`` (cached maps of the last two blocks' input, which then train). The subprocess reports the
run's own timings: feature seconds over all N images from ``logs/cached.json`` ``feature_seconds``, and training
seconds for a fixed number of epochs (early stopping off) as the sum of ``history.csv`` ``seconds`` (each epoch
from its start to the end of its validation). Setup seconds are the rest of the ``train()`` call (building the
model, exporting the frozen part, starting Lightning, and after training the validation predictions of the
complete model on the images and the run folder). It also reports its ``ru_maxrss``, so peak RSS belongs to that
point alone. The OS page cache is not dropped (that needs root): JPEG reads may be warm after the first point.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("MEDCLF_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))
SPEC = ROOT / "configs" / "datasets" / "ham10000.yaml"
DOC = ROOT / "docs" / "benchmarks-scaling.md"
MODEL = "efficientnet_lite0"
BLOCKS = (0, 2)  # head only (pooled features), then the last two blocks from cached maps

HEADER = """# Scaling benchmarks

How the cost of the `cached` strategy grows with the number of images and with the image size: cold-cache
feature extraction, training for a fixed number of epochs, and peak memory. Measured by
`benchmarks/scaling.py`, which rewrites its section below; each point ran in its own process. Research use only:
no output of medclf is a diagnosis.
"""


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ one point (child)


def run_point(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (N, image size, blocks) point with the real cached strategy; runs inside the child process."""
    import pandas as pd
    import torch

    from medclf.config import load_config
    from medclf.data import Dataset, read_split_csv, resolve_spec
    from medclf.train import train

    rss_imports = peak_rss_mb()
    cache_dir, run_dir = Path(job["cache_dir"]), Path(job["run_dir"])
    cfg = load_config(
        None,
        [
            f"model.name={MODEL}",
            "model.pretrained=true",
            f"model.input_size={job['image_size']}",
            "train.strategy=cached",
            f"train.finetune_blocks={job['blocks']}",
            f"train.epochs={job['epochs']}",
            "train.patience=0",  # no early stopping: every point trains the same number of epochs
            "train.views=1",
            f"train.cache_dir={cache_dir}",
            f"train.seed={job['seed']}",
        ],
    )
    split_df = read_split_csv(job["split_csv"])
    dataset = Dataset(
        records=split_df,
        classes=list(job["classes"]),
        metadata={},
        spec=resolve_spec(SPEC).with_root(DATASETS / "ham10000"),
        layout="csv",
    )
    t0 = time.perf_counter()
    train(cfg, run_dir, dataset=dataset, split=split_df, progress=False)
    wall = time.perf_counter() - t0
    info = json.loads((run_dir / "logs" / "cached.json").read_text())
    history = pd.read_csv(run_dir / "history.csv")
    train_s = float(history["seconds"].sum())  # the epochs, each with its validation
    from medclf.train.features import DEFAULT_BACKEND

    # the cache's exported bottom says the default engine ran it; without one the bottom ran in PyTorch
    backend = DEFAULT_BACKEND if any((cache_dir / "onnx").glob("*.onnx")) else "torch"
    cache_bytes = sum(p.stat().st_size for p in cache_dir.rglob("*.safetensors"))
    n = len(split_df)
    return {
        "n": n,
        "n_train": int((split_df["split"] == "train").sum()),
        "n_val": int((split_df["split"] == "val").sum()),
        "image_size": job["image_size"],
        "blocks": info["finetune_blocks"],
        "epochs": job["epochs"],
        "epochs_run": len(history),
        "feature_s": info["feature_seconds"],
        "feature_img_s": n / info["feature_seconds"] if info["feature_seconds"] > 0 else float("nan"),
        "train_s": train_s,
        "setup_s": wall - info["feature_seconds"] - train_s,
        "train_call_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss_imports,
        "cache_mb": cache_bytes / 2**20,
        "backend": backend,
        "torch_threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------ the sweep (parent)


def plan(
    sizes: Sequence[int], image_sizes: Sequence[int], base_size: int, base_n: int
) -> list[tuple[int, int]]:
    """(N, image size) points: the data sweep at ``base_size`` then the image sweep at ``base_n``, each once."""
    points = [(n, base_size) for n in sizes] + [(base_n, s) for s in image_sizes]
    return list(dict.fromkeys(points))


def nested_subset(records: Any, n: int, seed: int) -> Any:
    """The first ``n`` images of one seeded permutation, so every smaller subset is inside every larger one."""
    import numpy as np

    if n > len(records):
        from medclf.errors import ConfigError

        raise ConfigError(
            f"--sizes asks for {n} images but the dataset has {len(records)}; choose at most that"
        )
    ordered = records.sort_values("path", kind="stable").reset_index(drop=True)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return ordered.iloc[order[:n]].reset_index(drop=True)


def run_child(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one point in a fresh interpreter; returns its result with the process's own wall time added."""
    job_file = workdir / "job.json"
    job_file.write_text(json.dumps(job))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--point", str(job_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"point N={job['n']} size={job['image_size']} blocks={job['blocks']} failed:\n{proc.stderr[-3000:]}"
        )
    result = json.loads((workdir / "result.json").read_text())
    result["process_s"] = time.perf_counter() - t0
    return result


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    from medclf.data import load_dataset, make_split, resolve_spec, write_split_csv

    # the env override moves the data; verify="none": a bad image still fails the point that reads it
    dataset = load_dataset(resolve_spec(SPEC).with_root(DATASETS / "ham10000"), verify="none")
    done: dict[tuple[int, int, int, int], dict[str, Any]] = {}
    if args.resume and args.out and Path(args.out).is_file():
        for line in Path(args.out).read_text().splitlines():
            r = json.loads(line)
            done[(r["n"], r["image_size"], r["blocks"], r["epochs"])] = r
    results = []
    for n, size in plan(args.sizes, args.image_sizes, args.base_size, args.base_n):
        subset = nested_subset(dataset.records, n, args.seed)
        for blocks in BLOCKS:
            key = (n, size, blocks, args.epochs)
            if key in done:
                print(f"N={n:5d} {size}px blocks={blocks}: from {args.out}", flush=True)
                results.append(done[key])
                continue
            workdir = Path(tempfile.mkdtemp(prefix="medclf-scaling-"))
            try:
                split = make_split(subset, val=0.15, test=0.0, seed=args.seed)
                write_split_csv(split, workdir / "split.csv")
                job = {
                    "n": n,
                    "image_size": size,
                    "blocks": blocks,
                    "epochs": args.epochs,
                    "seed": args.seed,
                    "classes": list(dataset.classes),
                    "split_csv": str(workdir / "split.csv"),
                    "cache_dir": str(workdir / "cache"),  # empty: a cold feature cache
                    "run_dir": str(workdir / "run"),
                    "result": str(workdir / "result.json"),
                }
                r = run_child(job, workdir)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            r["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            r["load_avg_1m"] = os.getloadavg()[0]
            print(
                f"N={n:5d} {size}px blocks={blocks}: features {r['feature_s']:.1f} s ({r['feature_img_s']:.1f} img/s, "
                f"{r['backend']}), train {r['train_s']:.1f} s / {r['epochs_run']} ep, setup {r['setup_s']:.1f} s, "
                f"peak RSS {r['peak_rss_mb']:.0f} MB, process {r['process_s']:.1f} s",
                flush=True,
            )
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(r) + "\n")
            results.append(r)
    return results


# ------------------------------------------------------------------------------------------ the page


def loglog_exponent(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y on log x: y ∝ x^slope. NaN with fewer than two distinct positive points."""
    pts = [(math.log(a), math.log(b)) for a, b in zip(x, y, strict=True) if a > 0 and b > 0]
    if len({p[0] for p in pts}) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((a - mx) * (b - my) for a, b in pts) / sum((a - mx) ** 2 for a, _ in pts)


def linear_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of y on x (NaN with fewer than two distinct x)."""
    if len(set(x)) < 2:
        return float("nan")
    mx, my = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum((a - mx) ** 2 for a in x)


def _span(lo: float, hi: float, fmt: str) -> str:
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}–{hi:{fmt}}"


def _table(rows: list[tuple[int, dict[int, dict[str, Any]]]], first: str) -> list[str]:
    lines = [
        f"| {first} | train / val | pooled features s | img/s | 2-block maps s | img/s | head train s "
        "| 2 blocks train s | peak RSS MB (head / 2 blocks) | cache MB (pooled / maps) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x, by in rows:
        h, b = by[0], by[2]
        lines.append(
            f"| {x:,} | {h['n_train']:,} / {h['n_val']:,} | {h['feature_s']:.1f} | {h['feature_img_s']:.1f} "
            f"| {b['feature_s']:.1f} | {b['feature_img_s']:.1f} | {h['train_s']:.1f} | {b['train_s']:.1f} "
            f"| {h['peak_rss_mb']:,.0f} / {b['peak_rss_mb']:,.0f} | {h['cache_mb']:.1f} / {b['cache_mb']:.1f} |"
        )
    return lines


def _growth(x: list[float], rows: list[dict[int, dict[str, Any]]], what: str) -> str:
    def e(key: str, blocks: int) -> str:
        return f"{loglog_exponent(x, [r[blocks][key] for r in rows]):.2f}"

    return (
        f"pooled-feature extraction time grows as {what}^{e('feature_s', 0)}, 2-block map extraction as "
        f"{what}^{e('feature_s', 2)}, head training as {what}^{e('train_s', 0)} and 2-block training as "
        f"{what}^{e('train_s', 2)}"
    )


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The page section: two tables and the computed growth sentences."""
    by: dict[tuple[int, int], dict[int, dict[str, Any]]] = {}
    for r in results:
        by.setdefault((r["n"], r["image_size"]), {})[r["blocks"]] = r
    first = results[0]
    epochs, threads = first["epochs"], first["torch_threads"]
    lines = [
        f"## Cost growth: {MODEL}, HAM10000, cold feature cache, {epochs} training epoch{'s' * (epochs != 1)}, "
        f"{threads} torch threads",
        "",
        "Each row is two fresh processes running `medclf train` with `train.strategy=cached` "
        "(`medclf.train.train`): head only on pooled features, and `finetune_blocks=2` on cached maps. Feature "
        "seconds cover all N images (train and val) from an empty cache (`logs/cached.json`); training seconds "
        "are the fixed epochs (early stopping off), validation included: the sum of the run's `history.csv` "
        "`seconds`; peak RSS is each process's `ru_maxrss`; cache MB is the "
        "safetensors written. Subsets are nested (the first N of one seeded permutation), split 85/15 by lesion.",
        "",
    ]
    data_rows = [(n, by[(n, args.base_size)]) for n in args.sizes if (n, args.base_size) in by]
    if data_rows:
        ns = [float(n) for n, _ in data_rows]
        rows = [r for _, r in data_rows]
        lines += [f"### Data size, at {args.base_size} px", "", *_table(data_rows, "N images")]
        # rounded to whole MB before printing, so a slope of -0.3 reads 0, not -0
        rss_h = round(linear_slope(ns, [r[0]["peak_rss_mb"] for r in rows]) * 1000) + 0
        rss_b = round(linear_slope(ns, [r[2]["peak_rss_mb"] for r in rows]) * 1000) + 0
        lines += [
            "",
            f"Log-log least-squares fits over N = {int(ns[0]):,}–{int(ns[-1]):,}: {_growth(ns, rows, 'N')} "
            f"(1 = linear). Peak RSS grows by {rss_h} MB per 1,000 images with the head only and "
            f"{rss_b} MB with 2 blocks, from {rows[0][0]['peak_rss_mb']:,.0f} / {rows[0][2]['peak_rss_mb']:,.0f} "
            f"MB at N = {int(ns[0]):,}.",
            "",
        ]
    size_rows = [(s, by[(args.base_n, s)]) for s in args.image_sizes if (args.base_n, s) in by]
    if size_rows:
        px = [float(s * s) for s, _ in size_rows]
        rows = [r for _, r in size_rows]
        lines += [f"### Image size, at N = {args.base_n:,} images", "", *_table(size_rows, "image px")]
        lines += [
            "",
            f"Log-log least-squares fits against the pixel count (side², {size_rows[0][0]}–{size_rows[-1][0]} px): "
            f"{_growth(px, rows, 'pixels')} (1 = proportional to pixels). Peak RSS goes from "
            f"{rows[0][0]['peak_rss_mb']:,.0f} / {rows[0][2]['peak_rss_mb']:,.0f} MB to "
            f"{rows[-1][0]['peak_rss_mb']:,.0f} / {rows[-1][2]['peak_rss_mb']:,.0f} MB (head / 2 blocks).",
            "",
        ]
    setup = sorted(r["setup_s"] for r in results)
    base = sorted(r["rss_after_imports_mb"] for r in results)
    backends = sorted({r["backend"] for r in results})
    loads = [r["load_avg_1m"] for r in results if "load_avg_1m" in r]
    load = (
        f" 1-minute load average after each point: {_span(min(loads), max(loads), '.1f')}." if loads else ""
    )
    lines.append(
        f"Not in the columns above: each cold process also spent {_span(setup[0], setup[-1], '.1f')} s in "
        "`train()` outside feature extraction and the epochs (building the model from its offline weights, "
        "exporting the frozen part to ONNX, measuring which backend is faster, starting Lightning; after "
        "training, predicting the validation images with the complete model and writing the run folder). "
        f"Peak RSS right after importing torch and medclf: {_span(base[0], base[-1], ',.0f')} "
        f"MB. Feature backend chosen: {', '.join(backends)}.{load}"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ command line


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes", type=_ints, default=None, help="data sizes N, comma-separated (1000,2000,4000,8000)"
    )
    ap.add_argument("--image-sizes", type=_ints, default=None, help="image sides in px (160,224,288)")
    ap.add_argument("--base-size", type=int, default=None, help="image side of the data-size sweep (224)")
    ap.add_argument("--base-n", type=int, default=None, help="N of the image-size sweep (2000)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs per point (5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="append one JSON line per point here")
    ap.add_argument("--resume", action="store_true", help="reuse the points already in --out")
    ap.add_argument("--doc", type=Path, default=None, help=f"page to write (default {DOC.relative_to(ROOT)})")
    ap.add_argument("--no-write", action="store_true", help="print the section only")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="N 40,80; 96,128 px; 1 epoch; writes a page under /tmp unless --doc (checks the script, ~1 min)",
    )
    ap.add_argument("--point", help=argparse.SUPPRESS)  # internal: run one point from this job file
    args = ap.parse_args(argv)

    if args.point:
        job = json.loads(Path(args.point).read_text())
        from medclf._atomic import atomic_write_json

        atomic_write_json(Path(job["result"]), run_point(job))
        return 0

    smoke = {"sizes": [40, 80], "image_sizes": [96, 128], "base_size": 96, "base_n": 40, "epochs": 1}
    full = {
        "sizes": [1000, 2000, 4000, 8000],
        "image_sizes": [160, 224, 288],
        "base_size": 224,
        "base_n": 2000,
    }
    for k, v in (smoke if args.smoke else {**full, "epochs": 5}).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.doc is None:
        args.doc = Path(tempfile.gettempdir()) / "medclf-benchmarks-scaling-smoke.md" if args.smoke else DOC
    if not SPEC.is_file() or not (DATASETS / "ham10000").is_dir():
        raise SystemExit(
            f"HAM10000 not found under {DATASETS}; set MEDCLF_SHARED_DATASETS to the datasets folder"
        )

    t0 = time.perf_counter()
    results = sweep(args)
    body = render(results, args)
    print(body)
    print(f"sweep wall time {time.perf_counter() - t0:.0f} s")
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _results import write_section

        write_section("scaling", body, doc=args.doc, header=HEADER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
