"""Accuracy of the `cached` strategy on the real datasets, and what each lever adds (docs/benchmarks-training.md).

    .venv/bin/python benchmarks/train_real.py skin_bm            # every lever, one table
    .venv/bin/python benchmarks/train_real.py ham10000 cxr3
    .venv/bin/python benchmarks/train_real.py skin_bm --extract-only   # only fill the feature cache

Reads ``../shared/datasets`` (or $MEDCLF_SHARED_DATASETS); features are cached in $MEDCLF_CACHE_DIR (default
/tmp/medclf-cache here). Splits are grouped (HAM10000 by lesion_id, chest X-ray by patient) and stratified,
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

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
                    {"path": str(p), "label": r.dx, "group": r.lesion_id, "age": r.age, "sex": r.sex, "site": r.localization}
                )
        meta_cols = ["age", "sex", "site"]
    elif name == "cxr3":
        for folder in ("NORMAL", "PNEUMONIA"):
            for p in sorted((DATASETS / "cxr_pneumonia" / "train" / folder).glob("*.jpeg")):
                m = re.match(r"(person\d+)_(bacteria|virus)", p.name)
                label = "normal" if folder == "NORMAL" else ("bacterial" if m and m.group(2) == "bacteria" else "viral")
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
    """Stratified, grouped 70/15/15 split (one group never spans two parts)."""
    from sklearn.model_selection import StratifiedGroupKFold

    split = pd.Series("train", index=df.index)
    n_test = round(1 / test)
    sgkf = StratifiedGroupKFold(n_splits=n_test, shuffle=True, random_state=seed)
    _, test_idx = next(sgkf.split(df, df.label, df.group))
    split.iloc[test_idx] = "test"
    rest = df.index[split == "train"]
    sgkf = StratifiedGroupKFold(n_splits=round((1 - test) / val), shuffle=True, random_state=seed + 1)
    _, val_idx = next(sgkf.split(df.loc[rest], df.label[rest], df.group[rest]))
    split.loc[rest[val_idx]] = "val"
    return split


# ------------------------------------------------------------------------------------------- features

# per dataset: augmentation policy of the training views, number of augmented views, test-time flips
PLANS = {
    "skin_bm": {"augment": "lesion_safe", "aug_views": 4, "tta": ["hflip", "vflip"]},
    "ham10000": {"augment": "lesion_safe", "aug_views": 3, "tta": ["hflip"]},
    "cxr3": {"augment": "standard", "aug_views": 3, "tta": ["hflip"]},
}
CUT = 2  # cache the input of the last 2 blocks: pooled features, and fine-tuning of 1 or 2 blocks, come from it


def backbone(name: str = "efficientnet_lite0") -> torch.nn.Module:
    import timm

    from medclf.models.pretrained import load_offline_pretrained

    model = timm.create_model(name, num_classes=0)
    load_offline_pretrained(model, name)
    return model.eval()


def preprocessing(model: torch.nn.Module, size: int | None = None):
    from medclf.data.transforms import Preprocessing

    cfg = model.pretrained_cfg
    return Preprocessing(input_size=size or cfg["input_size"][-1], mean=cfg["mean"], std=cfg["std"])


def extract(name: str, df: pd.DataFrame, split: pd.Series, model_name: str = "efficientnet_lite0", size=None):
    """Feature maps (input of the last CUT blocks) per view: {"train": {view: arr}, "val": ..., "test": ...}."""
    from medclf.train.features import extract_features, split_backbone

    plan = PLANS[name]
    model = backbone(model_name)
    parts = split_backbone(model, CUT)
    pre = preprocessing(model, size)
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
    return model, parts, out, seconds


def run_dataset(name: str, extract_only: bool = False) -> list[dict]:
    df, classes, meta_cols = load_records(name)
    split = grouped_split(df)
    print(f"## {name}: {len(df)} images, classes {classes}, split {split.value_counts().to_dict()}", flush=True)
    model, parts, maps, seconds = extract(name, df, split)
    print(f"   feature extraction {seconds:.0f} s (0 = cached)", flush=True)
    if extract_only:
        return []
    return []


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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="append JSON lines of results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(header(), flush=True)
    for name in args.datasets:
        t0 = time.perf_counter()
        results = run_dataset(name, extract_only=args.extract_only)
        wall = time.perf_counter() - t0
        print(f"## {name}: wall {wall:.0f} s, peak RSS {peak_rss_gb():.2f} GB", flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                for r in results:
                    fh.write(json.dumps({"dataset": name, **r}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
