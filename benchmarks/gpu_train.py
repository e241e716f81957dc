"""Train recipes with the Lightning strategies on one GPU, evaluate them, and write docs/benchmarks-gpu.md.

    python benchmarks/gpu_train.py configs/cxr_pneumonia3.yaml --data ROOT --out runs/gpu \
        --variant full --variant finetune --section gpu_cxr

Each variant is the real CLI in a subprocess: ``medclf train CONFIG --set train.strategy=VARIANT
--set train.accelerator=gpu ...`` (the recipe's own keys otherwise), then ``medclf evaluate RUN --no-gradcam``
on the run's own grouped test split. While training runs, ``nvidia-smi`` is read twice a second for the GPU's
memory in use and its utilisation. Results: one JSON line per variant in ``OUT/results.jsonl`` and a table in
the section ``--section`` of docs/benchmarks-gpu.md (``--doc``). Each variant's run folder, ``OUT/VARIANT``,
is replaced. ``--accelerator cpu`` runs the same steps on a machine without a GPU (that is how the script is
tested). Research use only: no output is a diagnosis.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks-gpu.md"
HEADER = """# GPU benchmarks

Measured by `benchmarks/gpu_train.py`, which rewrites its own sections below. Research use only: no output of
medclf is a diagnosis.
"""


class GpuSampler:
    """Peak memory in use and mean utilisation of GPU 0, read from ``nvidia-smi`` every ``period`` seconds."""

    def __init__(self, period: float = 0.5) -> None:
        self.period, self.peak_mib, self.util = period, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def _run(self) -> None:
        query = [
            "nvidia-smi",
            "--query-gpu=memory.used,utilization.gpu",
            "--format=csv,noheader,nounits",
            "-i",
            "0",
        ]
        while not self._stop.wait(self.period):
            try:
                used, util = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.split(
                    ","
                )[:2]
                self.peak_mib = max(self.peak_mib, int(used))
                self.util.append(int(util))
            except (ValueError, subprocess.SubprocessError):
                continue

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()


def gpu_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "no GPU (CPU run)"
    p = torch.cuda.get_device_properties(0)
    return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"


def run_variant(a: argparse.Namespace, variant: str) -> dict[str, Any]:
    run = Path(a.out) / variant
    if run.exists():
        shutil.rmtree(run)
    overrides = [
        f"train.strategy={variant}",
        f"train.accelerator={a.accelerator}",
        "train.devices=1",
        f"train.precision={a.precision}",
        f"train.batch_size={a.batch_size}",
        f"train.num_workers={a.workers}",
        f"train.epochs={a.epochs}",
        f"train.lr={a.lr}",
        *(["data.root=" + a.data] if a.data else []),
        *a.set,
    ]
    cmd = [sys.executable, "-m", "medclf", "train", a.config, "--out", str(run), "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    with GpuSampler() as gpu:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    wall = time.perf_counter() - t0
    print(proc.stdout[-3000:], proc.stderr[-6000:] if proc.returncode else "", flush=True)
    row: dict[str, Any] = {"variant": variant, "overrides": overrides, "train_wall_s": round(wall, 1)}
    if proc.returncode:
        return {**row, "error": f"medclf train exited {proc.returncode}"}
    ev = [sys.executable, "-m", "medclf", "evaluate", str(run), "--out", str(run / "eval"), "--no-gradcam"]
    out = subprocess.run(ev, capture_output=True, text=True, timeout=a.timeout)
    if out.returncode:
        print(out.stderr[-6000:], flush=True)
        return {**row, "error": f"medclf evaluate exited {out.returncode}"}
    info = json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    with open(run / "history.csv", newline="") as f:
        epochs = [float(r["seconds"]) for r in csv.DictReader(f)]
    ci = metrics.get("ci95", {})
    return {
        **row,
        "epochs_run": info.get("epochs_run"),
        "best_epoch": info.get("best_epoch"),
        "train_seconds": info.get("train_seconds"),
        "median_epoch_s": round(sorted(epochs)[len(epochs) // 2], 2) if epochs else None,
        "gpu_peak_mib": gpu.peak_mib if gpu.available else None,
        "gpu_mean_util": round(sum(gpu.util) / len(gpu.util), 1) if gpu.util else None,
        "test_n": metrics["n"],
        **{k: metrics.get(k) for k in ("accuracy", "balanced_accuracy", "macro_auc")},
        "ci95": {k: ci.get(k) for k in ("accuracy", "balanced_accuracy", "macro_auc")},
        "test_images_per_s_cpu": round(metrics.get("timing", {}).get("images_per_second", 0.0), 1),
    }


def fmt(value: Any, ci: Any = None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def table(rows: list[dict[str, Any]], device: str) -> str:
    lines = [
        f"Device: {device}. Recipe `{rows[0]['config']}`; test split = the recipe's own grouped split "
        "(never used for choices); 95% intervals from the evaluation's grouped bootstrap.",
        "",
        "| strategy | epochs run (best) | median epoch | train wall | GPU peak memory, mean use "
        "| test accuracy | balanced accuracy | macro AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r['variant']}` | {r['error']} | | | | | | |")
            continue
        gpu = f"{r['gpu_peak_mib']} MiB, {r['gpu_mean_util']}%" if r["gpu_peak_mib"] is not None else "–"
        ci = r["ci95"]
        lines.append(
            f"| `{r['variant']}` | {r['epochs_run']} ({r['best_epoch']}) | {r['median_epoch_s']} s "
            f"| {r['train_wall_s']} s | {gpu} | {fmt(r['accuracy'], ci['accuracy'])} "
            f"| {fmt(r['balanced_accuracy'], ci['balanced_accuracy'])} | {fmt(r['macro_auc'], ci['macro_auc'])} |"
        )
    lines += ["", "Overrides of every row: `" + " ".join(rows[0]["overrides"][1:]) + "`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--out", required=True)
    p.add_argument("--data", help="dataset folder (data.root); default: the recipe's")
    p.add_argument("--variant", action="append", help="train.strategy to run (repeatable; default: full)")
    p.add_argument("--accelerator", default="gpu")
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--set", action="append", default=[], help="further overrides, KEY=VALUE")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per train or evaluate command")
    p.add_argument("--section", help="write this section of --doc")
    p.add_argument("--doc", default=str(DOC))
    a = p.parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    device = gpu_name()
    print("device:", device, flush=True)
    rows = []
    for variant in a.variant or ["full"]:
        row = {"config": a.config, "device": device, **run_variant(a, variant)}
        print(json.dumps(row), flush=True)
        with open(Path(a.out) / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
    if a.section:
        from _results import write_section

        write_section(a.section, table(rows, device), doc=Path(a.doc), header=HEADER)


if __name__ == "__main__":
    main()
