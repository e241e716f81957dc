"""Accuracy of the `cached` strategy on the real datasets, and what each lever adds (docs/benchmarks-training.md).

    .venv/bin/python benchmarks/train_real.py skin_bm            # every lever, one table
    .venv/bin/python benchmarks/train_real.py ham10000 cxr3
    .venv/bin/python benchmarks/train_real.py skin_bm --extract-only   # only fill the feature cache

Reads ``../shared/datasets`` (or $MEDCLF_SHARED_DATASETS); features are cached in $MEDCLF_CACHE_DIR (default
/tmp/medclf-cache here). Splits are medclf's (HAM10000 by lesion_id, chest X-ray by patient; stratified by class and group size),
70/15/15 with seed 0; every choice is made on validation and the test split is only scored.

Every lever but the linear probe is one ``medclf.train.train`` run (``train.strategy=cached``, the library's one
Lightning loop) on the benchmark's own records and split, into a run folder under ``--runs`` (default: a new
temporary folder). The script first fills the feature cache the runs read (the same frozen bottoms, views and
seed as the engine: the bottom for ``finetune_blocks`` 0, 1 and 2 each has its own cache), so every run's own
feature time is about 0 and is not counted. Scores come from the run's ``val_predictions.csv`` and
``test_predictions.csv`` with ``eval.calibrate=false`` (the model's own softmax, as before); test-time
augmentation is the run's ``eval.tta`` (the complete model on the images; the views' pooled features are
averaged). "head" seconds are the sum of the run's ``history.csv`` ``seconds`` (its training epochs, validation
included; not the model build, the feature cache or the final predictions).
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
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MEDCLF_CACHE_DIR", "/tmp/medclf-cache")

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("MEDCLF_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))
FOLDERS = {"skin_bm": "skin_bm", "ham10000": "ham10000", "cxr3": "cxr_pneumonia"}


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


# ------------------------------------------------------------------------------------------- features and runs

# per dataset: augmentation policy of the training views, number of augmented views, test-time flips
PLANS = {
    "skin_bm": {"augment": "lesion_safe", "aug_views": 4, "tta": ["hflip", "vflip"]},
    "ham10000": {"augment": "lesion_safe", "aug_views": 3, "tta": ["hflip"]},
    "cxr3": {"augment": "standard", "aug_views": 1, "tta": ["hflip"]},
}
MODEL = "efficientnet_lite0"
PRETRAINED = True  # the offline ImageNet weights
MONITOR = "val_auc"  # --monitor
RUNS = Path(tempfile.gettempdir())  # --runs: set in main()


def make_cfg(
    name: str,
    *,
    blocks: int = 0,
    views: int = 1,
    tta: tuple[str, ...] | list[str] = (),
    meta_cols: tuple[str, ...] | list[str] = (),
    seed: int = 0,
    **train: object,
):
    """The recipe of one experiment: the library's defaults plus the overrides given (strategy cached)."""
    from medclf.config import load_config

    sets = [
        f"model.name={MODEL}",
        f"model.pretrained={str(PRETRAINED).lower()}",
        "model.drop_rate=0.2",
        f"model.metadata=[{','.join(meta_cols)}]",
        "train.strategy=cached",
        "train.epochs=30",
        "train.patience=6",
        "train.label_smoothing=0.1",
        f"train.monitor={MONITOR}",
        f"train.augment={PLANS[name]['augment']}",
        f"train.finetune_blocks={blocks}",
        f"train.views={views}",
        f"train.seed={seed}",
        f"eval.tta=[{','.join(tta)}]",
        "eval.calibrate=false",  # scores of the model's own softmax, not temperature-scaled
    ]
    sets += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(None, sets)


def make_dataset(name: str, records: pd.DataFrame, classes: list[str]):
    """A ``medclf.data.Dataset`` over the benchmark's own records (path, label, group, metadata columns)."""
    from medclf.data import Dataset, DatasetSpec

    recs = records.drop(columns=["split"], errors="ignore").reset_index(drop=True)
    spec = DatasetSpec(root=str(DATASETS / FOLDERS[name]), name=name, classes=list(classes))
    return Dataset(records=recs, classes=list(classes), metadata={}, spec=spec, layout="csv")


def view_names(n: int) -> list[str]:
    """The training views of ``train.views=n``, as the engine names them (clean, aug1, ...)."""
    return ["clean", *(f"aug{i}" for i in range(1, n))]


def fill_cache(
    name: str, records: pd.DataFrame, classes: list[str], plan: list[tuple[int, int]], seed: int = 0
) -> tuple[dict, float]:
    """Compute (or read) the features the runs will read, before they start: for each (finetune_blocks, views) in
    ``plan`` the engine's own frozen bottom over the train images (those views) and val images (clean), in the
    default feature cache. Also the clean pooled features of the test images, for the linear probe.

    Returns ({"train"|"val"|"test": {"clean": pooled array}}, seconds computed (0 = all from the cache)).
    """
    from medclf.models import create_model, resolve_preprocessing
    from medclf.train.features import extract_features, find_trunk, split_backbone
    from medclf.train.module import seed_all

    augment = PLANS[name]["augment"]
    paths = {p: records.path[records.split == p].astype(str).tolist() for p in ("train", "val", "test")}
    pooled, seconds = {}, 0.0
    for blocks, views in plan:
        seed_all(seed)  # as the engine does before building the model (matters for untrained weights only)
        model = create_model(MODEL, len(classes), pretrained=PRETRAINED, drop_rate=0.2)
        if blocks > 0 and find_trunk(model) is None:
            blocks = 0  # the engine trains the head only on a model without a cuttable trunk
        bottom = split_backbone(model, blocks).bottom
        pre = resolve_preprocessing(model)
        parts = {"train": view_names(views), "val": ["clean"]}
        if blocks == 0:
            parts["test"] = ["clean"]
        for part, vs in parts.items():
            fs = extract_features(
                bottom, paths[part], pre, views=vs, augment=augment, seed=seed, progress=False
            )
            assert len(fs.kept) == len(paths[part]), fs.bad
            seconds += fs.seconds
            if blocks == 0:
                pooled[part] = {"clean": fs.views["clean"]}
    return pooled, seconds


