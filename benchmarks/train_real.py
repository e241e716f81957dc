"""Accuracy of the `cached` strategy on the real datasets, and what each lever adds (docs/benchmarks-training.md).

    .venv/bin/python benchmarks/train_real.py skin_bm            # every lever, one table
    .venv/bin/python benchmarks/train_real.py ham10000 cxr3
    .venv/bin/python benchmarks/train_real.py skin_bm --extract-only   # only fill the feature cache

Reads ``../shared/datasets`` (or $MEDCLF_SHARED_DATASETS); features are cached in $MEDCLF_CACHE_DIR (default
/tmp/medclf-cache here). Splits are medclf's (HAM10000 by lesion_id, chest X-ray by patient; stratified by class and group size),
70/15/15 with seed 0; every choice is made on validation and the test split is only scored.
Prints machine, date, command, wall time and peak RSS with every result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("MEDCLF_CACHE_DIR", "/tmp/medclf-cache")

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("MEDCLF_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))


# ------------------------------------------------------------------------------------------- data and splits


def load_records(name: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(records with path,label,group[,meta...], classes, metadata columns) for one real dataset."""
    rows = []
    meta_cols: list[str] = []
    if name == "skin_bm":
        for label in ("benign", "malignant"):
            for p in sorted((DATASETS / "skin_bm" / "train" / label).glob("*.jpg")):
                rows.append({"path": str(p), "label": label, "group": f"{label}/{p.stem}"})
    elif name == "ham10000":
        meta = pd.read_csv(DATASETS / "ham10000" / "HAM10000_metadata.csv")
        for r in meta.itertuples():
            p = DATASETS / "ham10000" / "images" / f"{r.image_id}.jpg"
            if p.is_file():
                rows.append(
                    {
                        "path": str(p),
                        "label": r.dx,
                        "group": r.lesion_id,
                        "age": r.age,
                        "sex": r.sex,
                        "site": r.localization,
                    }
                )
        meta_cols = ["age", "sex", "site"]
    elif name == "cxr3":
        for folder in ("NORMAL", "PNEUMONIA"):
            for p in sorted((DATASETS / "cxr_pneumonia" / "train" / folder).glob("*.jpeg")):
                m = re.match(r"(person\d+)_(bacteria|virus)", p.name)
                label = (
                    "normal"
                    if folder == "NORMAL"
                    else ("bacterial" if m and m.group(2) == "bacteria" else "viral")
                )
                group = m.group(1) if m else re.sub(r"-\d+$", "", p.stem)
                rows.append({"path": str(p), "label": label, "group": group})
    else:
        raise SystemExit(f"unknown dataset {name}: skin_bm, ham10000, cxr3")
    df = pd.DataFrame(rows)
    classes = sorted(df.label.unique())
    if name == "cxr3":
        classes = ["normal", "bacterial", "viral"]
    return df, classes, meta_cols


def grouped_split(df: pd.DataFrame, seed: int = 0, val: float = 0.15, test: float = 0.15) -> pd.Series:
    """medclf's grouped, stratified 70/15/15 split (`medclf.data.make_split`, as the recipes use)."""
    from medclf.data import make_split

    return make_split(df, val=val, test=test, seed=seed)["split"]


# ------------------------------------------------------------------------------------------- features

# per dataset: augmentation policy of the training views, number of augmented views, test-time flips
PLANS = {
    "skin_bm": {"augment": "lesion_safe", "aug_views": 4, "tta": ["hflip", "vflip"]},
    "ham10000": {"augment": "lesion_safe", "aug_views": 3, "tta": ["hflip"]},
    "cxr3": {"augment": "standard", "aug_views": 1, "tta": ["hflip"]},
}
CUT = (
    2  # cache the input of the last 2 blocks: pooled features, and fine-tuning of 1 or 2 blocks, come from it
)
MODEL = "efficientnet_lite0"
MONITOR = "val_auc"  # --monitor


def make_cfg(name: str, **train: object):
    """The recipe of one experiment: the library's defaults plus the overrides given."""
    from medclf.config import load_config

    sets = [f"model.name={MODEL}", "train.epochs=30", "train.patience=6", "train.label_smoothing=0.1"]
    sets += [f"train.monitor={MONITOR}"]
    sets += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, sets)


def new_model(num_classes: int, num_meta: int = 0, seed: int = 0):
    from medclf.models import create_model

    torch.manual_seed(seed)
    return create_model(MODEL, num_classes, pretrained=True, drop_rate=0.2, num_meta=num_meta)


