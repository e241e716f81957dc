"""The five source studies re-run with medclf (docs/studies.md): each study's own comparison, done properly.

    .venv/bin/python benchmarks/studies.py mpox            # 2-block CNN vs Lite0, 5-fold CV (synthetic MSLD layout)
    .venv/bin/python benchmarks/studies.py skin_bm --skin-run runs/skin_bm    # recipe vs two-phase finetune; thresholds
    .venv/bin/python benchmarks/studies.py cxr3 --cxr-run runs/cxr3          # grayscale CNN vs Lite0; epochs
    .venv/bin/python benchmarks/studies.py backbones       # HAM10000, Lite0/1/2 heads vs a small scratch CNN
    .venv/bin/python benchmarks/studies.py ham_ablation --ham-run runs/ham   # image -> +meta -> +aug -> +TL; search
    .venv/bin/python benchmarks/studies.py all
    .venv/bin/python benchmarks/studies.py all --smoke     # every study on tiny SYNTHETIC data, a temp page

Every step is the real CLI (`medclf data synth | train | cv | evaluate | compare | tune`) in a subprocess, its
output in ``--work`` (default runs/studies) and its log in ``WORK/logs/``. A step whose output exists is
skipped, so re-running continues an interrupted study (an interrupted `train` resumes from its checkpoint).
Train/cv/tune commands are timed (``WORK/timings.json``). Afterwards the study's section of docs/studies.md is
rewritten from the evaluation outputs (metrics.json, cv_metrics.json, compare.json); the only numbers computed
here are, from those same prediction files, the pooled out-of-fold metrics of a CV and their paired bootstrap,
and the skin_bm threshold table (thresholds chosen on the run's validation predictions, applied to its test
predictions) — with medclf.evaluate's own functions.

Research use only: no output of medclf is a diagnosis.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table as _table

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "studies.md"
CONFIGS = ROOT / "configs"
STUDIES = ("mpox", "skin_bm", "cxr3", "backbones", "ham_ablation")

HEADER = """# The five studies, reproduced

