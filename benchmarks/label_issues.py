"""Probable label errors on the real data sets, and what training without them does (docs/benchmarks-labels.md).

    nice -n 10 .venv/bin/python benchmarks/label_issues.py                      # every data set, cheapest first
    nice -n 10 .venv/bin/python benchmarks/label_issues.py skin_bm --max-minutes 25

For each recipe, the real CLI in subprocesses, with a cheap variant of the recipe (frozen EfficientNet-Lite0
features + head: ``train.strategy=cached``, ``train.finetune_blocks=0``, one view, no test-time flips, ``train.epochs=15``):

1. ``medclf cv configs/NAME.yaml --folds K`` -> out-of-fold probabilities for every image;
2. ``medclf data audit configs/datasets/SPEC.yaml --predictions CV --out AUDIT`` -> label_issues.csv (cleanlab);
3. ``medclf train`` once as is and once with ``--exclude AUDIT/label_issues.csv`` (removed from training only:
   the split, seed 0, is the same, so both score the same val and test images), then ``medclf evaluate`` each.

A data set whose cross-validation is projected (from its first fold) to push the whole run past ``--max-minutes``
is stopped and reported as such. A step whose output exists is skipped, so re-running tabulates finished work.
Reads ../shared/datasets through each recipe's dataset spec. Research use only: no output is a diagnosis.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks-labels.md"
HEADER = """# Label-error benchmarks