def extract(name: str, df: pd.DataFrame, split: pd.Series):
    """Feature maps (input of the last CUT blocks) per view: {"train": {view: arr}, "val": ..., "test": ...}."""
    from medclf.models import resolve_preprocessing
    from medclf.train.features import extract_features, split_backbone

    plan = PLANS[name]
    model = new_model(2)
    parts = split_backbone(model, CUT)
    pre = resolve_preprocessing(model)
    out, seconds = {}, 0.0
    for part in ("train", "val", "test"):
        paths = df.path[split == part].tolist()
        views = ["clean", *plan["tta"]]
        if part == "train":
            views += [f"aug{i}" for i in range(1, plan["aug_views"] + 1)]
        fs = extract_features(parts.bottom, paths, pre, views=views, augment=plan["augment"], batch_size=64)
        assert len(fs.kept) == len(paths), fs.bad
        out[part] = fs.views
        seconds += fs.seconds
    return out, seconds


def run_frozen(blocks: torch.nn.Module, maps: dict, bs: int = 256) -> dict:
    """Apply frozen blocks (eval mode) to every cached view: moves the cut point, or pools the features."""
    blocks = blocks.eval()
    out = {}
    with torch.inference_mode():
        for part, views in maps.items():
            out[part] = {}
            for v, x in views.items():
                ys = [blocks(torch.from_numpy(x[i : i + bs]).float()).numpy() for i in range(0, len(x), bs)]
                y = np.concatenate(ys)
                out[part][v] = y.astype(np.float16) if y.ndim == 4 else y
    return out


