"""Test-time augmentation A/B on the same trained weights: which `eval.tta` views pay off, and what they cost.

For each run folder and each set of views, the run's own validation split fits the temperature and chooses the
operating point (as training does), and its test split is scored once, with the run's grouping for the bootstrap.
The per-view features are computed once and averaged per set, exactly as ``medclf.models.tta.TTAModel`` does;
when a set equals the run's stored ``tta`` the script also checks its test probabilities against the run's own
``test_predictions.csv``.

    python benchmarks/tta.py runs/skin_bm --doc docs/benchmarks-training.md
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section

from medclf.data.transforms import create_transform
from medclf.evaluate.metrics import compute_metrics
from medclf.evaluate.thresholds import fit_on_validation
from medclf.models import load_run
from medclf.models.inference import open_image
from medclf.models.tta import TTA_VIEWS, check_tta_views, unwrap_tta

DEFAULT_SETS = ("none", "hflip", "hflip,vflip", "hflip,vflip,rot180", "hflip,vflip,rot90,rot180,rot270")


def _parse_set(text: str) -> tuple[str, ...]:
    return () if text in ("", "none") else check_tta_views(text.split(","), where="--sets")


@torch.no_grad()
def _view_features(model, images: list[torch.Tensor], view: str | None, batch: int = 32) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        x = torch.stack(images[i : i + batch]).contiguous(memory_format=torch.channels_last)
        out.append(model.forward_features(x if view is None else TTA_VIEWS[view](x)).float())
    return torch.cat(out)


def measure(run_dir: Path, sets: list[tuple[str, ...]], n_boot: int) -> list[dict]:
    run = load_run(run_dir)
    model = unwrap_tta(run.model).eval()
    classes = run.classes
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    calibrate = bool(cfg.get("eval", {}).get("calibrate", True))
    rule = cfg.get("eval", {}).get("threshold", "youden")
    split = pd.read_csv(run_dir / "split.csv")
    tf = create_transform(run.preprocessing, "none")
    index = {c: i for i, c in enumerate(classes)}
    parts = {}
    for name in ("val", "test"):
        rows = split[split["split"] == name].reset_index(drop=True)
        images = [tf(open_image(p)) for p in rows["path"].astype(str)]
        meta = run.meta_encoder.transform(rows) if run.meta_encoder else None
        parts[name] = (rows, images, None if meta is None else torch.from_numpy(meta))
    views = sorted({v for s in sets for v in s})
    feats: dict[str, dict[str | None, torch.Tensor]] = {"val": {}, "test": {}}
    seconds: dict[str | None, float] = {}
    for view in [None, *views]:
        t0 = time.perf_counter()
        for name in ("val", "test"):
            feats[name][view] = _view_features(model, parts[name][1], view)
        seconds[view] = time.perf_counter() - t0
    n_images = sum(len(parts[n][1]) for n in ("val", "test"))
    stored = (
        pd.read_csv(run_dir / "test_predictions.csv")
        if (run_dir / "test_predictions.csv").is_file()
        else None
    )
    results = []
    for s in sets:
        logits = {}
        with torch.no_grad():
            for name in ("val", "test"):
                f = torch.stack([feats[name][v] for v in (None, *s)]).mean(0)
                logits[name] = model.forward_head(f, parts[name][2]).double().numpy()
        y = {n: parts[n][0]["label"].astype(str).map(index).to_numpy() for n in ("val", "test")}
        # the product's own fit: no temperature or operating point fitted on too small a validation split
        positive = run.positive_classes
        fit = fit_on_validation(
            logits["val"].astype(np.float32), y["val"], classes, positive, rule, calibrate
        )
        temp, thr = fit.temperature, fit.threshold
        probs = {n: torch.softmax(torch.from_numpy(logits[n]) / temp, 1).numpy() for n in logits}
        pos_idx = [classes.index(c) for c in positive] if positive else None
        if pos_idx is not None and len(classes) == 2:
            pos_idx = pos_idx[0]
        groups = parts["test"][0]["group"].astype(str).to_numpy() if "group" in parts["test"][0] else None
        m = compute_metrics(
            y["test"],
            probs["test"],
            classes,
            groups=groups,
            threshold=thr,
            positive_index=pos_idx,
            n_boot=n_boot,
        )
        mv = compute_metrics(y["val"], probs["val"], classes, threshold=thr, positive_index=pos_idx, n_boot=0)
        check = None
        if stored is not None and len(stored) == len(probs["test"]) and tuple(run.info.tta) == s:
            cols = [f"prob_{c}" for c in classes]
            check = float(np.abs(stored[cols].to_numpy() - probs["test"]).max())
        cost = sum(seconds[v] for v in (None, *s)) / n_images
        results.append(
            {
                "run": str(run_dir),
                "views": list(s),
                "val_accuracy": mv["accuracy"],
                "val_auc": mv["auc"] if len(classes) == 2 else mv["macro_auc"],
                "accuracy": m["accuracy"],
                "accuracy_ci": m["ci95"].get("accuracy"),
                "balanced_accuracy": m["balanced_accuracy"],
                "auc": m["auc"] if len(classes) == 2 else m["macro_auc"],
                "auc_ci": m["ci95"].get("auc" if len(classes) == 2 else "macro_auc"),
                "threshold": thr,
                "temperature": temp,
                "ms_per_image": 1000 * cost,
                "max_diff_vs_run": check,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def _ci(ci) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "runs", nargs="+", type=Path, help="trained run folders (their val and test splits are used)"
    )
    ap.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), help="view sets, e.g. none hflip,vflip")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--doc", type=Path, default=None, help="write a section into this docs page")
    ap.add_argument("--section", default="tta")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON lines")
    args = ap.parse_args(argv)
    sets = [_parse_set(s) for s in args.sets]
    t0 = time.perf_counter()
    rows = [r for run in args.runs for r in measure(run, sets, args.bootstrap)]
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [
        "| run | test-time views (+ original) | val accuracy / AUC | test accuracy [95% CI] | test balanced accuracy "
        "| test AUC [95% CI] | eager torch ms / image | matches the run's own predictions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        match = "—" if r["max_diff_vs_run"] is None else f"max \\|Δp\\| {r['max_diff_vs_run']:.1e}"
        lines.append(
            f"| {Path(r['run']).name} | {', '.join(r['views']) or 'none'} | {r['val_accuracy']:.3f} / {r['val_auc']:.3f} "
            f"| {r['accuracy']:.3f}{_ci(r['accuracy_ci'])} "
            f"| {r['balanced_accuracy']:.3f} | {r['auc']:.3f}{_ci(r['auc_ci'])} | {r['ms_per_image']:.0f} | {match} |"
        )
    body = (
        "Same weights, every view set: temperature and operating point refitted on the run's validation split,\n"
        "test scored once (grouped bootstrap). AUC is the binary AUC, or the macro one-vs-rest AUC. Choose views on\n"
        "the validation columns; the test columns only report.\n\n"
        + "\n".join(lines)
        + f"\n\nWall {wall:.0f} s, peak RSS {peak:.1f} GB."
    )
    print(body)
    if args.doc:
        write_section(args.section, body, doc=args.doc)


if __name__ == "__main__":
    main()
