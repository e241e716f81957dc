"""Peer benchmark: medclf's skin_bm recipe against what a user would otherwise pick, fastai's
``vision_learner(...).fine_tune(...)``, with the same backbone and ImageNet weights on the same split.

Setup, once (fastai is a benchmark-only dependency: its own venv OUTSIDE the repository, never pyproject.toml;
torch stays the project's 2.14.1 build, which pip installs from local disk in about 1.5 min):

    python3 -m venv /work/venv-peer
    /work/venv-peer/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/venv-peer/bin/pip install -e '/work/main[weights]' -r /work/main/benchmarks/requirements-peer.txt

Full benchmark (nothing else on the CPU; roughly 25 min: the recipe runs to its end, fastai stops at the budget):

    /work/venv-peer/bin/python benchmarks/peer_fastai.py --work /tmp/medclf-peer --out runs/peer/results.jsonl

``--fastai-epochs`` (default 1: one frozen + one unfrozen epoch, about what fits 10 minutes of a 2-core CPU)
sets fastai's schedule; the page says whether the budget cut it, so a second run with another value
(``--contenders fastai --fastai-epochs 2 --budget-min 15``) can show what more time buys.

Smoke test (about 40 images per class, 1 epoch each, a 1-minute budget; writes its page into the work folder,
never docs/):

    /work/venv-peer/bin/python benchmarks/peer_fastai.py --smoke

What runs, one after the other (never concurrently), each in a fresh process (its wall time from its launch):

- ``medclf``: ``medclf train configs/skin_bm.yaml`` (the recipe as shipped; the page names its strategy) with a
  cold cache. Per-epoch val AUC from the run's history.csv. Its time axis is NOT from process launch:
  epoch k ends at ``logs/cached.json`` ``feature_seconds`` (a ``cached`` run; 0 otherwise) + the history.csv
  ``seconds`` of epochs 1..k (each
  epoch from its start to the end of its validation), so it leaves out the process start-up (imports, data
  loading, model build, exporting the frozen part) and the gaps between epochs (checkpoints), which fastai's
  axis includes; the page gives, per medclf contender, the process wall time minus the axis' end (that start-up,
  those gaps and the final predictions after the last epoch).
- ``medclf_head``: the same recipe as ``train.strategy=cached`` at 224 px with ``train.finetune_blocks=0
  train.views=1`` (the head only, on cached features: the fast point).
- ``fastai``: ``vision_learner(dls, "efficientnet_lite0", pretrained=False)`` with medclf's offline ImageNet
  weights loaded into the body (fastai's own download would fail offline), fastai's head, splitter,
  freeze/unfreeze and one-cycle ``fine_tune(epochs, freeze_epochs=1)`` defaults, 224 px squash resize and
  medclf's normalisation for this model, ``aug_transforms()``, batch size 32. A callback scores val AUC after
  every epoch (with medclf's own metric function) and stops the fit once the wall budget is spent.

All contenders share medclf's grouped, stratified split (seed 0, val 0.15, test 0.15), made once here with the
engine's own ``resolve_split`` and handed to medclf as ``data.split_csv``; they train on ``train``, are scored on
``val`` after every epoch, and never see ``test``. Torch uses as many threads as the machine has cores
(``--threads``); CUDA is hidden, so this measures the CPU.

Output: JSON lines (``--out``: one object per contender, then a summary) and a section of
docs/benchmarks-peer.md (tables per contender, time to reach val AUC X, speed ratio, best val AUC within the
budget, and a sentence computed from those numbers). Research use only: no output of medclf is a diagnosis.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

DOC = ROOT / "docs" / "benchmarks-peer.md"
HEADER = """# Peer benchmark: medclf vs fastai

