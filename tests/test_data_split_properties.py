"""Property tests of the grouped splitter on skewed data: a few large groups, many small ones, imbalanced
classes. Every split and every fold must look like the whole: its class proportions and its images per group
within a stated tolerance, for many seeds; no group in two parts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medclf.data import make_folds, make_split
from medclf.data.splits import group_leaks

CLASS_TOLERANCE = 0.04
"""Largest allowed gap between a part's share of a class and the whole's (absolute)."""
GROUP_SIZE_TOLERANCE = 0.15
"""Largest allowed relative gap between a part's images per group and the whole's."""
METADATA_TOLERANCE = 0.15
"""Largest allowed gap in a metadata value's share (no gross imbalance: a 15 % split holds only two or three of
the 10-20-image groups, each of one sex)."""


def skewed_records(seed: int) -> pd.DataFrame:
    """20 groups of 10-20 images and 580 of 1-3; classes 60/30/10 %; metadata (sex, age) per group."""
    rng = np.random.default_rng(seed)
    sizes = np.concatenate([rng.integers(10, 21, 20), rng.integers(1, 4, 580)])
    rng.shuffle(sizes)
    rows = []
    for g, n in enumerate(sizes):
        label = rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1])
        sex = rng.choice(["f", "m"])
        age = float(rng.integers(20, 90))
        rows += [
            {"path": f"/x/g{g}_{i}.jpg", "label": label, "group": f"g{g}", "sex": sex, "age": age}
            for i in range(n)
        ]
    return pd.DataFrame(rows)


def _check_like_whole(whole: pd.DataFrame, part: pd.DataFrame, name: str) -> None:
    overall = whole["label"].value_counts(normalize=True)
    share = part["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
    gap = (share - overall).abs().max()
    assert gap <= CLASS_TOLERANCE, f"{name}: class share off by {gap:.3f}\n{share}\n{overall}"
    per_group = len(part) / part["group"].nunique()
    whole_per_group = len(whole) / whole["group"].nunique()
    rel = abs(per_group / whole_per_group - 1)
    assert rel <= GROUP_SIZE_TOLERANCE, (
        f"{name}: {per_group:.2f} images/group vs {whole_per_group:.2f} overall"
    )
    sex_gap = abs((part["sex"] == "f").mean() - (whole["sex"] == "f").mean())
    assert sex_gap <= METADATA_TOLERANCE, f"{name}: share of sex 'f' off by {sex_gap:.3f}"


@pytest.mark.parametrize("seed", range(12))
def test_every_split_looks_like_the_whole(seed: int) -> None:
    recs = skewed_records(seed)
    out = make_split(recs, val=0.15, test=0.15, seed=seed)
    assert not group_leaks(out)
    sizes = out["split"].value_counts(normalize=True)
    for name, target in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs(sizes[name] - target) <= 0.03, f"{name}: {sizes[name]:.3f} of the images, asked {target}"
        _check_like_whole(recs, out[out["split"] == name], name)
    # the largest groups are spread, not all sent to train
    big = out.groupby("group").filter(lambda g: len(g) >= 10)
    assert big.loc[big["split"] != "train", "group"].nunique() >= 1


@pytest.mark.parametrize("seed", range(12))
def test_unequal_split_sizes(seed: int) -> None:
    recs = skewed_records(seed)
    out = make_split(recs, val=0.1, test=0.25, seed=seed)
    sizes = out["split"].value_counts(normalize=True)
    assert abs(sizes["val"] - 0.1) <= 0.03 and abs(sizes["test"] - 0.25) <= 0.03
    for name in ("train", "val", "test"):
        _check_like_whole(recs, out[out["split"] == name], name)


@pytest.mark.parametrize("seed", range(12))
def test_every_fold_looks_like_the_whole(seed: int) -> None:
    recs = skewed_records(seed)
    out = make_folds(recs, k=5, seed=seed)
    assert not group_leaks(out)
    assert sorted(out["fold"].unique()) == [0, 1, 2, 3, 4]
    for k, part in out.groupby("fold"):
        assert abs(len(part) / len(out) - 0.2) <= 0.03
        _check_like_whole(recs, part, f"fold {k}")


def test_deterministic_by_seed() -> None:
    recs = skewed_records(0)
    a = make_split(recs, 0.15, 0.15, seed=5)["split"].tolist()
    assert a == make_split(recs, 0.15, 0.15, seed=5)["split"].tolist()
    assert a != make_split(recs, 0.15, 0.15, seed=6)["split"].tolist()
    f = make_folds(recs, 5, seed=5)["fold"].tolist()
    assert f == make_folds(recs, 5, seed=5)["fold"].tolist()


def test_tiny_data_gets_every_split() -> None:
    recs = pd.DataFrame(
        {"path": [f"/x/{i}.jpg" for i in range(6)], "label": list("aabbab"), "group": list("pqrstu")}
    )
    out = make_split(recs, 0.15, 0.15, seed=0)
    assert set(out["split"]) == {"train", "val", "test"}


def _biased(recs: pd.DataFrame) -> pd.DataFrame:
    """What the old splitter did: every group of 3+ images in train; val/test from the small groups only."""
    out = recs.copy()
    size = out.groupby("group")["path"].transform("size")
    small = sorted(out.loc[size < 3, "group"].unique())
    val, test = set(small[0::5]), set(small[1::5])
    out["split"] = ["val" if g in val else "test" if g in test else "train" for g in out["group"]]
    return out


def test_makeup_warnings_flag_a_biased_split_and_pass_a_representative_one() -> None:
    from medclf.data.splits import split_makeup_warnings

    recs = skewed_records(0)
    flagged = split_makeup_warnings(_biased(recs))
    assert any("val" in w and "images per group" in w for w in flagged), flagged
    assert any("test" in w and "images per group" in w for w in flagged), flagged
    assert split_makeup_warnings(make_split(recs, 0.15, 0.15, seed=0)) == []
    assert split_makeup_warnings(make_folds(recs, 5, seed=0)) == []
    skewed = make_split(recs, 0.15, 0.15, seed=0)
    skewed.loc[(skewed["split"] == "test") & (skewed["label"] == "a"), "split"] = "train"
    assert any("test: class" in w for w in split_makeup_warnings(skewed))


def test_small_split_warnings_name_the_split_and_class() -> None:
    from medclf.data.splits import small_split_warnings

    recs = skewed_records(1)
    recs.loc[recs.index[:3], "label"] = "rare"
    recs.loc[recs.index[:3], "group"] = "only-rare"
    out = make_split(recs, 0.15, 0.15, seed=0)
    lines = small_split_warnings(out, ["a", "b", "c", "rare"])
    held = out.loc[out["group"] == "only-rare", "split"].iloc[0]
    missing = {"val", "test"} - {held}
    assert all(any(w.startswith(f"{s} has no image of class 'rare'") for w in lines) for s in missing), lines
    if held != "train":
        assert any(w.startswith(f"{held} has only 3 image(s) of class 'rare'") for w in lines)
    assert small_split_warnings(make_split(skewed_records(1), 0.15, 0.15, seed=0)) == []


def test_summary_shows_images_per_group() -> None:
    from medclf.data import summarize_split

    out = make_split(skewed_records(2), 0.15, 0.15, seed=0)
    table = summarize_split(out).set_index("split")
    assert {"images", "groups", "img/group", "max/group", "a", "b", "c"} <= set(table.columns)
    sizes = out[out["split"] == "val"].groupby("group").size()
    assert (
        table.loc["val", "img/group"] == round(sizes.mean(), 2)
        and table.loc["val", "max/group"] == sizes.max()
    )


def test_split_and_audit_commands_report_the_makeup(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from medclf.cli import main
    from medclf.data import load_dataset, synth_dataset, write_split_csv

    root = tmp_path / "csv"
    synth_dataset(root, layout="csv", n=120, seed=0, size=32)
    assert main(["data", "split", str(root), "--out", str(tmp_path / "s.csv")]) == 0
    text = capsys.readouterr().out
    assert "img/group" in text and "max/group" in text
    recs = load_dataset(root).records
    write_split_csv(_biased(recs), tmp_path / "biased.csv")
    assert main(["data", "audit", str(root), "--split", str(tmp_path / "biased.csv")]) == 0
    assert "images per group against" in capsys.readouterr().out
