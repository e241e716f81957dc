"""make_split / make_folds: grouped, stratified, deterministic; split CSV round trip and checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _fixtures_data import class_tree, msld_tree
from medclf.data import (
    load_dataset,
    make_folds,
    make_split,
    read_split_csv,
    select_fold,
    summarize_split,
    write_split_csv,
)
from medclf.data.splits import group_leaks
from medclf.errors import ConfigError, DataError


def _records(n_groups: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        label = rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1])
        for i in range(int(rng.integers(1, 5))):
            rows.append({"path": f"/x/g{g}_{i}.jpg", "label": label, "group": f"g{g}", "age": float(g % 50)})
    return pd.DataFrame(rows)


def test_split_is_grouped_stratified_sized_and_deterministic() -> None:
    recs = _records()
    out = make_split(recs, val=0.15, test=0.2, seed=3)
    assert not group_leaks(out)
    frac = out["split"].value_counts(normalize=True)
    assert abs(frac["test"] - 0.2) < 0.03 and abs(frac["val"] - 0.15) < 0.03
    overall = recs["label"].value_counts(normalize=True)
    for _, part in out.groupby("split"):
        share = part["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert (share - overall).abs().max() < 0.06
    again = make_split(recs, val=0.15, test=0.2, seed=3)
    assert again["split"].tolist() == out["split"].tolist()
    other = make_split(recs, val=0.15, test=0.2, seed=4)
    assert other["split"].tolist() != out["split"].tolist()
    assert list(out.columns[:4]) == ["path", "label", "group", "split"]


def test_split_keeps_shipped_splits_and_carves_the_rest() -> None:
    recs = _records()
    recs["split"] = np.where(recs["group"].str[1:].astype(int) % 5 == 0, "test", "train")
    out = make_split(recs, val=0.1, test=0.3, seed=0)
    assert (out.loc[recs["split"] == "test", "split"] == "test").all()  # shipped test untouched
    assert set(out.loc[recs["split"] == "train", "split"]) == {"train", "val"}
    assert abs((out["split"] == "val").mean() - 0.1) < 0.03


def test_split_rejects_bad_fractions_and_fold_records() -> None:
    with pytest.raises(ConfigError, match="together below 1"):
        make_split(_records(), val=0.6, test=0.5)
    with pytest.raises(DataError, match="select_fold"):
        make_split(make_folds(_records(), 3))


def test_group_by_override_column_and_regex() -> None:
    recs = _records(50)
    recs["patient"] = recs["group"].str[:2]
    out = make_split(recs, 0.2, 0.2, group_by="patient")
    assert (out.groupby("patient")["split"].nunique() == 1).all()
    out = make_split(recs, 0.2, 0.2, group_by=r"regex:^(g\d)")
    assert (out.groupby("group")["split"].nunique() == 1).all()
    with pytest.raises(ConfigError, match="no such column"):
        make_split(recs, group_by="nope")


def test_group_by_the_column_group_came_from_changes_nothing() -> None:
    # load_dataset turns a CSV's group column (HAM10000's lesion_id) into `group` and records the rule in attrs
    recs = _records(60)
    recs.attrs["group_rule"] = "lesion_id"
    pd.testing.assert_frame_equal(
        make_split(recs, 0.2, 0.2, seed=3, group_by="lesion_id"), make_split(recs, 0.2, 0.2, seed=3)
    )
    pd.testing.assert_frame_equal(make_folds(recs, 3, group_by="lesion_id"), make_folds(recs, 3))
    by_age = make_split(recs, 0.2, 0.2, group_by="age")
    assert by_age.attrs["group_rule"] == "age" and (by_age.groupby("age")["split"].nunique() == 1).all()
    with pytest.raises(ConfigError) as err:
        make_split(recs, group_by="patient")
    assert "'lesion_id' (the column `group` comes from), a metadata column (age) or 'regex:PATTERN'" in str(
        err.value
    )


def test_folds_are_grouped_and_checked() -> None:
    recs = _records()
    out = make_folds(recs, k=5, seed=7)
    assert sorted(out["fold"].unique()) == [0, 1, 2, 3, 4] and "split" not in out.columns
    assert not group_leaks(out)
    with pytest.raises(DataError, match="groups for 500 folds"):
        make_folds(recs, 500)


def test_premade_folds_are_respected(tmp_path: Path) -> None:
    ds = load_dataset(msld_tree(tmp_path, folds=3))
    assert make_folds(ds.records, 5) is ds.records
    one = select_fold(ds.records, 1)
    assert set(one["split"]) == {"train", "val", "test"} and "fold" not in one.columns
    gen = make_folds(load_dataset(class_tree(tmp_path / "c", {"a": 6, "b": 6})).records, 3)
    part = select_fold(gen, 0, val=0.2)
    assert set(part["split"]) == {"train", "val", "test"}
    assert (part["split"] == "test").sum() == (gen["fold"] == 0).sum()


def test_folds_refuse_shipped_test(tmp_path: Path) -> None:
    recs = _records(30)
    recs["split"] = "train"
    recs.loc[:5, "split"] = "test"
    with pytest.raises(DataError, match="ships test split folders"):
        make_folds(recs, 3)


def test_split_csv_round_trip_and_checks(tmp_path: Path) -> None:
    ds = load_dataset(class_tree(tmp_path / "d", {"a": 8, "b": 8}))
    recs = make_split(ds.records, 0.25, 0.25, seed=1)
    recs["age"] = [np.nan if i == 2 else float(i) for i in range(len(recs))]
    recs["sex"] = pd.Series(
        [None if i == 3 else "f" for i in range(len(recs))], index=recs.index, dtype=object
    )
    p = write_split_csv(recs, tmp_path / "s.csv")
    back = read_split_csv(p)
    pd.testing.assert_frame_equal(back.reset_index(drop=True), recs.reset_index(drop=True), check_dtype=False)
    assert back.attrs["metadata"] == {"age": "numeric", "sex": "categorical"} and back.loc[3, "sex"] is None
    summary = summarize_split(back, ["a", "b"])
    assert summary["images"].sum() == 16 and list(summary["split"]) == ["train", "val", "test"]

    bad = recs.copy()
    bad.loc[0, "split"] = "holdout"
    bad.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError, match="row 2: split 'holdout'"):
        read_split_csv(tmp_path / "b.csv")
    recs.drop(columns=["group"]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DataError, match="missing column"):
        read_split_csv(tmp_path / "m.csv")
    leak = recs.copy()
    leak.loc[leak.index[-1], "group"] = leak.loc[0, "group"]
    leak.loc[leak.index[-1], "split"] = "test" if leak.loc[0, "split"] != "test" else "train"
    leak.to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(DataError, match="leakage"):
        read_split_csv(tmp_path / "l.csv")
    gone = recs.copy()
    gone.loc[0, "path"] = str(tmp_path / "nothing.jpg")
    gone.to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(DataError, match="do not exist"):
        read_split_csv(tmp_path / "g.csv")