medclf's skin_bm recipe against fastai's `vision_learner(...).fine_tune(...)` with the same backbone
(timm `efficientnet_lite0`), the same offline ImageNet weights and the same grouped split, one after the other on
one CPU. Written by `benchmarks/peer_fastai.py` (setup and method in its docstring); every number below comes from
the command under its section. Validation AUC is scored after every epoch with medclf's metric function; the test
split is never used. Research use only: no output of medclf is a diagnosis.
"""
CONTENDERS = ("medclf", "medclf_head", "fastai")
LABELS = {
    "medclf": "medclf (recipe)",  # main() names the recipe's blocks and views, read from --config
    "medclf_head": "medclf head-only (cached, 224 px, finetune_blocks=0, views=1)",
    "fastai": "fastai vision_learner + fine_tune",
}
SHORT = {"medclf": "medclf", "medclf_head": "medclf head-only", "fastai": "fastai"}
FIXED_X = (0.90, 0.93)
GOAL_RATIO = 5.0


# ------------------------------------------------------------------------------------------- the shared split


def make_split(config: Path, work: Path, smoke: bool, per_class: int) -> tuple[Path, dict[str, Any]]:
    """The recipe's split (the engine's own ``resolve_split``) written to ``work/split.csv``; with ``smoke`` a
    per-class sample of it. Returns the CSV and what the contenders need to know about the data."""
    import pandas as pd

    from medclf.config import load_config
    from medclf.data import write_split_csv
    from medclf.train.engine import load_data, resolve_split

    cfg = load_config(config)
    dataset = load_data(cfg)
    split = resolve_split(cfg, dataset)
    if smoke:
        parts = [g.sample(min(per_class, len(g)), random_state=0) for _, g in split.groupby("label")]
        split = pd.concat(parts).sort_index().reset_index(drop=True)
        for part in ("train", "val"):
            if split[split["split"] == part]["label"].nunique() < 2:
                raise SystemExit(f"--smoke: the {part} part lost a class; raise --smoke-per-class")
    path = write_split_csv(split, work / "split.csv")
    counts = {
        f"{s}/{c}": int(n) for (s, c), n in split.groupby(["split", "label"]).size().items() if s != "test"
    }
    return path, {
        "classes": list(dataset.classes),
        "positive_class": cfg.eval.positive_class or list(dataset.classes)[-1],
        "model": cfg.model.name,
        "counts": counts,
        "paths": split["path"].tolist(),
    }


def preprocessing(model_name: str) -> dict[str, Any]:
    """medclf's preprocessing for the pretrained model (the offline weights set mean = std = 0.5)."""
    from medclf.models import create_model, resolve_preprocessing

    return resolve_preprocessing(create_model(model_name, 2, pretrained=True)).to_dict()


def warm_os_cache(paths: list[str]) -> None:
    """Read every image and import the heavy libraries once, so the first contender does not pay for a cold
    OS file cache that later ones get for free."""
    for p in paths:
        Path(p).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of fastai's dependencies, not ours to fix
        import fastai.vision.all  # noqa: F401
    import onnxruntime  # noqa: F401
    import timm  # noqa: F401


# ------------------------------------------------------------------------------------------- contenders


def child_env(threads: int, cache_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        CUDA_VISIBLE_DEVICES="",  # this benchmark is about the CPU
        PYTHONUNBUFFERED="1",
    )
    if cache_dir is not None:
        env["MEDCLF_CACHE_DIR"] = str(cache_dir)
    return env


