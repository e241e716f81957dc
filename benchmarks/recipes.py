"""The shipped recipes on the real data sets: train, evaluate once, tabulate (docs/benchmarks-training.md).

    .venv/bin/python benchmarks/recipes.py                      # every recipe
    .venv/bin/python benchmarks/recipes.py skin_bm --work runs/recipes

Each recipe is the real CLI in a subprocess: `medclf train configs/NAME.yaml --out WORK/NAME --quiet`, then
`medclf evaluate WORK/NAME --out WORK/NAME/eval --no-gradcam`. A step whose output exists is skipped, so
re-running tabulates finished runs (and resumes an interrupted one with `--resume`). The split is the recipe's:
grouped by patient or lesion, 70/15/15, seed 0 (`medclf data split`); the epoch, temperature and operating point
are chosen on validation; the test split is scored once. The table gives the test figures with their 95%
intervals, the training wall time (`train_seconds` in run.json) and the load average at the end, which says
whether other work shared the CPU. Reads ../shared/datasets through each recipe's dataset spec.

Research use only: no output of medclf is a diagnosis.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks-training.md"
RECIPES = {
    "skin_bm": ("skin benign/malignant", "auc", "accuracy ≥ 0.90, AUC ≥ 0.96, ≤ 10 min"),
    "cxr_pneumonia3": (
        "chest X-ray normal/bacterial/viral",
        "macro_auc",
        "accuracy ≥ 0.86, macro AUC ≥ 0.95, ≤ 15 min",
    ),
    "ham10000_fusion": (
        "HAM10000, 7 classes, image + metadata",
        "macro_auc",
        "balanced accuracy ≥ 0.75, accuracy ≥ 0.85, macro AUC ≥ 0.95, ≤ 15 min",
    ),
}
# each study's own headline (../shared/seeds/README.md), measured on its own split
CLAIMS = {
    "skin_bm": "0.909 validation accuracy; its own test table: accuracy 0.76, AUC 0.893",
    "cxr_pneumonia3": "accuracy 0.841 (CNN) / 0.845 (MobileNet) on the official test split",
    "ham10000_fusion": "accuracy 0.84 on a random image split (lesions in both parts)",
}
STUDIES_DOC = ROOT / "docs" / "studies.md"


def _cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "medclf", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def run(name: str, work: Path) -> None:
    out = work / name
    if not (out / "run.json").is_file():
        _cli(
            "train",
            f"configs/{name}.yaml",
            "--out",
            str(out),
            "--quiet",
            *(["--resume"] if out.exists() else []),
        )
    if not (out / "eval" / "metrics.json").is_file():
        _cli("evaluate", str(out), "--out", str(out / "eval"), "--no-gradcam")


def _ci(m: dict, key: str) -> str:
    lo, hi = m["ci95"][key]
    return f"{m[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def row(name: str, work: Path) -> list[str]:
    task, auc_key, target = RECIPES[name]
    out = work / name
    m = json.loads((out / "eval" / "metrics.json").read_text())
    info = json.loads((out / "run.json").read_text())
    split = info.get("images") or {}
    sizes = " / ".join(str(split.get(s, "?")) for s in ("train", "val", "test"))
    minutes = info["train_seconds"] / 60
    return [
        f"`configs/{name}.yaml`",
        task,
        sizes,
        _ci(m, "accuracy"),
        _ci(m, "balanced_accuracy"),
        _ci(m, auc_key),
        f"{minutes:.1f} min",
        f"{info['peak_memory_mb'] / 1024:.1f} GB" if info.get("peak_memory_mb") else "?",
        target,
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "recipes", nargs="*", metavar="RECIPE", help=f"some of {', '.join(RECIPES)} (default: all)"
    )
    ap.add_argument(
        "--work", type=Path, default=ROOT / "runs" / "recipes", help="run folders (default runs/recipes)"
    )
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args(argv)
    names = args.recipes or list(RECIPES)
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        ap.error(f"unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")
    for name in names:
        run(name, args.work)
    header = [
        "recipe",
        "task",
        "images train / val / test",
        "accuracy [95% CI]",
        "balanced accuracy",
        "AUC (macro for 3+ classes)",
        "training time",
        "peak memory",
        "target",
    ]
    body = (
        "Test split scored once per recipe; the decision is the recipe's operating point (chosen on validation). "
        "Training time: the wall time of `medclf train` on 2 CPU cores (`train_seconds` in run.json).\n\n"
    )
    rows = [row(n, args.work) for n in names]
    body += markdown_table(header, rows)
    print(body)
    write_section("recipes", body, doc=args.doc)
    claims = markdown_table(
        ["recipe", "task", "the study's claim", "medclf: accuracy [95% CI]", "AUC [95% CI]", "training time"],
        [[r[0], r[1], CLAIMS[n], r[3], r[5], r[6]] for n, r in zip(names, rows, strict=True)],
    )
    write_section(
        "claims",
        "medclf's figures are on a test split grouped by patient or lesion that no choice looked at; the studies' "
        "are on their own splits (see each section below).\n\n" + claims,
        doc=STUDIES_DOC,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