def test_metrics(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    pred = probs.argmax(1)
    r = {"acc": accuracy_score(y, pred), "bacc": balanced_accuracy_score(y, pred)}
    if len(classes) == 2:
        r["auc"] = roc_auc_score(y, probs[:, 1])
    else:
        r["auc"] = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    return {k: round(float(v), 4) for k, v in r.items()}


def probs_of(run_dir: Path, part: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, label indices) of the run's ``{part}_predictions.csv`` (with the run's eval.tta views)."""
    from medclf.models.inference import prob_columns

    df = pd.read_csv(run_dir / f"{part}_predictions.csv")
    index = {c: i for i, c in enumerate(classes)}
    return df[prob_columns(classes)].to_numpy(np.float64), df["label"].astype(str).map(index).to_numpy()


def train_head(name, data, records, classes, lever, meta_cols=(), blocks=0, views=1, tta=(), seed=0, **train):
    """Train one recipe with ``medclf.train.train`` (strategy cached, features from the cache); returns
    (test metrics, val metrics, epoch seconds from history.csv, epochs, test probabilities)."""
    from medclf.train import train as train_run

    cfg = make_cfg(name, blocks=blocks, views=views, tta=tta, meta_cols=meta_cols, seed=seed, **train)
    slug = re.sub(r"[^a-z0-9]+", "-", lever.lower()).strip("-")
    out, i = RUNS / name / slug, 1
    while out.exists():  # a --runs folder used before keeps its runs
        i += 1
        out = RUNS / name / f"{slug}-{i}"
    run = train_run(cfg, out, dataset=data, split=records, progress=False)
    hist = pd.read_csv(run / "history.csv")
    secs = float(hist["seconds"].sum())
    extracted = json.loads((run / "logs" / "cached.json").read_text())["feature_seconds"]
    if extracted > 0:  # the cache filled beforehand did not match what the engine asked for
        print(
            f"   note: {run} computed features itself for {extracted:.0f} s (not in its head time)",
            flush=True,
        )
    pv, yv = probs_of(run, "val", classes)
    pt, yt = probs_of(run, "test", classes)
    assert len(yt) == int((records.split == "test").sum()), "test images were skipped"
    return test_metrics(pt, yt, classes), test_metrics(pv, yv, classes), secs, len(hist), pt


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
    df, classes, meta_cols = load_records(name)
    records = df.assign(split=grouped_split(df))
    split = records.split
    print(
        f"## {name}: {len(df)} images, classes {classes}, split {split.value_counts().to_dict()}", flush=True
    )
    plan = PLANS[name]
    n_views = 1 + plan["aug_views"]
    tta = list(plan["tta"])
    block_levers = [] if skip_blocks else ([1] if quick else [1, 2])
    # quick: the head trains on the clean view only (it gained nothing from augmented views on skin_bm);
    # augmented views are used by the fine-tuned blocks
    cache_plan = [(0, 1 if quick else n_views), *((b, n_views) for b in block_levers)]
    t0 = time.perf_counter()
    pooled, seconds = fill_cache(name, records, classes, cache_plan)
    print(
        f"   feature extraction {seconds:.0f} s (0 = cached), load {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    if extract_only:
        return []
    index = {c: i for i, c in enumerate(classes)}
    y = {p: df.label[split == p].map(index).to_numpy() for p in ("train", "val", "test")}
    data = make_dataset(name, records, classes)
    results = []

    def report(lever: str, test: dict, val: dict, secs: float, epochs: int | str = "") -> None:
        results.append({"lever": lever, "test": test, "val": val, "head_seconds": round(secs, 1)})
        print(f"   {lever:<48} test {test}  val {val}  head {secs:.0f}s {epochs} ep", flush=True)

    def head(lever: str, **kw) -> None:
        report(lever, *train_head(name, data, records, classes, lever, **kw)[:4])

    t0 = time.perf_counter()
    if MONITOR == "val_auc":  # the probe does not depend on the monitor: run it once
        report("linear probe (logreg, clean)", *logistic_probe(pooled, y, classes), time.perf_counter() - t0)
    if quick:
        head(f"head, 1 view + TTA {'/'.join(tta)}", tta=tta)
    else:
        head("head, 1 view")
        head(f"head, {n_views} views", views=n_views)
        head(f"head, {n_views} views + TTA {'/'.join(tta)}", views=n_views, tta=tta)
    if meta_cols:
        head(f"fusion head (+{','.join(meta_cols)}), 1 view + TTA", meta_cols=meta_cols, tta=tta)
    for blocks in block_levers:
        head(
            f"+ last {blocks} block(s) from cached maps, {n_views} views + TTA",
            meta_cols=meta_cols,
            blocks=blocks,
            views=n_views,
            tta=tta,
            epochs=8 if quick else 12,
            patience=3 if quick else 4,
            finetune_lr_scale=0.1,
        )
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
    ap.add_argument(
        "--runs", type=Path, default=None, help="folder for the run folders (default: a new temporary folder)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    global MONITOR, RUNS
    MONITOR = args.monitor
    RUNS = args.runs or Path(tempfile.mkdtemp(prefix="medclf-train-real-"))
    print(header(), flush=True)
    if not args.extract_only:
        print(f"# run folders under {RUNS}", flush=True)
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