def launch(cmd: list[str], env: dict[str, str], log: Path, timeout_s: float) -> tuple[float, float, int]:
    """Run ``cmd`` to the end (output to ``log``); returns (launch UNIX time, wall seconds, return code)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd), flush=True)
    with open(log, "w", encoding="utf-8") as fh:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
        wall = time.time() - start
    if rc != 0:
        print(f"  exit {rc}; last lines of {log}:", *log.read_text().splitlines()[-15:], sep="\n    ")
    return start, wall, rc


def run_medclf(name: str, a: argparse.Namespace, split_csv: Path, work: Path) -> dict[str, Any]:
    """``medclf train`` on the recipe with a cold cache; per-epoch (elapsed, val AUC), where elapsed is
    ``feature_seconds`` + the epochs' history.csv ``seconds`` so far (process start-up excluded)."""
    import pandas as pd

    run_dir, cache = work / "runs" / name, work / f"cache-{name}"
    sets = [f"data.split_csv={split_csv}", f"train.cache_dir={cache}"]
    if name == "medclf_head":
        sets += ["train.strategy=cached", "model.input_size=224", "train.finetune_blocks=0", "train.views=1"]
    if a.smoke:
        sets += ["train.epochs=1"]
    cmd = [sys.executable, "-m", "medclf", "train", str(a.config), "--out", str(run_dir), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    _, wall, rc = launch(cmd, child_env(a.threads, cache), work / "logs" / f"{name}.log", a.timeout_min * 60)
    out: dict[str, Any] = {
        "contender": name,
        "command": "medclf " + " ".join(cmd[3:]),
        "wall_s": round(wall, 2),
        "rc": rc,
    }
    if rc != 0:
        return {**out, "epochs": []}
    hist = pd.read_csv(run_dir / "history.csv")
    # elapsed at the end of each epoch: feature extraction (a `cached` run) + the epochs so far (not the process
    # start-up; a `full` run's image decoding falls outside too, in off_axis_seconds)
    cached = run_dir / "logs" / "cached.json"
    feature_seconds = float(json.loads(cached.read_text())["feature_seconds"]) if cached.is_file() else 0.0
    ends = feature_seconds + hist["seconds"].astype(float).cumsum()
    same = pd.read_csv(run_dir / "split.csv")[["path", "split"]].sort_values("path").reset_index(drop=True)
    ours = pd.read_csv(split_csv)[["path", "split"]].sort_values("path").reset_index(drop=True)
    if not same.equals(ours):
        raise SystemExit(f"{run_dir}/split.csv differs from {split_csv}: the contenders must share one split")
    epochs = [
        {
            "epoch": int(r.epoch),
            "phase": "train",
            "elapsed_s": round(float(e), 2),
            "val_auc": float(r.val_auc),
        }
        for r, e in zip(hist.itertuples(), ends, strict=True)
    ]
    info = json.loads((run_dir / "run.json").read_text())
    epoch_seconds = float(hist["seconds"].sum())
    return {
        **out,
        "epochs": epochs,
        "time_axis": "feature_seconds + epoch seconds",
        "feature_seconds": round(feature_seconds, 2),
        "epoch_seconds": round(epoch_seconds, 2),
        "off_axis_seconds": round(wall - feature_seconds - epoch_seconds, 2),
        "train_seconds": info.get("train_seconds"),
        "best_epoch": info.get("best_epoch"),
    }


def run_fastai(a: argparse.Namespace, split_csv: Path, work: Path, data: dict[str, Any]) -> dict[str, Any]:
    """This script's ``--fastai-worker`` mode in a fresh process; per-epoch records come back as JSON lines."""
    records = work / "fastai_epochs.jsonl"
    records.unlink(missing_ok=True)
    pre = preprocessing(data["model"])
    spec = {
        "split_csv": str(split_csv),
        "records": str(records),
        "model": data["model"],
        "positive_class": data["positive_class"],
        "size": pre["input_size"],
        "mean": list(pre["mean"]),
        "std": list(pre["std"]),
        "epochs": 1 if a.smoke else a.fastai_epochs,
        "bs": a.fastai_bs,
        "workers": a.fastai_workers,
        "budget_s": a.budget_min * 60,
        "threads": a.threads,
        "path": str(work / "fastai"),
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--fastai-worker", json.dumps(spec)]
    # the worker learns its launch time from the environment: the budget runs from process start
    env = child_env(a.threads)
    env["PEER_LAUNCH"] = repr(time.time())
    start, wall, rc = launch(cmd, env, work / "logs" / "fastai.log", a.timeout_min * 60)
    rows = [json.loads(line) for line in records.read_text().splitlines()] if records.is_file() else []
    epochs = [
        {
            "epoch": r["epoch"],
            "phase": r["phase"],
            "elapsed_s": round(r["wall_time"] - start, 2),
            "val_auc": r["val_auc"],
        }
        for r in rows
        if r.get("kind") == "epoch"
    ]
    end = next((r for r in rows if r.get("kind") == "end"), {})
    shown = f"fastai vision_learner({data['model']}) fine_tune({spec['epochs']}, freeze_epochs=1), bs {spec['bs']}"
    return {
        "contender": "fastai",
        "command": shown,
        "wall_s": round(wall, 2),
        "rc": rc,
        "epochs": epochs,
        "stopped_by_budget": bool(end.get("stopped_by_budget")),
        "planned_epochs": 1 + spec["epochs"],
        "num_workers": end.get("num_workers"),
        "fastai": end.get("fastai"),
    }


def fastai_worker(spec: dict[str, Any]) -> None:
    """The fastai contender (runs in its own process; ``PEER_LAUNCH`` is the parent's launch time)."""
    launched = float(os.environ.get("PEER_LAUNCH", time.time()))
    import numpy as np
    import pandas as pd
    import torch

    torch.set_num_threads(spec["threads"])
    import fastai
    from fastai.callback.core import Callback, CancelFitException
    from fastai.callback.progress import ProgressCallback
    from fastai.vision.all import (
        CategoryBlock,
        ColReader,
        ColSplitter,
        DataBlock,
        ImageBlock,
        Normalize,
        Resize,
        ResizeMethod,
        aug_transforms,
        set_seed,
        vision_learner,
    )

    from medclf.models.pretrained import load_offline_pretrained
    from medclf.train.module import classification_metrics

    budget_s = float(spec["budget_s"])
    records = Path(spec["records"])

    def over_budget() -> bool:
        return time.time() - launched > budget_s

    def emit(row: dict[str, Any]) -> None:
        with open(records, "a", encoding="utf-8") as fh:  # one line per epoch, kept if the process dies
            fh.write(json.dumps(row) + "\n")

    class EpochAUC(Callback):
        """Val AUC after every epoch (medclf's metric function on fastai's validation logits); stops the fit
        once the wall budget, counted from process launch, is spent."""

        order = 60  # after the Recorder

        def __init__(self, positive: int) -> None:
            self.positive, self.epoch_no, self.stopped = positive, 0, False
            self.phase = "frozen"

        def before_fit(self) -> None:
            # fine_tune calls fit twice: the second (unfrozen) fit must not start once the budget is spent
            if over_budget():
                self.stopped = True
                raise CancelFitException()

        def before_validate(self) -> None:
            self.logits: list[torch.Tensor] = []
            self.ys: list[torch.Tensor] = []

        def _check(self) -> None:
            if self.training and over_budget():  # an epoch that ends past the budget is not worth finishing
                self.stopped = True
                raise CancelFitException()

        # checked within the step too: one unfrozen batch takes many seconds on a 2-core CPU
        def after_pred(self) -> None:
            self._check()

        def after_backward(self) -> None:
            self._check()

        def after_batch(self) -> None:
            if self.training:
                self._check()
            else:
                self.logits.append(self.pred.detach().float().cpu())
                self.ys.append(self.yb[0].detach().cpu())

        def after_epoch(self) -> None:
            m = classification_metrics(
                torch.cat(self.logits).numpy(), torch.cat(self.ys).numpy().astype(np.int64), self.positive
            )
            emit(
                {
                    "kind": "epoch",
                    "epoch": self.epoch_no,
                    "phase": self.phase,
                    "wall_time": time.time(),
                    "val_auc": m["auc"],
                    "val_loss": m["loss"],
                }
            )
            print(f"epoch {self.epoch_no} ({self.phase}): val_auc {m['auc']:.4f}", flush=True)
            self.epoch_no += 1

        def after_fit(self) -> None:
            self.phase = "unfrozen"

    df = pd.read_csv(spec["split_csv"])
    df = df[df["split"].isin(["train", "val"])].reset_index(drop=True)  # the test split stays untouched
    df["is_valid"] = df["split"] == "val"
    set_seed(0)
    size = int(spec["size"])
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_x=ColReader("path"),
        get_y=ColReader("label"),
        splitter=ColSplitter("is_valid"),
        item_tfms=Resize(size, method=ResizeMethod.Squish),  # medclf's preprocessing squashes too
        batch_tfms=[*aug_transforms(), Normalize.from_stats(spec["mean"], spec["std"])],
    )
    kw: dict[str, Any] = {"bs": spec["bs"], "device": torch.device("cpu")}
    if spec["workers"] is not None:
        kw["num_workers"] = spec["workers"]
    dls = block.dataloaders(df, **kw)
    positive = list(dls.vocab).index(spec["positive_class"])
    cb = EpochAUC(positive)
    # pretrained=False: fastai would download the weights; the same offline weights as medclf go in below
    learn = vision_learner(dls, spec["model"], pretrained=False, cbs=[cb], path=spec["path"])
    load_offline_pretrained(learn.model[0].model, spec["model"])
    learn.remove_cb(ProgressCallback)  # progress bars are display, not training
    learn.fine_tune(spec["epochs"], freeze_epochs=1)
    emit(
        {
            "kind": "end",
            "stopped_by_budget": cb.stopped,
            "num_workers": dls.train.fake_l.num_workers,  # fastai keeps the real count on its loader
            "fastai": fastai.__version__,
            "wall_time": time.time(),
        }
    )


# ------------------------------------------------------------------------------------------- results


def best(epochs: list[dict[str, Any]], budget_s: float | None = None) -> float | None:
    vals = [e["val_auc"] for e in epochs if budget_s is None or e["elapsed_s"] <= budget_s]
    return max(vals) if vals else None


def time_to(epochs: list[dict[str, Any]], x: float) -> float | None:
    """Elapsed seconds at the end of the first epoch whose val AUC reaches ``x``."""
    return next((e["elapsed_s"] for e in epochs if e["val_auc"] >= x - 1e-12), None)


def _f(v: float | None, fmt: str = ".4f", none: str = "—") -> str:
    return none if v is None else format(v, fmt)


MEDCLF_VARIANTS = {"medclf": "x_common", "medclf_head": "x_head"}


def summarize(results: dict[str, dict[str, Any]], budget_s: float) -> dict[str, Any]:
    """Best val AUC (overall, within the budget), time to reach X and the speed ratio, per medclf variant
    against fastai: X is the lower of the two best val AUCs (``x_common`` for the recipe, ``x_head`` for the
    head-only variant), plus the fixed X values somebody reached."""
    eps = {k: r["epochs"] for k, r in results.items()}
    bw = {k: best(e, budget_s) for k, e in eps.items()}
    s: dict[str, Any] = {
        "budget_s": budget_s,
        "best_val_auc": {k: best(e) for k, e in eps.items()},
        "best_val_auc_within_budget": bw,
        "versus_fastai": {},
    }
    xs: list[float] = []
    for variant, key in MEDCLF_VARIANTS.items():
        bm, bf = s["best_val_auc"].get(variant), s["best_val_auc"].get("fastai")
        if bm is None or bf is None:
            continue
        x = min(bm, bf)
        tm, tf = time_to(eps[variant], x), time_to(eps["fastai"], x)
        ratio = tf / tm if tm and tf else None
        # "equal or better" at the precision the tables show, within the budget
        auc_ok = (
            None
            if bw[variant] is None or bw["fastai"] is None
            else round(bw[variant], 3) >= round(bw["fastai"], 3)
        )
        s[key] = x
        s["versus_fastai"][variant] = {
            "x": x,
            "medclf_s": tm,
            "fastai_s": tf,
            "speed_ratio": ratio,
            "auc_equal_or_better": auc_ok,
            "goal_met": bool(ratio is not None and ratio >= GOAL_RATIO and auc_ok),
        }
        xs.append(x)
    xs += [x for x in FIXED_X if any(time_to(e, x) is not None for e in eps.values())]
    s["time_to"] = {f"{x:.4f}": {k: time_to(e, x) for k, e in eps.items()} for x in xs}
    return s


def sentence(s: dict[str, Any], budget_min: float) -> str:
    """The conclusion, computed from the numbers (nothing hard-coded)."""
    vs = s["versus_fastai"]
    if not vs:
        return "medclf and fastai did not both finish an epoch, so there is no comparison to state."
    bw = s["best_val_auc_within_budget"]
    parts = []
    for variant, v in vs.items():
        name = SHORT[variant]
        r = v["speed_ratio"]
        speed = f"{r:.1f}× {'faster' if r >= 1 else 'slower'}" if r is not None else "not comparable"
        parts.append(
            f"To reach val AUC {v['x']:.4f} (the lower of its and fastai's best), {name} took "
            f"{_f(v['medclf_s'], '.0f')} s and fastai {_f(v['fastai_s'], '.0f')} s: {name} was {speed}."
        )
    best_in = ", ".join(f"{SHORT[k]} {_f(v)}" for k, v in bw.items())
    parts.append(f"Best val AUC within {budget_min:g} min: {best_in}.")
    goal = "; ".join(
        f"{'the recipe' if k == 'medclf' else 'head-only'}: {'met' if v['goal_met'] else 'not met'}"
        for k, v in vs.items()
    )
    parts.append(
        f"Goal (medclf ≥ {GOAL_RATIO:g}× faster at equal or better val AUC within the budget): {goal}."
    )
    return " ".join(parts)


def markdown(results: dict[str, dict[str, Any]], s: dict[str, Any], a: argparse.Namespace, data: dict) -> str:
    budget_s = s["budget_s"]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(data["counts"].items()))
    lines = [
        f"### skin_bm{' (SMOKE: a small subset, numbers mean nothing)' if a.smoke else ''}",
        "",
        f"Split: medclf's grouped, stratified split of `{a.config}` (seed 0, val 0.15, test 0.15): {counts}. "
        f"Budget {a.budget_min:g} min per contender. Time axes differ: fastai is timed from process launch "
        "(imports and data loading included); medclf's elapsed time at the end of epoch k is its cold feature "
        "extraction (`logs/cached.json` `feature_seconds`) plus the `history.csv` `seconds` of epochs 1..k, so "
        "it leaves out the process start-up (imports, data loading, model build) and the gaps between epochs, "
        "which favours medclf by the 'off the time axis' seconds given per medclf contender below. "
        f"Torch threads {a.threads}; CPU only.",
        "",
        f"**{sentence(s, a.budget_min)}**",
        "",
        "| val AUC reached | " + " | ".join(LABELS[k] for k in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    tags = {f"{v['x']:.4f}": k for k, v in s["versus_fastai"].items()}
    for x, per in s["time_to"].items():
        tag = {"medclf": " (lower best: medclf, fastai)", "medclf_head": " (lower best: head-only, fastai)"}
        tag = tag.get(tags.get(x, ""), "")
        cells = [_f(per[k], ".0f", "not reached") + (" s" if per[k] is not None else "") for k in results]
        lines.append(f"| ≥ {x}{tag} | " + " | ".join(cells) + " |")
    lines.append(
        f"| best within {a.budget_min:g} min | "
        + " | ".join(_f(s["best_val_auc_within_budget"][k]) for k in results)
        + " |"
    )
    lines.append("| best overall | " + " | ".join(_f(s["best_val_auc"][k]) for k in results) + " |")
    lines.append(
        "| process wall time | " + " | ".join(f"{r['wall_s']:.0f} s" for r in results.values()) + " |"
    )
    for k, v in s["versus_fastai"].items():
        if v["speed_ratio"] is not None:
            lines += [
                "",
                f"Speed ratio {LABELS[k]} vs fastai at val AUC {v['x']:.4f}: **{v['speed_ratio']:.2f}×**.",
            ]
    for k, r in results.items():
        lines += ["", f"#### {LABELS[k]}", "", f"`{r['command']}`", ""]
        if k.startswith("medclf") and r["rc"] == 0:
            timing = (
                f"Feature extraction {r['feature_seconds']:.0f} s, training epochs {r['epoch_seconds']:.0f} s "
                f"(sum of history.csv `seconds`), off the time axis {r['off_axis_seconds']:.0f} s (process "
                "wall time minus both: start-up, gaps between epochs, final predictions), "
            )
            lines.append(
                f"{timing}train() {r['train_seconds']} s; best epoch {r['best_epoch']}; the process ran to the "
                "recipe's end (its epochs are not cut at the budget; only those whose elapsed time is within it "
                "count as within)."
            )
        elif k == "fastai" and r["rc"] == 0:
            lines.append(
                f"fastai {r['fastai']}, DataLoader workers {r['num_workers']}; {len(r['epochs'])} of "
                f"{r['planned_epochs']} planned epochs (1 frozen + {r['planned_epochs'] - 1} unfrozen) ran; "
                f"stopped by the budget: {'yes' if r['stopped_by_budget'] else 'no'}."
            )
        else:
            lines.append(f"FAILED (exit {r['rc']}); see its log in the work folder.")
        lines += ["", "| epoch | phase | elapsed (s) | val AUC | within budget |", "|---:|---|---:|---:|---|"]
        for e in r["epochs"]:
            within = "yes" if e["elapsed_s"] <= budget_s else "no"
            lines.append(
                f"| {e['epoch']} | {e['phase']} | {e['elapsed_s']:.1f} | {e['val_auc']:.4f} | {within} |"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def recipe_label(config: Path) -> str:
    """'medclf (recipe: full, 160 px)' or 'medclf (recipe: cached, top 7 blocks, 4 views)', from the recipe the
    medclf contender runs."""
    from medclf.config import load_config

    cfg = load_config(config)
    t = cfg.train
    if t.strategy == "cached":
        return f"medclf (recipe: cached, top {t.finetune_blocks} blocks, {t.views} views)"
    return f"medclf (recipe: {t.strategy}, {cfg.model.input_size} px)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "skin_bm.yaml", help="medclf recipe")
    p.add_argument(
        "--budget-min", type=float, default=None, help="wall budget per contender (default 10; smoke 1)"
    )
    p.add_argument(
        "--fastai-epochs",
        type=int,
        default=1,
        help="fine_tune(EPOCHS, freeze_epochs=1); default 1 (1 frozen + 1 unfrozen epoch: what fits 10 min "
        "on a 2-core CPU; the page says whether the budget cut the schedule)",
    )
    p.add_argument("--fastai-bs", type=int, default=32, help="fastai batch size (default 32)")
    p.add_argument(
        "--fastai-workers", type=int, default=None, help="fastai DataLoader workers (default: fastai's)"
    )
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)"
    )
    p.add_argument(
        "--contenders", default=",".join(CONTENDERS), help=f"comma list of {', '.join(CONTENDERS)}"
    )
    p.add_argument(
        "--work", type=Path, default=None, help="work folder (split, runs, cold caches, logs); default: temp"
    )
    p.add_argument("--out", type=Path, default=None, help="JSON lines (default WORK/results.jsonl)")
    p.add_argument(
        "--doc", type=Path, default=None, help="markdown page (default docs/benchmarks-peer.md; smoke: WORK)"
    )
    p.add_argument(
        "--timeout-min", type=float, default=90, help="kill a contender after this long (default 90)"
    )
    p.add_argument(
        "--reuse",
        type=Path,
        default=None,
        metavar="JSONL",
        help="take the contenders not run now from an earlier run's --out file (same split: seed 0)",
    )
    p.add_argument("--section", default="peer_fastai_skin_bm", help="name of the page section to (re)write")
    p.add_argument("--smoke", action="store_true", help="~40 images per class, 1 epoch each, 1-minute budget")
    p.add_argument("--smoke-per-class", type=int, default=40)
    p.add_argument("--fastai-worker", metavar="SPEC", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.fastai_worker:
        fastai_worker(json.loads(a.fastai_worker))
        return 0
    if a.budget_min is None:
        a.budget_min = 1.0 if a.smoke else 10.0
    LABELS["medclf"] = recipe_label(a.config)
    names = [c.strip() for c in a.contenders.split(",") if c.strip()]
    if unknown := sorted(set(names) - set(CONTENDERS)):
        p.error(f"--contenders: unknown {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    work = a.work or Path(tempfile.mkdtemp(prefix="medclf-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in names:  # a contender's cache must start cold and its run folder fresh
        for leftover in (work / f"cache-{name}", work / "runs" / name):
            if leftover.exists():
                p.error(f"{leftover} exists: use a new --work folder so every contender starts cold")
    out = a.out or work / "results.jsonl"
    doc = a.doc or (work / "benchmarks-peer.md" if a.smoke else DOC)
    print(f"work folder: {work}", flush=True)

    split_csv, data = make_split(a.config, work, a.smoke, a.smoke_per_class)
    warm_os_cache(data["paths"])
    results: dict[str, dict[str, Any]] = {}
    reused: list[str] = []
    if a.reuse:
        for line in a.reuse.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("contender") in CONTENDERS and row["contender"] not in names:
                results[row["contender"]] = row
                reused.append(row["contender"])
    for name in names:
        if name == "fastai":
            results[name] = run_fastai(a, split_csv, work, data)
        else:
            results[name] = run_medclf(name, a, split_csv, work)
        r = results[name]
        print(f"  {name}: {r['wall_s']:.0f} s, best val AUC {_f(best(r['epochs']))}", flush=True)

    s = summarize(results, a.budget_min * 60)
    from medclf._atomic import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        out, "".join(json.dumps(results[k]) + "\n" for k in results) + json.dumps({"summary": s}) + "\n"
    )
    print(f"wrote {out}")
    body = markdown(results, s, a, data)
    if reused:
        body += (
            f"\n\nReused from `{a.reuse}` (measured earlier by this script on the same split): "
            f"{', '.join(SHORT[n] for n in reused)}; run now: {', '.join(SHORT[n] for n in names)}."
        )
    from _results import write_section

    write_section(a.section + ("_smoke" if a.smoke else ""), body, doc=doc, header=HEADER)
    print(body)
    return 0 if all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