Generated sections only (the smoke run's page). Research use only: no output of medclf is a diagnosis.
"""

# the synthetic stand-in for MSLD v2.0's six classes: the generator's two ABCD shapes x three colour casts
SHAPES = ("round", "irregular")  # medclf data synth's benign / malignant caricatures
TINTS = {"neutral": (1.0, 1.0, 1.0), "warm": (1.12, 0.96, 0.86), "cool": (0.88, 0.98, 1.12)}
MSLD6 = tuple(f"{s}_{t}" for s in SHAPES for t in TINTS)
HAM_SEARCH_SPACE = (
    "{train.lr: {type: loguniform, low: 3.0e-4, high: 3.0e-3}, "
    "train.label_smoothing: {type: uniform, low: 0.0, high: 0.2}, "
    "train.class_weight_power: {type: uniform, low: 0.0, high: 1.0}, "
    "model.drop_rate: {type: uniform, low: 0.1, high: 0.5}}"
)


# ------------------------------------------------------------------------------------------------ running steps
class Steps:
    """Runs medclf commands in subprocesses, skips finished ones, times them, remembers the command lines."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.timings_path = work / "timings.json"
        self.timings: dict[str, dict[str, Any]] = (
            json.loads(self.timings_path.read_text(encoding="utf-8")) if self.timings_path.is_file() else {}
        )
        self.env = dict(os.environ)
        self.env.setdefault("PYTHONUNBUFFERED", "1")

    def shown(self, args: Sequence[str]) -> str:
        """The command as a user would type it (paths under the repository made relative)."""
        parts = []
        for a in args:
            a = str(a)
            if a.startswith(str(ROOT) + os.sep):
                a = os.path.relpath(a, ROOT)
            parts.append(shlex.quote(a))
        return "medclf " + " ".join(parts)

    def run(self, key: str, args: Sequence[str], done: Path | None) -> float | None:
        """``medclf ARGS`` unless ``done`` exists; returns the wall seconds (of this or the earlier run)."""
        args = [str(a) for a in args]
        if done is not None and done.exists():
            print(f"[skip] {key}: {done} exists")
            self.timings.setdefault(key, {"seconds": None, "command": self.shown(args)})
            return self.timings[key].get("seconds")
        log = self.logs / f"{key}.log"
        print(f"[run ] {key}: {self.shown(args)}", flush=True)
        t0 = time.perf_counter()
        with open(log, "w", encoding="utf-8") as fh:
            rc = subprocess.run(
                [sys.executable, "-m", "medclf", *args],
                cwd=ROOT,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=self.env,
            ).returncode
        seconds = time.perf_counter() - t0
        if rc != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            print("\n".join("       " + line for line in tail))
            raise SystemExit(f"{key} failed (exit {rc}); full log: {log}")
        print(f"       {seconds:.1f} s", flush=True)
        self.timings[key] = {"seconds": round(seconds, 2), "command": self.shown(args)}
        from medclf._atomic import atomic_write_json

        atomic_write_json(self.timings_path, self.timings)
        return seconds

    def train(self, key: str, args: Sequence[str], out: Path) -> float | None:
        """`medclf train ARGS --out OUT`, or `--resume` when an interrupted run left a checkpoint."""
        if not (out / "run.json").is_file() and (out / "checkpoints" / "last.ckpt").is_file():
            return self.run(key, ["train", "--out", out, "--resume", "--quiet"], out / "run.json")
        return self.run(key, ["train", *args, "--out", out, "--quiet"], out / "run.json")

    def evaluate(self, key: str, run_dir: Path, out: Path, n_boot: int) -> Path:
        self.run(
            key,
            ["evaluate", run_dir, "--out", out, "--bootstrap", n_boot, "--no-gradcam"],
            out / "metrics.json",
        )
        return out

    def compare(self, key: str, dirs: Sequence[Path], out: Path, n_boot: int) -> dict[str, Any]:
        self.run(key, ["compare", *dirs, "--out", out, "--bootstrap", n_boot], out / "compare.json")
        return _json(out / "compare.json")

    def commands(self, keys: Sequence[str]) -> str:
        lines = [self.timings[k]["command"] for k in keys if k in self.timings]
        return "```bash\n" + "\n".join(lines) + "\n```"


# --------------------------------------------------------------------------------------------------- formatting
def _json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _num(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ci(value: Any, interval: Any) -> str:
    """``0.912 [0.890, 0.933]`` (or the bare number without an interval)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(interval, list | tuple) and len(interval) == 2 and None not in interval:
        lo, hi = interval
        if not (math.isnan(lo) or math.isnan(hi)):
            return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
    return f"{value:.3f}"


def _m(metrics: dict[str, Any], key: str) -> str:
    return _ci(metrics.get(key), (metrics.get("ci95") or {}).get(key))


def _pc(metrics: dict[str, Any], cls: str, key: str) -> str:
    value = ((metrics.get("per_class") or {}).get(cls) or {}).get(key)
    return _ci(value, ((metrics.get("per_class_ci95") or {}).get(cls) or {}).get(key))


def _secs(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.0f} s" if v < 120 else f"{v / 60:.1f} min"


def _paired(compare_json: dict[str, Any]) -> str:
    test = compare_json.get("paired_test") or {}
    if not test.get("done"):
        return f"Paired test (`medclf compare`): not done — {test.get('reason', 'no reason given')}."
    lines = [
        f"Paired bootstrap (`medclf compare`), **{test['a']} − {test['b']}** on the {test['n_common']} test "
        f"images both predicted ({test['n_boot']} resamples, grouped by patient/lesion where known):"
    ]
    lines += [_paired_line(m, r) for m, r in test["results"].items()]
    return "\n".join(lines)


def _paired_line(metric: str, r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    verdict = (
        "the interval excludes 0" if (lo > 0 or hi < 0) else "the interval contains 0: no shown difference"
    )
    return (
        f"- {metric}: {r['a']:.3f} vs {r['b']:.3f}, difference {r['diff']:+.3f} "
        f"(95% CI {lo:+.3f} to {hi:+.3f}, p = {r['p_value']:.3f}; {verdict})"
    )


def _run_info(run_dir: Path) -> dict[str, Any]:
    return _json(run_dir / "run.json")


def _train_seconds(run_dir: Path) -> float | None:
    v = _run_info(run_dir).get("train_seconds")
    return float(v) if isinstance(v, int | float) else None


# ------------------------------------------------------------------------------------------ prediction analyses
def _arrays(pred: Any, classes: Sequence[str]) -> tuple[Any, Any, Any]:
    import numpy as np

    index = {c: i for i, c in enumerate(classes)}
    y = pred["label"].astype(str).map(index).to_numpy()
    probs = pred[[f"prob_{c}" for c in classes]].to_numpy(dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # CSV rounding
    groups = pred["group"].astype(str).to_numpy() if "group" in pred.columns else None
    return y, probs, groups


def pooled_oof(cv_dir: Path, n_boot: int) -> dict[str, Any]:
    """Metrics (with grouped bootstrap CIs) of a CV's pooled out-of-fold predictions (oof_predictions.csv)."""
    import pandas as pd

    from medclf.evaluate import compute_metrics

    classes = list(_json(cv_dir / "cv_metrics.json")["classes"])
    pred = pd.read_csv(cv_dir / "oof_predictions.csv")
    y, probs, groups = _arrays(pred, classes)
    return compute_metrics(y, probs, classes, groups=groups, n_boot=n_boot, seed=0)


def paired_oof(cv_a: Path, cv_b: Path, n_boot: int) -> dict[str, Any]:
    """Paired bootstrap (A − B) of two CVs' out-of-fold predictions on the images both predicted."""
    import pandas as pd

    from medclf.evaluate.metrics import paired_bootstrap

    classes = list(_json(cv_a / "cv_metrics.json")["classes"])
    a = pd.read_csv(cv_a / "oof_predictions.csv").drop_duplicates("path")
    b = pd.read_csv(cv_b / "oof_predictions.csv").drop_duplicates("path")
    joined = a.merge(b[["path", *(f"prob_{c}" for c in classes)]], on="path", suffixes=("", "_b"))
    y, pa, groups = _arrays(joined, classes)
    pb_frame = joined[[f"prob_{c}_b" for c in classes]].rename(columns=lambda c: c[:-2])
    _, pb, _ = _arrays(pb_frame.assign(label=joined["label"]), classes)
    res = paired_bootstrap(
        y, pa, pb, classes, groups=groups, metrics=("auc", "accuracy"), n_boot=n_boot, seed=0
    )
    return {"n_common": len(joined), "results": res}


def threshold_analysis(run_dir: Path, eval_dir: Path, n_boot: int) -> list[list[str]]:
    """Operating points chosen on the run's validation predictions, measured on its evaluated test predictions."""
    import pandas as pd

    from medclf.evaluate import compute_metrics
    from medclf.evaluate.thresholds import choose_threshold

    info = _run_info(run_dir)
    classes = list(info["classes"])
    positive = info.get("positive_class") or classes[1]
    val = pd.read_csv(run_dir / "val_predictions.csv")
    test = pd.read_csv(eval_dir / "predictions.csv")
    y_val = (val["label"].astype(str) == positive).astype(int).to_numpy()
    p_val = val[f"prob_{positive}"].to_numpy(dtype=float)
    y, probs, groups = _arrays(test, classes)
    rows = []
    rules: list[tuple[str, str | float]] = [
        ("Youden J (val)", "youden"),
        ("sensitivity ≥ 0.90 (val)", "sensitivity:0.90"),
        ("sensitivity ≥ 0.95 (val)", "sensitivity:0.95"),
        ("fixed 0.5", 0.5),
    ]
    for name, rule in rules:
        if rule == info.get("threshold_rule") and info.get("threshold") is not None:
            thr = float(info["threshold"])  # the run's own stored operating point, exactly
        else:
            thr = choose_threshold(y_val, p_val, rule)
        m = compute_metrics(
            y,
            probs,
            classes,
            groups=groups,
            threshold=thr,
            positive_index=classes.index(positive),
            n_boot=n_boot,
            seed=0,
        )
        rows.append(
            [
                name,
                f"{thr:.3f}",
                *(_m(m, k) for k in ("sensitivity", "specificity", "ppv", "npv", "accuracy")),
            ]
        )
    return rows


# ------------------------------------------------------------------------------------------------------- data
def msld6(src: Path, dst: Path) -> Path:
    """Turn `medclf data synth --layout kfold` output (2 classes) into a 6-class set in the same MSLD v2.0 layout.

    Class = the generator's shape class (benign -> round, malignant -> irregular) x a colour cast fixed per
    patient (so all of a patient's images, in every fold and FOLDS_AUG, keep one class). SYNTHETIC, not mpox."""
    import numpy as np
    import yaml
    from PIL import Image

    from medclf._atomic import atomic_write_text

    if (dst / "dataset.yaml").is_file():
        return dst
    tints = list(TINTS.items())
    n = 0
    for path in sorted(src.rglob("*.jpg")):
        rel = path.relative_to(src)
        label = rel.parts[-2]
        patient = re.match(r"^P(\d+)_", path.name)
        if label not in ("benign", "malignant") or patient is None:
            raise SystemExit(f"{path}: not a `medclf data synth` image (expected <class>/P<id>_<k>.jpg)")
        tint_name, tint = tints[int(patient.group(1)) % len(tints)]
        shape = SHAPES[0] if label == "benign" else SHAPES[1]
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) * np.array(tint)
        out = dst / Path(*rel.parts[:-2]) / f"{shape}_{tint_name}" / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, quality=92)
        n += 1
    spec = yaml.safe_load((src / "dataset.yaml").read_text(encoding="utf-8"))
    spec.update(name="synthetic-msld6", classes=list(MSLD6))
    atomic_write_text(
        dst / "README.txt",
        (
            "SYNTHETIC DATA - NOT MEDICAL DATA. `medclf data synth --layout kfold` caricatures re-coloured by\n"
            "benchmarks/studies.py into 6 classes (shape x colour cast) in the MSLD v2.0 fold layout; no mpox images.\n"
        ),
    )
    atomic_write_text(dst / "dataset.yaml", yaml.safe_dump(spec, sort_keys=False))  # written last: marks done
    print(f"       {n} images -> {dst} (6 synthetic classes)")
    return dst


