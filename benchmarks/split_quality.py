"""How representative medclf's grouped splits are, against scikit-learn's StratifiedGroupKFold (docs/data.md).

    .venv/bin/python benchmarks/split_quality.py --seeds 20

For each real data set (../shared/datasets, or $MEDCLF_SHARED_DATASETS) and seed, a 70/15/15 split by
`medclf.data.make_split` and by scikit-learn (`StratifiedGroupKFold` cut into 20 folds, 14/3/3 to
train/val/test, the usual way to get unequal sizes from it), and a 5-fold split by each. For every val/test
split or fold it measures how far it is from the whole data set: the largest relative gap in a class's share,
the relative gap in images per group and in the image-weighted mean group size (how much of the split sits in
large groups), and for HAM10000 the gap in the share of women. The table gives the worst case over seeds
and parts. Splitting only: no model is trained.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("MEDCLF_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))
SPECS = {
    "HAM10000 (by lesion)": "ham10000.yaml",
    "chest X-ray (by patient)": "cxr_pneumonia3.yaml",
    "skin_bm (one image per group)": "skin_bm.yaml",
}
DOC = ROOT / "docs" / "benchmarks-splits.md"
HEADER = """# Split quality

Measured by `benchmarks/split_quality.py`. A validation or test split that does not look like the data a model
will meet makes every figure measured on it biased. Each row is the worst val/test split (or fold) over all
seeds: the largest gap between it and the whole data set, relative to the whole's value. "Mean group size" is
image-weighted (the size of the group an average image belongs to), so it shows whether large groups reach
val/test. Lower is better; 0 means the split looks exactly like the whole.

How to read it: scikit-learn fills each fold class by class to the last image, so its class shares are the
closest; it does not look at metadata or, for unequal splits, at group sizes. medclf gives up a little class
precision (on HAM10000's rarest class a relative gap of 4-6% is about one image) for metadata as balanced as the
classes and, for a 70/15/15 split, val/test splits that hold their share of large groups.
"""


def records(spec_name: str) -> pd.DataFrame:
    from medclf.data import load_dataset
    from medclf.data.dataset import resolve_spec
    from medclf.data.spec import DatasetSpec

    spec = DatasetSpec.from_yaml(ROOT / "configs" / "datasets" / spec_name)
    name = Path(str(spec.root)).name
    recs = load_dataset(resolve_spec(spec.with_root(DATASETS / name)), verify="none").records
    return recs.drop(columns=[c for c in ("split",) if c in recs.columns]).reset_index(drop=True)


def sklearn_folds(recs: pd.DataFrame, k: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedGroupKFold

    fold = np.empty(len(recs), dtype=int)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for i, (_, held) in enumerate(cv.split(np.zeros(len(recs)), recs["label"], recs["group"])):
            fold[held] = i
    return fold


def sklearn_split(recs: pd.DataFrame, seed: int) -> np.ndarray:
    fold = sklearn_folds(recs, 20, seed)
    role = np.array(["train"] * 14 + ["val"] * 3 + ["test"] * 3, dtype=object)
    return role[np.random.default_rng(seed).permutation(20)][fold]


def gaps(recs: pd.DataFrame, part: np.ndarray) -> dict[str, float]:
    whole_share = recs["label"].value_counts(normalize=True)
    size = recs.groupby("group")["path"].transform("size")
    sub = recs[part]
    share = sub["label"].value_counts(normalize=True).reindex(whole_share.index, fill_value=0)
    out = {
        "class share": float(((share - whole_share).abs() / whole_share).max()),
        "images per group": abs(
            len(sub) / sub["group"].nunique() / (len(recs) / recs["group"].nunique()) - 1
        ),
        "mean group size": abs(size[part].mean() / size.mean() - 1),
    }
    if "sex" in recs.columns:
        women = (recs["sex"] == "female").mean()
        out["share of women"] = abs((sub["sex"] == "female").mean() / women - 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--doc", type=Path, default=DOC, help="page to write its table into")
    args = ap.parse_args(argv)
    from medclf.data import make_folds, make_split

    if not DATASETS.is_dir():
        print(f"no data sets at {DATASETS}; set MEDCLF_SHARED_DATASETS")
        return 2
    rows = []
    for title, spec_name in SPECS.items():
        recs = records(spec_name)
        worst: dict[tuple[str, str], dict[str, float]] = {}
        for seed in range(args.seeds):
            parts = {
                ("medclf", "70/15/15"): make_split(recs, 0.15, 0.15, seed=seed)["split"].to_numpy(),
                ("scikit-learn", "70/15/15"): sklearn_split(recs, seed),
                ("medclf", "5 folds"): make_folds(recs, 5, seed=seed)["fold"].to_numpy(),
                ("scikit-learn", "5 folds"): sklearn_folds(recs, 5, seed),
            }
            for key, assign in parts.items():
                held = ("val", "test") if key[1] == "70/15/15" else range(5)
                for h in held:
                    for metric, v in gaps(recs, assign == h).items():
                        w = worst.setdefault(key, {})
                        w[metric] = max(w.get(metric, 0.0), v)
        for (who, kind), w in worst.items():
            rows.append(
                {"data set": title, "split": kind, "splitter": who, **{k: f"{v:.1%}" for k, v in w.items()}}
            )
        print(title, "done")
    table = pd.DataFrame(rows).fillna("")
    body = f"Worst case over {args.seeds} seeds and every val/test split or held-out fold.\n\n"
    body += markdown_table(list(table.columns), table.to_numpy().tolist())
    print(body)
    write_section("split_quality", body, doc=args.doc, header=HEADER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
