"""Splits are data: stratified by label, grouped by patient/lesion, deterministic by seed, written as CSV.

`make_split` assigns train/val/test and `make_folds` fold 0..K-1, each split or fold with its share of every class,
of every group size and of the metadata (`_assign_groups`).
Splits the data already ships (split folders, MSLD pre-made folds) are respected, never re-split.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from medclf._atomic import atomic_path
from medclf.data.spec import compile_capture_regex
from medclf.errors import ConfigError, DataError

__all__ = [
    "MIN_EVAL_IMAGES",
    "SPLITS",
    "apply_group_rule",
    "group_leaks",
    "make_folds",
    "make_split",
    "read_split_csv",
    "select_fold",
    "small_split_warnings",
    "split_makeup_warnings",
    "summarize_split",
    "write_split_csv",
]

SPLITS = ("train", "val", "test")
_BASE_COLUMNS = ("path", "label", "group", "split", "fold", "augmented")


def apply_group_rule(records: pd.DataFrame, group_by: str | None) -> pd.DataFrame:
    """Recompute `group` from a records column or 'regex:PATTERN' on the file name (first capture group;
    files it does not match keep their current group).

    The rule `group` already follows is in `records.attrs["group_rule"]` (`load_dataset` puts it there): naming
    it again changes nothing. That is how a CSV's group column works although it is not kept under its own name
    (HAM10000's lesion_id becomes `group`). The result's `attrs["group_rule"]` is the rule applied."""
    if not group_by:
        return records
    current = records.attrs.get("group_rule")
    if group_by == current:
        return records
    out = records.copy()
    out.attrs["group_rule"] = group_by
    if group_by.startswith("regex:"):
        rx = compile_capture_regex(group_by[len("regex:") :], "--group-by")
        names = out["path"].map(lambda p: os.path.basename(str(p)))
        found = names.map(lambda n: m.group(1) if (m := rx.search(n)) else None)
        out["group"] = [f if f else g for f, g in zip(found, out["group"], strict=True)]
        return out
    if group_by not in out.columns:
        from_column = isinstance(current, str) and not current.startswith("regex:")
        options = [f"{current!r} (the column `group` comes from)"] if from_column else []
        metadata = [c for c in out.columns if c not in _BASE_COLUMNS]
        if metadata:
            options.append(f"a metadata column ({', '.join(metadata)})")
        options.append("'regex:PATTERN' on the file name (first capture group)")
        names = ", ".join(options[:-1]) + " or " + options[-1] if len(options) > 1 else options[-1]
        other = "; any other CSV column can be named in the dataset spec's `group_by:`" if from_column else ""
        raise ConfigError(f"--group-by / data.group_by {group_by!r}: no such column; use {names}{other}")
    values = out[group_by]
    out["group"] = [str(v) if not _missing(v) else g for v, g in zip(values, out["group"], strict=True)]
    return out


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or v == ""


def _metadata_key(pool: pd.DataFrame, first: pd.DataFrame) -> list[np.ndarray]:
    """Sort keys from the metadata columns (each group's first row): categorical values as they are, numeric
    ones in quintiles, so that the walk in `_assign_groups` also spreads age, sex or body site."""
    keys = []
    for col in pool.columns:
        if col in _BASE_COLUMNS:
            continue
        values = first[col]
        if pd.api.types.is_numeric_dtype(values):
            if values.notna().sum() < 5:
                continue
            keys.append(pd.qcut(values.rank(method="first"), 5, labels=False).fillna(-1).to_numpy())
        else:
            keys.append(values.fillna("").astype(str).to_numpy())
    return keys


def _assign_groups(pool: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Group -> split name, for any split sizes; no group lands in two splits.

    Systematic sampling over a sorted list: groups are ordered by their majority class, then size bin (largest
    first: 1, 2, 3-4, 5-8, ...), then metadata, then size, then at random (`seed`); walking that list, each group
    goes to the split furthest below its share of the images so far of the group's classes. Every split thus
    gets its share of each class, of each group size and of each metadata value. (scikit-learn's
    `StratifiedGroupKFold` makes equal folds only and leaves metadata to chance; `benchmarks/split_quality.py`
    compares the two.)
    """
    names = [s for s, f in fractions.items() if f > 0]
    frac = np.array([fractions[s] for s in names], dtype=np.float64)
    frac = frac / frac.sum()
    groups = pool["group"].astype(str)
    counts = pd.crosstab(groups, pool["label"].astype(str))
    if len(counts) < len(names):
        raise DataError(
            f"only {len(counts)} group(s) for {len(names)} splits; add data, or use fewer splits or folds"
        )
    size = counts.sum(axis=1).to_numpy()
    first = pool.assign(group=groups).drop_duplicates("group").set_index("group").loc[counts.index]
    rng = np.random.default_rng(seed)
    size_bin = np.ceil(np.log2(size)).astype(int)  # 1, 2, 3-4, 5-8, ...
    keys = [
        rng.random(len(size)),
        -size,
        *reversed(_metadata_key(pool, first)),
        -size_bin,
        counts.to_numpy().argmax(axis=1),
    ]
    order = np.lexsort(keys)
    # a running tally per class: each group goes to the split furthest below its share of the images so far of
    # the group's own classes (a patient may hold images of several), so one class's large groups never spill
    # into another's share; a random start per class favours no split by position
    mat = counts.to_numpy(dtype=np.float64)
    filled = rng.random((mat.shape[1], len(names))) * frac * size.max()
    total = filled.sum(axis=1)
    split = np.empty(len(size), dtype=int)
    for gi in order:
        g = mat[gi]
        total += g
        s = int(np.argmax(g @ (total[:, None] * frac[None, :] - filled)))
        filled[:, s] += g
        split[gi] = s
    for s in range(len(names)):  # tiny data: give an empty split the smallest group of the fullest split
        if not (split == s).any():
            donor = np.flatnonzero(split == np.bincount(split, minlength=len(names)).argmax())
            split[donor[np.argmin(size[donor])]] = s
    return dict(zip(counts.index, np.asarray(names, dtype=object)[split], strict=True))


def make_split(
    records: pd.DataFrame, val: float = 0.15, test: float = 0.15, seed: int = 0, group_by: str | None = None
) -> pd.DataFrame:
    """Add a `split` column (train/val/test), stratified by label and grouped by `group`.

    Fractions are of all images (approximately: whole groups move). Rows that already have a `val` or
    `test` split keep it; only the missing parts are carved out of `train` (split folders are respected).
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ConfigError(f"--val {val} --test {test}: each must be in [0, 1) and together below 1")
    if "fold" in records.columns:
        raise DataError(
            "these records carry folds (pre-made or generated); pick one with select_fold(records, k) instead of "
            "making a new split"
        )
    recs = apply_group_rule(records, group_by).copy()
    n = len(recs)
    if n == 0:
        raise DataError("no records to split")
    if "split" in recs.columns and recs["split"].notna().any():
        existing = recs["split"].fillna("train").astype(str)
        bad = sorted(set(existing) - set(SPLITS))
        if bad:
            raise DataError(f"unknown split name {bad[0]!r}; use train, val or test")
        need = {
            "val": val if not (existing == "val").any() else 0.0,
            "test": test if not (existing == "test").any() else 0.0,
        }
        pool_mask = existing == "train"
    else:
        existing = pd.Series("train", index=recs.index)
        need = {"val": val, "test": test}
        pool_mask = pd.Series(True, index=recs.index)
    pool = recs[pool_mask]
    n_pool = len(pool)
    fractions = {"train": 0.0, **{s: f * n / max(n_pool, 1) for s, f in need.items()}}
    if fractions["val"] + fractions["test"] >= 1:
        raise DataError(
            f"the train part ({n_pool} images) is too small to carve val={val} and test={test} of all {n} images "
            "from; lower the fractions"
        )
    fractions["train"] = 1.0 - fractions["val"] - fractions["test"]
    split = existing.copy()
    if fractions["val"] > 0 or fractions["test"] > 0:
        assign = _assign_groups(pool, fractions, seed)
        split[pool_mask] = pool["group"].astype(str).map(assign)
    recs["split"] = split.astype(object)
    return _order_columns(recs)


def make_folds(records: pd.DataFrame, k: int = 5, seed: int = 0, group_by: str | None = None) -> pd.DataFrame:
    """Add a `fold` column 0..k-1 (fold i is held out in round i): grouped, stratified by label, group size and
    metadata, deterministic by `seed`. Records with pre-made folds are returned unchanged."""
    if "fold" in records.columns:
        return records
    if k < 2:
        raise ConfigError(f"--folds {k}: need at least 2 folds")
    recs = apply_group_rule(records, group_by).copy()
    if "split" in recs.columns:
        shipped = set(recs["split"].dropna().astype(str)) - {"train"}
        if shipped:
            raise DataError(
                f"the data ships {'/'.join(sorted(shipped))} split folders; folds would mix them into training. Use "
                "--val/--test (the shipped splits are kept), or point DATA at the train folder only"
            )
        recs = recs.drop(columns=["split"])
    n_groups = recs["group"].nunique()
    if n_groups < k:
        raise DataError(f"only {n_groups} groups for {k} folds; use fewer folds (--folds) or more data")
    assign = _assign_groups(recs, {str(i): 1.0 / k for i in range(k)}, seed)
    fold = recs["group"].astype(str).map(assign).astype(int).to_numpy()
    recs["fold"] = fold
    return _order_columns(recs)


def select_fold(records: pd.DataFrame, fold: int, val: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """The records of one cross-validation round, with a `split` column.

    Pre-made folds: that fold's rows as shipped (train incl. augmented, val, test). Generated folds: fold `fold`
    is `test`, the rest `train`, and `val` (a fraction of all images) is carved from train by group.
    """
    if "fold" not in records.columns:
        raise DataError("records have no folds; make them with make_folds or `medclf data split --folds K`")
    folds = sorted(int(f) for f in records["fold"].unique())
    if fold not in folds:
        raise ConfigError(f"fold {fold} does not exist; folds are {folds}")
    if "split" in records.columns:  # pre-made
        return records[records["fold"] == fold].drop(columns=["fold"]).reset_index(drop=True)
    out = records.drop(columns=["fold"]).copy()
    out["split"] = np.where(records["fold"].to_numpy() == fold, "test", "train").astype(object)
    if val > 0:
        test_frac = float((out["split"] == "test").mean())
        out = make_split(out, val=val, test=test_frac, seed=seed)
    return out.reset_index(drop=True)


def _order_columns(df: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in _BASE_COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def group_leaks(records: pd.DataFrame) -> list[dict[str, object]]:
    """Groups that appear in more than one split (within one fold, for pre-made folds) or in several generated
    folds: [{group, splits, images, fold?}]."""
    leaks: list[dict[str, object]] = []
    if "split" in records.columns:
        by = [c for c in ("fold",) if c in records.columns]
        parts = records.groupby(by) if by else [((None,), records)]
        for key, part in parts:
            sets = part.groupby("group")["split"].agg(lambda s: sorted(set(s.dropna().astype(str))))
            for g, splits in sets.items():
                if len(splits) > 1:
                    item: dict[str, object] = {
                        "group": str(g),
                        "splits": splits,
                        "images": int((part["group"] == g).sum()),
                    }
                    if by:
                        item["fold"] = int(key[0] if isinstance(key, tuple) else key)
                    leaks.append(item)
    elif "fold" in records.columns:
        sets = records.groupby("group")["fold"].agg(lambda s: sorted({int(v) for v in s}))
        for g, folds in sets.items():
            if len(folds) > 1:
                leaks.append({"group": str(g), "folds": folds, "images": int((records["group"] == g).sum())})
    return leaks


def summarize_split(records: pd.DataFrame, classes: list[str] | None = None) -> pd.DataFrame:
    """Per split / fold: images, groups, images per group (mean, max) and images per class."""
    classes = classes or sorted(records["label"].astype(str).unique())
    keys = [c for c in ("fold", "split") if c in records.columns]
    if not keys:
        parts = [("all", records)]
    else:
        recs = records.copy()
        if "split" in keys:
            recs["_order"] = recs["split"].map({s: i for i, s in enumerate(SPLITS)}).fillna(len(SPLITS))
            recs = recs.sort_values([*(["fold"] if "fold" in keys else []), "_order"], kind="stable")
        else:
            recs = recs.sort_values("fold", kind="stable")
        parts = list(recs.groupby(keys, sort=False))
    rows = []
    for key, part in parts:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, object] = dict(zip(keys or ["part"], key, strict=False))
        row["images"] = len(part)
        row["groups"] = part["group"].nunique()
        sizes = part.groupby("group").size()
        row["img/group"] = round(float(sizes.mean()), 2) if len(sizes) else 0.0
        row["max/group"] = int(sizes.max()) if len(sizes) else 0
        counts = part["label"].astype(str).value_counts()
        for c in classes:
            row[c] = int(counts.get(c, 0))
        rows.append(row)
    return pd.DataFrame(rows)


MAKEUP_CLASS_GAP = 0.05
"""A val/test part (or fold) whose share of a class differs from the rest's by more than this is flagged."""
MAKEUP_GROUP_SIZE_GAP = 0.25
"""... and one whose images per group differ by more than this fraction."""


def split_makeup_warnings(records: pd.DataFrame) -> list[str]:
    """Sentences for each val/test split (or generated fold) whose make-up differs from training's: class
    shares more than `MAKEUP_CLASS_GAP` apart, or images per group more than `MAKEUP_GROUP_SIZE_GAP` apart.
    Such a split does not represent the data, so figures measured on it are biased."""
    if "fold" in records.columns and "split" in records.columns:
        return []  # pre-made folds: shipped as they are, rows repeat across folds
    if "split" in records.columns:
        key = records["split"].astype(str)
        parts = [(s, records[key == s], records[key == "train"]) for s in ("val", "test") if (key == s).any()]
        if not (key == "train").any():
            return []
    elif "fold" in records.columns:
        parts = [(f"fold {int(k)}", p, records[records["fold"] != k]) for k, p in records.groupby("fold")]
    else:
        return []
    out = []
    for name, part, ref in parts:
        share = part["label"].astype(str).value_counts(normalize=True)
        ref_share = ref["label"].astype(str).value_counts(normalize=True)
        gap = share.sub(ref_share, fill_value=0).abs()
        if len(gap) and gap.max() > MAKEUP_CLASS_GAP:
            c = gap.idxmax()
            out.append(
                f"{name}: class {c!r} is {share.get(c, 0):.1%} of its images against {ref_share.get(c, 0):.1%} in "
                "training; re-split with `medclf data split` (stratified by class)"
            )
        per_group = len(part) / max(part["group"].nunique(), 1)
        ref_per_group = len(ref) / max(ref["group"].nunique(), 1)
        if abs(per_group / ref_per_group - 1) > MAKEUP_GROUP_SIZE_GAP:
            out.append(
                f"{name}: {per_group:.2f} images per group against {ref_per_group:.2f} in training — its patients "
                "or lesions are not like the others, so its figures are biased; re-split with `medclf data split`"
            )
    return out


MIN_EVAL_IMAGES = 10
"""Fewer images of a class than this in a val or test split (or fold) draws a warning: a proportion from under
ten cases has an interval too wide to read."""


def small_split_warnings(
    records: pd.DataFrame, classes: list[str] | None = None, min_images: int = MIN_EVAL_IMAGES
) -> list[str]:
    """One sentence per (val/test split, class) with fewer than `min_images` images, or none at all.

    Folds are checked one by one (the held-out fold is the test split of its round)."""
    classes = classes or sorted(records["label"].astype(str).unique())
    if "split" in records.columns:
        by = [c for c in ("fold",) if c in records.columns]
        parts = records.groupby(by) if by else [((None,), records)]
        views = []
        for key, part in parts:
            k = key[0] if isinstance(key, tuple) else key
            for s in ("val", "test"):
                sub = part[part["split"].astype(str) == s]
                if len(sub):
                    views.append((s if k is None else f"fold {k} {s}", sub))
    elif "fold" in records.columns:
        views = [(f"fold {int(k)}", part) for k, part in records.groupby("fold")]
    else:
        return []
    out = []
    for where, sub in views:
        counts = sub["label"].astype(str).value_counts()
        for c in classes:
            n = int(counts.get(c, 0))
            if n == 0:
                out.append(
                    f"{where} has no image of class {c!r}: its sensitivity and AUC cannot be measured there; "
                    "add data of that class or use fewer splits/folds"
                )
            elif n < min_images:
                out.append(
                    f"{where} has only {n} image(s) of class {c!r} (under {min_images}): figures for it are "
                    "very uncertain; read their intervals"
                )
    return out


def write_split_csv(records: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write records as a split CSV (`path,label,group,split|fold[,augmented]`, then metadata), atomically."""
    for col in ("path", "label", "group"):
        if col not in records.columns:
            raise DataError(f"records have no {col!r} column; make them with load_dataset")
    if "split" not in records.columns and "fold" not in records.columns:
        raise DataError(
            "records have neither `split` nor `fold`; make one with make_split or make_folds first"
        )
    path = Path(path)
    with atomic_path(path) as tmp:
        _order_columns(records).to_csv(tmp, index=False)
    return path


def read_split_csv(
    path: str | os.PathLike[str], *, check_files: bool = True, check_groups: bool = True
) -> pd.DataFrame:
    """Read a split CSV back and check it: columns, split names, fold numbers, files present, no group in two
    splits. Metadata column types are in `df.attrs["metadata"]` ({column: numeric|categorical})."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"split file {path} does not exist; write one with `medclf data split ... --out {path}`"
        )
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(
            f"{path}: not a readable split CSV ({exc}); write it with `medclf data split`"
        ) from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in ("path", "label", "group") if c not in df.columns]
    if missing or not ({"split", "fold"} & set(df.columns)):
        need = ", ".join(missing) if missing else "split or fold"
        raise DataError(
            f"{path}: missing column(s) {need}; a split CSV has path,label,group and split or fold "
            "(write one with `medclf data split`)"
        )
    out = pd.DataFrame(index=df.index)
    base = path.resolve().parent
    out["path"] = [str(p) if Path(p).is_absolute() else str((base / p).resolve()) for p in df["path"]]
    out["label"] = pd.Series(list(df["label"]), index=out.index, dtype=object)
    out["group"] = pd.Series(list(df["group"]), index=out.index, dtype=object)
    if "split" in df.columns:
        bad = df.index[~df["split"].isin(SPLITS)]
        if len(bad):
            i = bad[0]
            raise DataError(
                f"{path} row {i + 2}: split {df.at[i, 'split']!r} is not train, val or test; fix the cell"
            )
        out["split"] = pd.Series(list(df["split"]), index=out.index, dtype=object)
    if "fold" in df.columns:
        bad = df.index[~df["fold"].str.fullmatch(r"\d+")]
        if len(bad):
            i = bad[0]
            raise DataError(
                f"{path} row {i + 2}: fold {df.at[i, 'fold']!r} is not a number 0..K-1; fix the cell"
            )
        out["fold"] = df["fold"].astype(int)
    if "augmented" in df.columns:
        out["augmented"] = df["augmented"].str.lower().isin(("true", "1", "yes"))
    empty = df.index[(df["path"] == "") | (df["label"] == "")]
    if len(empty):
        raise DataError(f"{path} row {empty[0] + 2}: empty path or label; fix or delete the row")
    metadata: dict[str, str] = {}
    for col in df.columns:
        if col in _BASE_COLUMNS:
            continue
        values = df[col]
        present = values[values != ""]
        if len(present) and present.str.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|nan|NaN").all():
            out[col] = pd.to_numeric(values.replace("", np.nan), errors="coerce").astype("float64")
            metadata[col] = "numeric"
        else:
            out[col] = pd.Series([v if v != "" else None for v in values], index=out.index, dtype=object)
            metadata[col] = "categorical"
    if check_files:
        gone = [p for p in out["path"] if not os.path.exists(p)]
        if gone:
            raise DataError(
                f"{path}: {len(gone)} listed image(s) do not exist, e.g. {gone[0]}; the data moved — regenerate the "
                "split with `medclf data split`, or fix the paths"
            )
    if check_groups:
        leaks = group_leaks(out)
        if leaks:
            first = leaks[0]
            where = first.get("splits") or first.get("folds")
            raise DataError(
                f"{path}: group {first['group']!r} is in more than one split/fold ({where}) — patient leakage "
                f"({len(leaks)} groups); regenerate with `medclf data split --group-by ...`"
            )
    out.attrs["metadata"] = metadata
    return out