class Data:
    """Where each study's data comes from: the real sets (recipes' own specs) or tiny synthetic ones (--smoke)."""

    def __init__(self, steps: Steps, smoke: bool) -> None:
        self.steps, self.smoke = steps, smoke
        self.root = steps.work / "data"

    def synth(self, name: str, layout: str, n: int, size: int) -> Path:
        out = self.root / name
        self.steps.run(
            f"data_{name}",
            ["data", "synth", "--layout", layout, "--n", n, "--size", size, "--out", out],
            out / "dataset.yaml",
        )
        return out

    def binary(self) -> list[str]:
        """skin_bm / cxr3 data arguments: nothing (the recipe's spec) or a synthetic class-folder set."""
        if not self.smoke:
            return []
        return ["--data", self.synth("synth_folders", "folders", 60, 48), "--set", "data.spec=null"]

    def ham(self) -> list[str]:
        """HAM10000 data arguments: nothing, or a synthetic CSV set with age/sex/site metadata."""
        if not self.smoke:
            return []
        return [
            "--data",
            self.synth("synth_csv", "csv", 80, 48),
            "--set",
            "data.spec=null",
            "--set",
            "eval.positive_classes=[]",
        ]

    def ham_meta(self) -> str:
        return "[age,sex,site]" if self.smoke else "[age,sex,localization]"


# -------------------------------------------------------------------------------------------------------- studies
def _sets(*pairs: str) -> list[str]:
    out: list[str] = []
    for p in pairs:
        out += ["--set", p]
    return out