Probable label errors found by confident learning (cleanlab) on out-of-fold predictions, and the test figures of
one recipe trained with and without them. Written by `benchmarks/label_issues.py`; see
[data.md](data.md#probable-label-errors) for what the numbers mean. Research use only: no output of medclf is a
diagnosis, and a flagged image is a suspect, not a proven error.
"""
# cheapest first (images); the spec the audit reads is the recipe's own
RECIPES = {
    "skin_bm": "configs/datasets/skin_bm.yaml",
    "cxr_pneumonia3": "configs/datasets/cxr_pneumonia3.yaml",
    "ham10000_fusion": "configs/datasets/ham10000.yaml",
}
CHEAP = [
    "train.strategy=cached",
    "train.finetune_blocks=0",
    "train.views=1",
    "train.epochs=15",
    "eval.tta=[]",
]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "medclf", *args]


def _run(*args: str) -> None:
    cmd = _cmd(*args)
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def _sets() -> list[str]:
    return [x for s in CHEAP for x in ("--set", s)]


def _cv(name: str, out: Path, folds: int, max_minutes: float) -> str | None:
    """Run the cross-validation; stop it when its first fold projects the data set past ``max_minutes``."""
    if (out / "cv_metrics.json").is_file():
        return None
    cmd = _cmd("cv", f"configs/{name}.yaml", "--folds", str(folds), "--quiet", *_sets(), "--out", str(out))
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    first = out / "fold_0" / "run.json"
    fresh = not first.is_file()
    while proc.poll() is None:
        time.sleep(5)
        if fresh and first.is_file():
            fresh = False
            per_fold = time.perf_counter() - t0
            # K folds + the two final runs each cost about one fold
            projected = per_fold * (folds + 2) / 60
            print(
                f"{name}: first fold {per_fold / 60:.1f} min, whole data set about {projected:.0f} min",
                flush=True,
            )
            if projected > max_minutes:
                proc.terminate()
                proc.wait()
                return (
                    f"stopped: its first fold took {per_fold / 60:.1f} min, so the data set would take about "
                    f"{projected:.0f} min (> {max_minutes:g})"
                )
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return None


def run(name: str, work: Path, folds: int, max_minutes: float) -> dict[str, Any]:
    out = work / name
    stopped = _cv(name, out / "cv", folds, max_minutes)
    if stopped:
        return {"name": name, "stopped": stopped}
    audit = out / "audit"
    if not (audit / "label_issues.csv").is_file():
        _run("data", "audit", RECIPES[name], "--predictions", str(out / "cv"), "--out", str(audit))
    exclude = audit / "label_issues.csv"
    for variant, extra in (("all", []), ("excluded", ["--exclude", str(exclude)])):
        run_dir = out / variant
        if not (run_dir / "run.json").is_file():
            _run("train", f"configs/{name}.yaml", "--quiet", *_sets(), *extra, "--out", str(run_dir))
        if not (run_dir / "eval" / "metrics.json").is_file():
            _run("evaluate", str(run_dir), "--out", str(run_dir / "eval"), "--no-gradcam")
    return {"name": name, "stopped": None, "out": out}


def _ci(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    if v is None:
        return "n/a"
    ci = (m.get("ci95") or {}).get(key)
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def _op(m: dict[str, Any]) -> str:
    # binary tasks and a declared positive group have an operating point; plain multiclass has none
    if m.get("sensitivity") is None:
        return "n/a"
    return f"{m['sensitivity']:.3f} / {m['specificity']:.3f}"


def row(result: dict[str, Any], folds: int) -> list[str]:
    name = result["name"]
    if result["stopped"]:
        return [f"`configs/{name}.yaml`", result["stopped"], *["–"] * 6]
    out = result["out"]
    audit = json.loads((out / "audit" / "audit.json").read_text(encoding="utf-8"))
    li = audit["label_issues"]
    per_class = ", ".join(f"{c} {v['flagged']}/{v['images']}" for c, v in li["per_class"].items())
    m_all = json.loads((out / "all" / "eval" / "metrics.json").read_text(encoding="utf-8"))
    m_exc = json.loads((out / "excluded" / "eval" / "metrics.json").read_text(encoding="utf-8"))
    info = json.loads((out / "excluded" / "run.json").read_text(encoding="utf-8"))
    auc = "auc" if m_all.get("auc") is not None else "macro_auc"
    test_n = json.loads((out / "all" / "run.json").read_text(encoding="utf-8"))["images"]["test"]
    return [
        f"`configs/{name}.yaml` ({folds}-fold OOF)",
        f"{li['flagged']} of {li['images']} ({li['flagged_fraction']:.1%}); {info.get('excluded_images')} left "
        f"training",
        per_class,
        f"{_ci(m_all, 'accuracy')} → {_ci(m_exc, 'accuracy')}",
        f"{_ci(m_all, 'balanced_accuracy')} → {_ci(m_exc, 'balanced_accuracy')}",
        f"{_ci(m_all, auc)} → {_ci(m_exc, auc)}",
        _op(m_all) + " → " + _op(m_exc),
        str(test_n),
    ]


def _train_minutes(out: Path) -> dict[str, float]:
    def seconds(run: Path) -> float:
        return float(json.loads((run / "run.json").read_text(encoding="utf-8")).get("train_seconds") or 0.0)

    return {
        "cv": sum(seconds(f) for f in sorted((out / "cv").glob("fold_*"))),
        "all": seconds(out / "all"),
        "without flagged": seconds(out / "excluded"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", metavar="RECIPE", help=f"some of {', '.join(RECIPES)} (default: all)")
    ap.add_argument(
        "--work", type=Path, default=ROOT / "runs" / "label_issues", help="default runs/label_issues"
    )
    ap.add_argument("--folds", type=int, default=3, help="cross-validation folds (default 3)")
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=25.0,
        help="stop a data set projected to take longer (default 25)",
    )
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args(argv)
    names = args.names or list(RECIPES)
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        ap.error(f"unknown recipe {unknown[0]!r}; choose from {', '.join(RECIPES)}")
    results = []
    for name in names:
        results.append(run(name, args.work, args.folds, args.max_minutes))
        if results[-1]["stopped"]:
            print(f"{name}: {results[-1]['stopped']}; the data sets after it are larger, so they are not run")
            break
    header = [
        "recipe",
        "images flagged",
        "flagged / images per given class",
        "test accuracy [95% CI]: all → without flagged",
        "balanced accuracy",
        "AUC (macro for 3+ classes)",
        "sensitivity / specificity at the operating point",
        "test images",
    ]
    body = (
        "Out-of-fold probabilities from `medclf cv` with a cheap variant of each recipe (`"
        + " ".join(f"--set {s}" for s in CHEAP)
        + "`); suspects flagged by `medclf data audit --predictions` (cleanlab, prune by noise rate). Then the same "
        "variant trained twice on the recipe's split (grouped, seed 0): with every image, and with "
        "`--exclude label_issues.csv`, which removes the flagged images from training only; both are scored on "
        "the same test split once (`medclf evaluate`, 95% bootstrap intervals). Nobody checked whether the "
        "flagged labels are actually wrong.\n\n"
    )
    body += markdown_table(header, [row(r, args.folds) for r in results])
    done = [r for r in results if not r["stopped"]]
    if done:
        body += (
            "\n\nTraining time (`train_seconds` in run.json, summed over the folds for cv; wall time on the 2 CPU "
            "cores, shared with other work while it ran), minutes: "
            + "; ".join(
                f"{r['name']}: " + ", ".join(f"{k} {v / 60:.1f}" for k, v in _train_minutes(r["out"]).items())
                for r in done
            )
        )
    body += f"\n\nnice level {os.nice(0)}."
    print(body)
    write_section("label_issues", body, doc=args.doc, header=HEADER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
