"""What each training lever buys, on validation only (docs/benchmarks-training.md, "Levers").

    .venv/bin/python benchmarks/levers.py cxr_pneumonia3 --work runs/levers
    .venv/bin/python benchmarks/levers.py skin_bm --only full_160 full_160_ema

Each lever is the recipe (configs/NAME.yaml) with a few `--set` overrides, trained by the real CLI
(`medclf train ... --quiet`) into WORK/NAME/LEVER. The table reads each run's run.json: the validation figures of
the best epoch (arg-max accuracy, balanced accuracy, AUC or macro AUC; uncalibrated), the epochs and the training
wall time. The test split is not looked at: recipes are chosen here, then scored once by benchmarks/recipes.py.
A finished lever is not trained again; an interrupted one resumes. Timings depend on what else shared the CPU:
the load average at the end of each run is given.

Research use only: no output of medclf is a diagnosis.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks-training.md"

FULL = ("train.strategy=full", "train.warmup_epochs=1", "train.batch_size=32", "train.scheduler=cosine")
PROGRESSIVE = ("train.low_res_size=128", "train.full_res_epochs=2")
FULL_160_EMA = (*FULL, *PROGRESSIVE, "model.input_size=160", "train.epochs=8", "train.ema=0.99")
# name -> (what it changes, overrides); every recipe is tried with the same levers
LEVERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "recipe": ("the shipped recipe as it is", ()),
    "cached_224": (
        "top 7 blocks + head from cached feature maps of 4 augmented views, 224 px, 20 epochs",
        (
            "train.strategy=cached",
            "model.input_size=224",
            "train.finetune_blocks=7",
            "train.views=4",
            "train.epochs=20",
            "train.batch_size=64",
            "train.ema=0",
            "train.low_res_size=0",
            "train.warmup_epochs=0",
        ),
    ),
    "full_128": (
        "all layers, 128 px, 8 epochs",
        (*FULL, "model.input_size=128", "train.epochs=8"),
    ),
    "full_160_prog": (
        "all layers, 128 px then 160 px for the last 2 of 8 epochs",
        (*FULL, *PROGRESSIVE, "model.input_size=160", "train.epochs=8"),
    ),
    "full_160_prog_ema": (
        "as full_160_prog, with weight averaging (EMA 0.99)",
        FULL_160_EMA,
    ),
    "full_224_prog_ema": (
        "all layers, 128 px then 224 px for the last 2 of 8 epochs, EMA 0.99",
        (*FULL, *PROGRESSIVE, "model.input_size=224", "train.epochs=8", "train.ema=0.99"),
    ),
    "full_160_prog_ema_12": (
        "as full_160_prog_ema, 12 epochs",
        (*FULL, *PROGRESSIVE, "model.input_size=160", "train.epochs=12", "train.ema=0.99"),
    ),
    "full_160_prog_ema_lr3e-4": (
        "as full_160_prog_ema, learning rate 3e-4 instead of 1e-3",
        (*FULL_160_EMA, "train.lr=3.0e-4"),
    ),
    "full_160_prog_ema_mixup": (
        "as full_160_prog_ema, with image mixup (Beta(0.2, 0.2))",
        (*FULL_160_EMA, "train.mixup=0.2"),
    ),
    "full_160_prog_ema_gray": (
        "as full_160_prog_ema, grayscale input (one-channel stem: the RGB filters summed)",
        (*FULL_160_EMA, "model.in_chans=1"),
    ),
    "lite1_160_prog_ema": (
        "as full_160_prog_ema, EfficientNet-Lite1",
        (*FULL_160_EMA, "model.name=efficientnet_lite1"),
    ),
    "lite2_160_prog_ema": (
        "as full_160_prog_ema, EfficientNet-Lite2",
        (*FULL_160_EMA, "model.name=efficientnet_lite2"),
    ),
    "budget_10m": (
        "full_160_prog_ema within `--budget 10m`",
        (
            *FULL,
            *PROGRESSIVE,
            "model.input_size=160",
            "train.epochs=20",
            "train.ema=0.99",
            "train.budget=10m",
        ),
    ),
}

# name -> (what it is, member levers): `medclf ensemble` of finished lever runs (no training of its own)
ENSEMBLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "ens_recipe_full": (
        "the recipe and full_160_prog_ema, probabilities averaged (`medclf ensemble`)",
        ("recipe", "full_160_prog_ema"),
    ),
}


def _cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "medclf", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def train(name: str, lever: str, work: Path) -> Path:
    out = work / name / lever
    if lever in ENSEMBLES:
        members = [train(name, m, work) for m in ENSEMBLES[lever][1]]
        if not (out / "run.json").is_file():
            _cli("ensemble", *map(str, members), "--out", str(out))
        return out
    if not (out / "run.json").is_file():
        sets = [a for s in LEVERS[lever][1] for a in ("--set", s)]
        resume = ["--resume"] if (out / "checkpoints" / "last.ckpt").is_file() else []
        _cli("train", f"configs/{name}.yaml", "--out", str(out), "--quiet", *(resume or sets))
        (out / "load.txt").write_text(f"{os.getloadavg()[0]:.1f}")
    return out


HEADER = (
    "recipe",
    "lever",
    "change",
    "px",
    "epochs",
    "val acc",
    "val bacc",
    "val AUC",
    "train min",
    "load",
    "ran",
)


def row(name: str, lever: str, out: Path) -> list[str]:
    info = json.loads((out / "run.json").read_text())
    m = info["val_metrics"]
    auc = m.get("auc", m.get("macro_auc", float("nan")))
    load = (out / "load.txt").read_text().strip() if (out / "load.txt").is_file() else "?"
    ran = datetime.fromtimestamp((out / "run.json").stat().st_mtime, timezone.utc).strftime("%Y-%m-%d")
    size = info["preprocessing"]["input_size"]
    seconds = info.get("train_seconds_members") or info["train_seconds"]
    n = info.get("epochs_run")
    epochs = f"{n} (best {info['best_epoch']})" if n is not None else "its members'"
    return [
        name,
        f"`{lever}`",
        {**LEVERS, **ENSEMBLES}[lever][0],
        str(size),
        epochs,
        f"{m['acc']:.3f}",
        f"{m.get('bacc', float('nan')):.3f}",
        f"{auc:.3f}",
        f"{seconds / 60:.1f}",
        load,
        ran,
    ]


def page_rows() -> dict[tuple[str, str], list[str]]:
    """The rows of the table on the page now, by (recipe, lever)."""
    text = DOC.read_text(encoding="utf-8")
    start, end = "<!-- levers:start -->", "<!-- levers:end -->"
    if start not in text or end not in text:
        return {}
    section = text[text.index(start) : text.index(end)]
    stamp = re.search(r"Date: (\d{4}-\d{2}-\d{2})", section)
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == len(HEADER) - 1 and stamp:  # a row without its `ran` cell
            cells.append("≤ " + stamp.group(1))
        if len(cells) == len(HEADER) and cells[1].startswith("`"):
            rows[(cells[0], cells[1].strip("`"))] = cells
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="+", help="recipe names (configs/NAME.yaml)")
    ap.add_argument(
        "--only", nargs="+", choices=sorted({**LEVERS, **ENSEMBLES}), help="levers to run (default: all)"
    )
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "levers", help="run folders")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    rows: dict[tuple[str, str], list[str]] = {}
    for name in args.recipes:
        for lever in args.only or [*LEVERS, *ENSEMBLES]:
            rows[(name, lever)] = row(name, lever, train(name, lever, args.work))
    # every finished lever run in WORK, so the page keeps the table whole when one lever is re-run
    known = [*LEVERS, *ENSEMBLES]
    for run_json in sorted(args.work.glob("*/*/run.json")):
        name, lever = run_json.parent.parent.name, run_json.parent.name
        if lever in known and (name, lever) not in rows:
            rows[(name, lever)] = row(name, lever, run_json.parent)
    # rows whose run folders are not in WORK stay as the page has them, with the date they ran
    for key, cells in page_rows().items():
        if key[1] in known and key not in rows:
            rows[key] = cells
    table = [rows[k] for k in sorted(rows, key=lambda k: (k[0], known.index(k[1])))]
    body = (
        "Validation figures of the best epoch's weights (arg-max, before calibration, with the recipe's test-time "
        "flips where it has them: skin_bm); the test split is not used here. "
        "`load` is the 1-minute load average when the run ended (2 means the CPU was not shared); `ran` is the "
        "day the run finished (≤: on or before); a row stays until its lever is trained again.\n\n"
        + markdown_table(HEADER, table)
    )
    print(body)
    if not args.no_write:
        write_section("levers", body, doc=DOC)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