def study_mpox(ctx: argparse.Namespace, steps: Steps, data: Data) -> str:
    work = steps.work / "mpox"
    n = 90 if ctx.smoke else ctx.mpox_n
    size = 32 if ctx.smoke else 64
    two = data.synth(f"msld_kfold_{n}", "kfold", n, size)
    six = msld6(two, data.root / f"msld6_{n}")
    quick = _sets("train.epochs=2", "train.cache_dir=" + str(steps.work / "cache")) if ctx.smoke else []
    cnn, lite = work / "cnn_cv", work / "lite0_cv"
    steps.run(
        "mpox_cv_cnn",
        [
            "cv",
            CONFIGS / "mpox_kfold.yaml",
            "--data",
            six,
            *_sets("name=mpox_cnn_32px"),
            *quick,
            "--out",
            cnn,
            "--quiet",
        ],
        cnn / "cv_metrics.json",
    )
    lite_sets = _sets(
        "name=lite0_cached",
        "model.name=efficientnet_lite0",
        "model.pretrained=true",
        f"model.input_size={64 if ctx.smoke else 224}",
        "model.drop_rate=0.3",
        "train.strategy=cached",
        "train.finetune_blocks=0",
        "train.views=1",
        "train.epochs=30",
        "train.scheduler=cosine",
    )
    steps.run(
        "mpox_cv_lite0",
        ["cv", CONFIGS / "mpox_kfold.yaml", "--data", six, *lite_sets, *quick, "--out", lite, "--quiet"],
        lite / "cv_metrics.json",
    )
    cmp = steps.compare("mpox_compare", [cnn, lite], work / "compare", ctx.bootstrap)
    del cmp  # cv entries carry no per-image predictions: the paired test is done on the pooled OOF below

    classes = list(_json(cnn / "cv_metrics.json")["classes"])
    rows, pooled = [], {}
    for label, d, key in (
        ("2-block CNN, 32×32, scratch", cnn, "mpox_cv_cnn"),
        ("EfficientNet-Lite0, cached head (ImageNet)", lite, "mpox_cv_lite0"),
    ):
        cvm = _json(d / "cv_metrics.json")
        mean, std = cvm["mean"], cvm["std"]
        pooled[label] = pm = pooled_oof(d, ctx.bootstrap)
        folds = sorted(p for p in d.glob("fold_*") if (p / "run.json").is_file())
        secs = [s for s in (_train_seconds(p) for p in folds) if s is not None]
        rows.append(
            [
                label,
                len(cvm["folds"]),
                *(
                    f"{mean[k]:.3f} ± {std.get(k, float('nan')):.3f}"
                    for k in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
                ),
                _m(pm, "accuracy"),
                _m(pm, "macro_auc"),
                _secs(sum(secs)) if secs else "n/a",
                _secs(steps.timings.get(key, {}).get("seconds")),
            ]
        )
    paired = paired_oof(cnn, lite, ctx.bootstrap)
    n_images = sum(1 for _ in (six / "FOLDS").rglob("*.jpg")) // 5
    body = [
        f"Data: **SYNTHETIC** — {n_images} `medclf data synth` images ({size} px) in the MSLD v2.0 layout "
        "(`FOLDS/fold1..5/{Train,Valid,Test}` + `FOLDS_AUG`), re-coloured into 6 classes (2 shapes × 3 colour "
        "casts, fixed per patient). The real MSLD v2.0 is not on this machine; these numbers test the protocol, "
        "not mpox.",
        "",
        _table(
            [
                "model",
                "folds",
                "accuracy (mean ± SD over folds)",
                "balanced acc.",
                "macro F1",
                "macro AUC",
                "pooled OOF accuracy [95% CI]",
                "pooled OOF macro AUC [95% CI]",
                "train time (sum of folds)",
                "wall (cv command)",
            ],
            rows,
        ),
        "",
        "Per-class one-vs-rest ROC AUC, precision and recall of the pooled out-of-fold predictions (95% CI, "
        "bootstrap grouped by patient):",
        "",
        _table(
            [
                "class",
                *(f"{lbl.split(',')[0]} {k}" for lbl in pooled for k in ("AUC", "recall", "precision")),
            ],
            [
                [c, *(_pc(pm, c, k) for pm in pooled.values() for k in ("auc", "recall", "precision"))]
                for c in classes
            ],
        ),
        "",
    ]
    for label, pm in pooled.items():
        cm = pm.get("confusion_matrix") or []
        body += [f"Confusion matrix, {label} (rows: true class, columns: decision; pooled out-of-fold):", ""]
        body += [_table(["", *classes], [[c, *row] for c, row in zip(classes, cm, strict=False)]), ""]
    names = list(pooled)
    body += [
        f"Paired bootstrap on the pooled out-of-fold predictions, **{names[0]} − {names[1]}**, "
        f"{paired['n_common']} images ({ctx.bootstrap} resamples grouped by patient; `medclf compare` ranks "
        "CV folders by mean ± SD but has no per-image predictions for them):",
        *(_paired_line(m, r) for m, r in paired["results"].items()),
        "",
        "Commands (leaderboard: `WORK/mpox/compare/leaderboard.md`):",
        "",
        steps.commands(["data_" + two.name, "mpox_cv_cnn", "mpox_cv_lite0", "mpox_compare"]),
    ]
    return "\n".join(body)