def test_metrics(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    pred = probs.argmax(1)
    r = {"acc": accuracy_score(y, pred), "bacc": balanced_accuracy_score(y, pred)}
    if len(classes) == 2:
        r["auc"] = roc_auc_score(y, probs[:, 1])
    else:
        r["auc"] = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    return {k: round(float(v), 4) for k, v in r.items()}


def probs_of(trainer, views: dict, names: list[str], meta=None) -> np.ndarray:
    """Softmax averaged over the named views (test-time augmentation when several)."""
    p = [torch.softmax(torch.from_numpy(trainer.logits(views[v], meta)), 1).numpy() for v in names]
    return np.mean(p, axis=0)


def train_head(
    name, feats, y, classes, meta=None, blocks=0, views=("clean",), tta=("clean",), seed=0, **train
):
    """Train one recipe on cached arrays; returns (test metrics, val metrics, seconds, epochs)."""
    from medclf.train.cached import CachedTrainer
    from medclf.train.features import _Pool, split_backbone

    cfg = make_cfg(name, finetune_blocks=blocks, seed=seed, **train)
    num_meta = meta["train"].shape[1] if meta else 0
    model = new_model(len(classes), num_meta, seed)
    top = split_backbone(model, blocks).top if blocks else _Pool()
    if blocks:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in [*top.parameters(), *model.head.parameters()]:
            p.requires_grad_(True)
    trainer = CachedTrainer(model, top, cfg, len(classes))
    t0 = time.perf_counter()
    hist = trainer.fit(
        [feats["train"][v] for v in views],
        y["train"],
        feats["val"]["clean"],
        y["val"],
        meta["train"] if meta else None,
        meta["val"] if meta else None,
    )
    secs = time.perf_counter() - t0
    pv = probs_of(trainer, feats["val"], list(tta), meta["val"] if meta else None)
    pt = probs_of(trainer, feats["test"], list(tta), meta["test"] if meta else None)
    return test_metrics(pt, y["test"], classes), test_metrics(pv, y["val"], classes), secs, len(hist), pt


def logistic_probe(feats, y, classes) -> tuple[dict, dict]:
    """The issue's reference: a linear probe (L2 logistic regression, C chosen on val) on clean features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(feats["train"]["clean"])
    best = None
    for c in (0.01, 0.1, 1.0):
        lr = LogisticRegression(C=c, max_iter=2000).fit(sc.transform(feats["train"]["clean"]), y["train"])
        v = test_metrics(lr.predict_proba(sc.transform(feats["val"]["clean"])), y["val"], classes)
        if best is None or v["auc"] > best[0]["auc"]:
            best = (v, lr)
    pt = best[1].predict_proba(sc.transform(feats["test"]["clean"]))
    return test_metrics(pt, y["test"], classes), best[0]


def run_dataset(
    name: str, extract_only: bool = False, quick: bool = False, skip_blocks: bool = False
) -> list[dict]:
    from medclf.train.features import split_backbone

    df, classes, meta_cols = load_records(name)
    split = grouped_split(df)
    print(
        f"## {name}: {len(df)} images, classes {classes}, split {split.value_counts().to_dict()}", flush=True
    )
    t0 = time.perf_counter()
    maps, seconds = extract(name, df, split)
    print(
        f"   feature extraction {seconds:.0f} s (0 = cached), load {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    if extract_only:
        return []
    index = {c: i for i, c in enumerate(classes)}
    y = {p: df.label[split == p].map(index).to_numpy() for p in ("train", "val", "test")}
    parts = split_backbone(new_model(2), CUT)
    plan = PLANS[name]
    aug = ["clean", *[f"aug{i}" for i in range(1, plan["aug_views"] + 1)]]
    tta = ["clean", *plan["tta"]]
    t0 = time.perf_counter()
    # quick: pooled features of the clean and flipped views only (the head gained nothing from augmented views
    # on skin_bm), augmented views are used by the fine-tuned blocks
    pooled_views = {p: ({v: x for v, x in m.items() if v in tta} if quick else m) for p, m in maps.items()}
    pooled = run_frozen(parts.top, pooled_views)
    print(f"   pooled features from maps: {time.perf_counter() - t0:.0f} s", flush=True)
    meta = None
    if meta_cols:
        from medclf.models import MetadataEncoder

        enc = MetadataEncoder.fit(df[split == "train"], meta_cols)
        meta = {p: enc.transform(df[split == p]).astype(np.float32) for p in ("train", "val", "test")}
    results = []

    def report(lever: str, test: dict, val: dict, secs: float, epochs: int | str = "") -> None:
        results.append({"lever": lever, "test": test, "val": val, "head_seconds": round(secs, 1)})
        print(f"   {lever:<48} test {test}  val {val}  head {secs:.0f}s {epochs} ep", flush=True)

    t0 = time.perf_counter()
    if MONITOR == "val_auc":  # the probe does not depend on the monitor: run it once
        report("linear probe (logreg, clean)", *logistic_probe(pooled, y, classes), time.perf_counter() - t0)
    if quick:
        r = train_head(name, pooled, y, classes, tta=tta)
        report(f"head, 1 view + TTA {'/'.join(tta[1:])}", *r[:4])
    else:
        r = train_head(name, pooled, y, classes)
        report("head, 1 view", *r[:4])
        r = train_head(name, pooled, y, classes, views=aug)
        report(f"head, {len(aug)} views", *r[:4])
        r = train_head(name, pooled, y, classes, views=aug, tta=tta)
        report(f"head, {len(aug)} views + TTA {'/'.join(tta[1:])}", *r[:4])
    if meta is not None:
        r = train_head(name, pooled, y, classes, meta=meta, tta=tta)
        report(f"fusion head (+{','.join(meta_cols)}), 1 view + TTA", *r[:4])
    if skip_blocks:
        return results
    t0 = time.perf_counter()
    cut1 = run_frozen(parts.top.blocks[0], maps)  # maps at the input of the last block
    print(f"   maps moved to the last block: {time.perf_counter() - t0:.0f} s", flush=True)
    for blocks, arrays in ((1, cut1),) if quick else ((1, cut1), (2, maps)):
        r = train_head(
            name,
            arrays,
            y,
            classes,
            meta=meta,
            blocks=blocks,
            views=aug,
            tta=tta,
            epochs=8 if quick else 12,
            patience=3 if quick else 4,
            finetune_lr_scale=0.1,
        )
        report(f"+ last {blocks} block(s) from cached maps, {len(aug)} views + TTA", *r[:4])
    return results


# ------------------------------------------------------------------------------------------- reporting


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(load avg {load[0]:.1f}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def header() -> str:
    return (
        f"# {dt.datetime.now().isoformat(timespec='seconds')} | {machine()}\n"
        f"# command: .venv/bin/python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+", choices=["skin_bm", "ham10000", "cxr3"])
    ap.add_argument("--extract-only", action="store_true")
    ap.add_argument(
        "--monitor", default="val_auc", help="early-stopping metric of the heads (val_auc, val_bacc, ...)"
    )
    ap.add_argument("--skip-blocks", action="store_true", help="no fine-tuning of blocks (the slow lever)")
    ap.add_argument(
        "--quick", action="store_true", help="only the decisive levers (probe, head+TTA, fusion, 1 block)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="append JSON lines of results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    global MONITOR
    MONITOR = args.monitor
    print(header(), flush=True)
    for name in args.datasets:
        t0 = time.perf_counter()
        results = run_dataset(
            name, extract_only=args.extract_only, quick=args.quick, skip_blocks=args.skip_blocks
        )
        wall = time.perf_counter() - t0
        print(f"## {name}: wall {wall:.0f} s, peak RSS {peak_rss_gb():.2f} GB", flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                for r in results:
                    fh.write(json.dumps({"dataset": name, **r}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