def study_skin_bm(ctx: argparse.Namespace, steps: Steps, data: Data) -> str:
    work = steps.work / "skin_bm"
    d = data.binary()
    smoke = _sets("train.epochs=1", "train.cache_dir=" + str(steps.work / "cache")) if ctx.smoke else []
    recipe = CONFIGS / "skin_bm.yaml"
    cached = Path(ctx.skin_run).resolve() if ctx.skin_run else work / "cached"
    if not (cached / "run.json").is_file():
        if ctx.skin_run:
            raise SystemExit(
                f"--skin-run {ctx.skin_run}: no run.json there; train it or leave --skin-run out"
            )
        head = ("train.strategy=cached", "model.input_size=224", "train.finetune_blocks=0", "train.views=1")
        quick = _sets(*head) if ctx.quick_recipes else []
        size = _sets("model.input_size=64") if ctx.smoke else []
        steps.train(
            "skin_bm_cached", [recipe, *d, *quick, *size, *smoke, *_sets("name=skin_bm_cached")], cached
        )
    ft = work / "finetune"
    ft_sets = _sets(
        "name=skin_bm_finetune",
        "train.strategy=finetune",
        f"model.input_size={64 if ctx.smoke else ctx.ft_input_size}",
        f"train.head_epochs={1 if ctx.smoke else ctx.ft_head_epochs}",
        # train.epochs counts the head epochs too
        f"train.epochs={2 if ctx.smoke else ctx.ft_head_epochs + ctx.ft_epochs}",
        f"train.finetune_blocks={ctx.ft_blocks}",
    )
    steps.train("skin_bm_finetune", [recipe, *d, *ft_sets, *smoke], ft)
    ev_c = steps.evaluate("skin_bm_eval_cached", cached, work / "eval_cached", ctx.bootstrap)
    ev_f = steps.evaluate("skin_bm_eval_finetune", ft, work / "eval_finetune", ctx.bootstrap)
    cmp = steps.compare("skin_bm_compare", [ev_c, ev_f], work / "compare", ctx.bootstrap)

    rows = []
    for label, run, ev, key in (
        ("recipe (`configs/skin_bm.yaml`)", cached, ev_c, "skin_bm_cached"),
        (f"two-phase finetune ({_ft_label(ft)})", ft, ev_f, "skin_bm_finetune"),
    ):
        m = _json(ev / "metrics.json")
        info = _run_info(run)
        rows.append(
            [
                label,
                m.get("n"),
                _m(m, "auc"),
                _m(m, "average_precision"),
                _m(m, "accuracy"),
                _m(m, "sensitivity"),
                _m(m, "specificity"),
                _num(m.get("threshold")),
                _m(m, "ece"),
                f"{info.get('epochs_run', 'n/a')}",
                _secs(info.get("train_seconds")),
                _secs(steps.timings.get(key, {}).get("seconds")) if key in steps.timings else "reused",
            ]
        )
    body = [
        "Both runs use the recipe's grouped split (seed 0) and are evaluated on the same held-out test images; "
        "the threshold is each run's Youden point chosen on validation. EfficientNet-Lite0 stands in for "
        "MobileNetV2: only EfficientNet-Lite ImageNet weights are available offline.",
        "",
        _table(
            [
                "strategy",
                "test n",
                "AUC [95% CI]",
                "average precision",
                "accuracy",
                "sensitivity",
                "specificity",
                "threshold",
                "ECE",
                "epochs run",
                "train time",
                "wall (train command)",
            ],
            rows,
        ),
        "",
        _paired(cmp),
        "",
    ]
    for label, run, ev in (("recipe", cached, ev_c), ("two-phase finetune", ft, ev_f)):
        body += [
            f"Threshold analysis, {label}: each threshold chosen on the run's validation predictions, measured "
            "on the test predictions (95% CI):",
            "",
            _table(
                ["rule", "threshold", "sensitivity", "specificity", "PPV", "NPV", "accuracy"],
                threshold_analysis(run, ev, ctx.bootstrap),
            ),
            "",
        ]
    keys = [
        "skin_bm_cached",
        "skin_bm_finetune",
        "skin_bm_eval_cached",
        "skin_bm_eval_finetune",
        "skin_bm_compare",
    ]
    body += ["Commands:", "", steps.commands(keys)]
    if ctx.skin_run:
        body += ["", f"The recipe run was reused from `{ctx.skin_run}` (`--skin-run`)."]
    return "\n".join(body)


def study_cxr3(ctx: argparse.Namespace, steps: Steps, data: Data) -> str:
    work = steps.work / "cxr3"
    d = data.binary()
    cache = _sets("train.cache_dir=" + str(steps.work / "cache")) if ctx.smoke else []
    recipe = CONFIGS / "cxr_pneumonia3.yaml"
    pre = Path(ctx.cxr_run).resolve() if ctx.cxr_run else work / "recipe"
    if not (pre / "run.json").is_file():
        if ctx.cxr_run:
            raise SystemExit(f"--cxr-run {ctx.cxr_run}: no run.json there; train it or leave --cxr-run out")
        quick = _sets("train.finetune_blocks=0", "train.views=1") if ctx.quick_recipes else []
        small = _sets("model.input_size=64", "train.epochs=1") if ctx.smoke else []
        steps.train(
            "cxr3_recipe", [recipe, *d, *quick, *small, *cache, *_sets("name=cxr3_lite0_cached")], pre
        )
    runs: list[tuple[str, Path, str, int]] = []
    for paper in (25, 50, 100):
        epochs = _scaled(paper, ctx.epoch_scale)
        out = work / f"cnn_{epochs}ep"
        sets = _sets(
            f"name=cxr_cnn_{epochs}ep",
            "model.name=cxr_cnn",
            "model.pretrained=false",
            "train.strategy=scratch",
            f"model.input_size={64 if ctx.smoke else 128}",
            "train.lr=3.0e-4",
            f"train.epochs={epochs}",
            "train.patience=0",
            "train.scheduler=none",
        )
        steps.train(f"cxr3_cnn_{epochs}ep", [recipe, *d, *sets, *cache], out)
        runs.append((f"grayscale CNN, {epochs} epochs (study: {paper})", out, f"cxr3_cnn_{epochs}ep", paper))
        if ctx.smoke:
            break  # one CNN run is enough to check the pipeline
    evals = []
    for label, run, key, _ in [("EfficientNet-Lite0 recipe (cached)", pre, "cxr3_recipe", 0), *runs]:
        evals.append(
            (label, run, steps.evaluate(f"{key}_eval", run, work / f"eval_{run.name}", ctx.bootstrap), key)
        )
    cmp = steps.compare("cxr3_compare", [e for _, _, e, _ in evals], work / "compare", ctx.bootstrap)

    classes = list(_json(evals[0][2] / "metrics.json")["classes"])
    rows = []
    for label, run, ev, key in evals:
        m = _json(ev / "metrics.json")
        info = _run_info(run)
        rows.append(
            [
                label,
                _m(m, "accuracy"),
                _m(m, "balanced_accuracy"),
                _m(m, "macro_auc"),
                *(_pc(m, c, "recall") for c in classes),
                info.get("epochs_run", "n/a"),
                _secs(info.get("train_seconds")),
                _secs(steps.timings.get(key, {}).get("seconds")) if key in steps.timings else "reused",
            ]
        )
    scale = (
        f"The study trained 25/50/100 epochs; here they are scaled by {ctx.epoch_scale:g} (`--epoch-scale`) to "
        f"{'/'.join(str(_scaled(p, ctx.epoch_scale)) for p in (25, 50, 100))} epochs, each run for "
        "exactly that many (no early stopping; the best-validation epoch's weights are kept)."
    )
    body = [
        "Normal / bacterial / viral from the file names, grouped by patient (no patient in two splits); every "
        "model evaluated on the same held-out test images. The CNN is `cxr_cnn` (grayscale, 128×128) from "
        "scratch; the pretrained side is the recipe `configs/cxr_pneumonia3.yaml` (EfficientNet-Lite0, cached). "
        + scale,
        "",
        _table(
            [
                "model",
                "accuracy [95% CI]",
                "balanced acc.",
                "macro AUC",
                *(f"recall {c}" for c in classes),
                "epochs run",
                "train time",
                "wall (train command)",
            ],
            rows,
        ),
        "",
        _paired(cmp),
        "",
        "Commands:",
        "",
        steps.commands(
            ["cxr3_recipe", *(k for _, _, k, _ in runs), *(f"{k}_eval" for *_, k in evals), "cxr3_compare"]
        ),
    ]
    if ctx.cxr_run:
        body += ["", f"The recipe run was reused from `{ctx.cxr_run}` (`--cxr-run`)."]
    return "\n".join(body)


def _ham_base(data: Data) -> list[str]:
    return [CONFIGS / "ham10000_fusion.yaml", *data.ham()]  # type: ignore[list-item]


def _scratch_sets(ctx: argparse.Namespace) -> list[str]:
    return _sets(
        "model.name=resnet_small",
        "model.pretrained=false",
        "train.strategy=scratch",
        f"model.input_size={32 if ctx.smoke else ctx.scratch_size}",
        f"train.epochs={1 if ctx.smoke else ctx.scratch_epochs}",
    )


def _scratch_image_only(ctx: argparse.Namespace, steps: Steps, data: Data) -> tuple[str, list[str], Path]:
    """HAM10000 image only, resnet_small from scratch, no augmentation: ham_ablation's stage A and the no-
    pretraining baseline of `backbones` (one run serves both)."""
    smoke = _sets("train.epochs=1", "train.cache_dir=" + str(steps.work / "cache")) if ctx.smoke else []
    sets = _sets("name=ham_a_image", "model.metadata=[]", "train.augment=none")
    return (
        "ham_a_image",
        [*_ham_base(data), *_scratch_sets(ctx), *sets, *smoke],
        steps.work / "ham_ablation" / "a_image",
    )


def study_backbones(ctx: argparse.Namespace, steps: Steps, data: Data) -> str:
    work = steps.work / "backbones"
    smoke = _sets("train.epochs=1", "train.cache_dir=" + str(steps.work / "cache")) if ctx.smoke else []
    common = _sets("model.metadata=[]", "train.strategy=cached", "train.finetune_blocks=0", "train.views=1")
    runs = []
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        size = _sets("model.input_size=64") if ctx.smoke else []
        out = work / name
        steps.train(
            f"bb_{name}",
            [*_ham_base(data), *common, *size, *smoke, *_sets(f"model.name={name}", f"name={name}_head")],
            out,
        )
        got = (_run_info(out).get("model") or {}).get("name")
        if got != name:  # a run folder left over from another command must not pass for this backbone
            raise SystemExit(f"{out}: holds a {got} run, not {name}; delete the folder and re-run")
        runs.append((f"{name} (ImageNet, head only)", out, f"bb_{name}"))
    key, args, out = _scratch_image_only(ctx, steps, data)  # the same run is stage A of ham_ablation
    steps.train(key, args, out)
    runs.append(("resnet_small (scratch, no augmentation)", out, key))
    evals = [
        (lbl, run, steps.evaluate(f"{key}_eval", run, run.parent / f"eval_{run.name}", ctx.bootstrap), key)
        for lbl, run, key in runs
    ]
    cmp = steps.compare("bb_compare", [e for _, _, e, _ in evals], work / "compare", ctx.bootstrap)
    rows = []
    for label, run, ev, key in evals:
        m = _json(ev / "metrics.json")
        info = _run_info(run)
        size = (info.get("preprocessing") or {}).get("input_size", "n/a")
        rows.append(
            [
                label,
                size,
                _m(m, "balanced_accuracy"),
                _m(m, "accuracy"),
                _m(m, "macro_auc"),
                _m(m, "macro_f1"),
                _m(m, "sensitivity"),
                _m(m, "specificity"),
                info.get("epochs_run", "n/a"),
                _secs(info.get("train_seconds")),
                _secs(steps.timings.get(key, {}).get("seconds")),
            ]
        )
    body = [
        "HAM10000 (7 classes, split grouped by lesion, seed 0), image only. Same protocol for every pretrained "
        "backbone: frozen ImageNet features computed once (1 view), then the head (`finetune_blocks=0`); the "
        "studies' other backbones (MobileNet/V2, EfficientNetB5, VGG16, ResNet50V2/152V2, DenseNet201, Xception) "
        "have no offline weights here. Sensitivity/specificity: the malignant group (mel + bcc + akiec) at the "
        "validation-chosen Youden threshold. The study's own 10-class set is not on this machine.",
        "",
        _table(
            [
                "backbone",
                "input px",
                "balanced acc. [95% CI]",
                "accuracy",
                "macro AUC",
                "macro F1",
                "malignant sens.",
                "malignant spec.",
                "epochs run",
                "train time",
                "wall (train command)",
            ],
            rows,
        ),
        "",
        _paired(cmp),
        "",
        "Commands:",
        "",
        steps.commands([k for *_, k in runs] + [f"{k}_eval" for *_, k in evals] + ["bb_compare"]),
    ]
    return "\n".join(body)


def study_ham_ablation(ctx: argparse.Namespace, steps: Steps, data: Data) -> str:
    work = steps.work / "ham_ablation"
    smoke = _sets("train.epochs=1", "train.cache_dir=" + str(steps.work / "cache")) if ctx.smoke else []
    meta = data.ham_meta()
    scratch = _scratch_sets(ctx)
    stages = [
        (
            "A. image only: residual CNN from scratch, no augmentation",
            "a_image",
            _sets("name=ham_a_image", "model.metadata=[]", "train.augment=none"),
        ),
        (
            "B. + metadata (age, sex, site: late fusion)",
            "b_meta",
            _sets("name=ham_b_meta", f"model.metadata={meta}", "train.augment=none"),
        ),
        (
            "C. + augmentation (lesion-safe)",
            "c_aug",
            _sets("name=ham_c_aug", f"model.metadata={meta}", "train.augment=lesion_safe"),
        ),
    ]
    key, args, out = _scratch_image_only(ctx, steps, data)
    steps.train(key, args, out)
    runs = [("A. image only: residual CNN from scratch, no augmentation", out, key)]
    for label, name, sets in stages[1:]:
        out = work / name
        steps.train(f"ham_{name}", [*_ham_base(data), *scratch, *sets, *smoke], out)
        runs.append((label, out, f"ham_{name}"))
    tl = Path(ctx.ham_run).resolve() if ctx.ham_run else work / "d_transfer"
    if not (tl / "run.json").is_file():
        if ctx.ham_run:
            raise SystemExit(f"--ham-run {ctx.ham_run}: no run.json there; train it or leave --ham-run out")
        size = _sets("model.input_size=64") if ctx.smoke else []
        tl_sets = _sets(
            "name=ham_d_transfer",
            f"model.metadata={meta}",
            "train.strategy=cached",
            "train.finetune_blocks=0",
        )
        steps.train("ham_d_transfer", [*_ham_base(data), *tl_sets, *size, *smoke], tl)
    blocks = _run_info(tl).get("finetune_blocks")
    blocks = (
        blocks
        if blocks is not None
        else (_json_yaml(tl / "config.yaml").get("train") or {}).get("finetune_blocks")
    )
    runs.append(
        (
            f"D. + transfer learning (EfficientNet-Lite0 + metadata, cached, {blocks} top blocks trained)",
            tl,
            "ham_d_transfer",
        )
    )

    tune = work / "random_search"
    trials = 2 if ctx.smoke else ctx.trials
    tune_sets = _sets(
        "name=ham_search",
        f"model.metadata={meta}",
        "train.strategy=cached",
        "train.finetune_blocks=0",
        "train.views=1",
        f"search_space={HAM_SEARCH_SPACE}",
    )
    size = _sets("model.input_size=64") if ctx.smoke else []
    steps.run(
        "ham_tune",
        [
            "tune",
            *_ham_base(data),
            *tune_sets,
            *size,
            *smoke,
            "--sampler",
            "random",
            "--trials",
            trials,
            "--out",
            tune,
            "--quiet",
        ],
        tune / "results.csv",
    )
    import pandas as pd

    results = pd.read_csv(tune / "results.csv")
    done = results[results["state"] == "complete"]
    monitor = next(c for c in results.columns if c.startswith("val_"))
    if not done.empty:
        best_dir = Path(str(done.iloc[0]["run_dir"]))
        runs.append(
            (
                f"E. random search: best of {len(done)} trials by {monitor} (head only, 1 view)",
                best_dir,
                "ham_tune",
            )
        )
    evals = [
        (
            lbl,
            run,
            steps.evaluate(
                f"{key}_eval" if key != "ham_tune" else "ham_tune_best_eval",
                run,
                work / f"eval_{run.name}",
                ctx.bootstrap,
            ),
            key,
        )
        for lbl, run, key in runs
    ]
    cmp = steps.compare("ham_compare", [e for _, _, e, _ in evals], work / "compare", ctx.bootstrap)
    rows = []
    for label, run, ev, key in evals:
        m = _json(ev / "metrics.json")
        info = _run_info(run)
        rows.append(
            [
                label,
                _m(m, "balanced_accuracy"),
                _m(m, "accuracy"),
                _m(m, "macro_auc"),
                _m(m, "macro_f1"),
                _m(m, "sensitivity"),
                _m(m, "specificity"),
                info.get("epochs_run", "n/a"),
                _secs(info.get("train_seconds")),
                _secs(steps.timings.get(key, {}).get("seconds")) if key in steps.timings else "reused",
            ]
        )
    params = [
        c for c in results.columns if c not in ("trial", "state", monitor, "epochs", "seconds", "run_dir")
    ]
    search_rows = [
        [
            int(r["trial"]),
            r["state"],
            _num(r[monitor]),
            *(_num(r[p], 4) if isinstance(r[p], float) else r[p] for p in params),
            _secs(r["seconds"]),
        ]
        for _, r in results.iterrows()
    ]
    body = [
        f"HAM10000 (7 classes, split grouped by lesion, seed 0; test images never tuned on). Stages A–C: "
        f"`resnet_small` from scratch at {_scratch_label(runs[0][1])}; D: "
        "`configs/ham10000_fusion.yaml`; E: `medclf tune --sampler random` over lr, label smoothing, class-weight "
        "power and dropout (head only from cached features), its best trial (by validation) evaluated once on "
        "test. Sensitivity/specificity: the malignant group (mel + bcc + akiec) at the validation-chosen Youden "
        "threshold.",
        "",
        _table(
            [
                "stage",
                "balanced acc. [95% CI]",
                "accuracy",
                "macro AUC",
                "macro F1",
                "malignant sens.",
                "malignant spec.",
                "epochs run",
                "train time",
                "wall",
            ],
            rows,
        ),
        "",
        _paired(cmp),
        "",
        f"Random search ({len(results)} trials, sorted by validation {monitor}; the wall time of the whole "
        f"search: {_secs(steps.timings.get('ham_tune', {}).get('seconds'))}):",
        "",
        _table(["trial", "state", monitor, *params, "seconds"], search_rows),
        "",
        "Commands:",
        "",
        steps.commands(
            [k for *_, k in runs[:4]]
            + ["ham_tune"]
            + [(f"{k}_eval" if k != "ham_tune" else "ham_tune_best_eval") for *_, k in evals]
            + ["ham_compare"]
        ),
    ]
    if ctx.ham_run:
        body += ["", f"Stage D was reused from `{ctx.ham_run}` (`--ham-run`)."]
    return "\n".join(body)


def _json_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _scratch_label(run: Path) -> str:
    cfg = _json_yaml(run / "config.yaml")
    return f"{(cfg.get('model') or {}).get('input_size')} px, {(cfg.get('train') or {}).get('epochs')} epochs"


def _scaled(epochs: int, scale: float) -> int:
    return max(1, math.floor(epochs * scale + 0.5))  # half up: 25 x 0.1 -> 3 (round() would give 2)


def _ft_label(run: Path) -> str:
    cfg = _json_yaml(run / "config.yaml")
    m, t = cfg.get("model") or {}, cfg.get("train") or {}
    head, epochs = int(t.get("head_epochs") or 0), int(t.get("epochs") or 0)  # epochs counts the head's
    return (
        f"{m.get('input_size')} px, {head} head + {epochs - head} epochs, "
        f"top {t.get('finetune_blocks')} blocks"
    )


RUNNERS = {
    "mpox": study_mpox,
    "skin_bm": study_skin_bm,
    "cxr3": study_cxr3,
    "backbones": study_backbones,
    "ham_ablation": study_ham_ablation,
}


# ----------------------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("study", choices=(*STUDIES, "all"))
    p.add_argument("--work", type=Path, help="output folder (default runs/studies; smoke: a temp folder)")
    p.add_argument("--doc", type=Path, help="page to write (default docs/studies.md; smoke: a temp page)")
    p.add_argument("--smoke", action="store_true", help="tiny SYNTHETIC data, 1-2 epochs: checks the script")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--skin-run", help="reuse this trained configs/skin_bm.yaml run (e.g. runs/skin_bm)")
    p.add_argument("--cxr-run", help="reuse this trained configs/cxr_pneumonia3.yaml run")
    p.add_argument("--ham-run", help="reuse this trained configs/ham10000_fusion.yaml run as stage D")
    p.add_argument(
        "--quick-recipes",
        action="store_true",
        help="when a recipe run is not reused, train it head only (cached, finetune_blocks=0, views=1)",
    )
    p.add_argument("--mpox-n", type=int, default=400, help="synthetic MSLD-layout images (default 400)")
    p.add_argument("--ft-input-size", type=int, default=160, help="skin_bm finetune input px (default 160)")
    p.add_argument(
        "--ft-head-epochs", type=int, default=2, help="skin_bm finetune phase 1 epochs (default 2)"
    )
    p.add_argument("--ft-epochs", type=int, default=4, help="skin_bm finetune phase 2 epochs (default 4)")
    p.add_argument("--ft-blocks", type=int, default=2, help="skin_bm finetune top blocks (default 2)")
    p.add_argument(
        "--epoch-scale", type=float, default=0.1, help="cxr3: epochs = 25/50/100 x this (default 0.1)"
    )
    p.add_argument("--scratch-size", type=int, default=48, help="resnet_small input px (default 48)")
    p.add_argument("--scratch-epochs", type=int, default=4, help="resnet_small epochs (default 4)")
    p.add_argument("--trials", type=int, default=8, help="ham_ablation random-search trials (default 8)")
    args = p.parse_args(argv)
    if args.smoke:
        args.work = args.work or Path(tempfile.gettempdir()) / "medclf-studies-smoke"
        args.doc = args.doc or Path(tempfile.gettempdir()) / "medclf-studies-smoke.md"
        args.bootstrap = min(args.bootstrap, 200)
        args.skin_run = args.cxr_run = args.ham_run = None  # real runs never mix with synthetic data
    args.work = (args.work or Path(__file__).resolve().parents[1] / "runs" / "studies").resolve()
    args.doc = (args.doc or DOC).resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from _results import write_section

    steps = Steps(args.work)
    data = Data(steps, args.smoke)
    todo = STUDIES if args.study == "all" else (args.study,)
    t0 = time.perf_counter()
    for name in todo:
        t = time.perf_counter()
        print(f"== {name} ==", flush=True)
        body = RUNNERS[name](args, steps, data)
        if args.smoke:
            body = (
                "**SMOKE RUN on tiny SYNTHETIC data: these numbers check the script, nothing else.**\n\n"
                + body
            )
        write_section(f"study_{name}", body, doc=args.doc, header=HEADER)
        print(f"== {name}: {time.perf_counter() - t:.0f} s ==", flush=True)
    print(f"all done in {time.perf_counter() - t0:.0f} s; outputs in {args.work}; page {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
