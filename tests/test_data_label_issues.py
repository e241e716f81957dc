"""Probable label errors (medclf.data.label_issues): planted flips recovered, the audit's label_issues section and
gallery, clear errors, and data.exclude / --exclude taking images out of training only."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _fixtures_train import make_folder_data, tiny_cfg
from medclf.cli import main
from medclf.config import dump_config, load_config
from medclf.data import load_dataset, make_split
from medclf.data.label_issues import (
    LabelIssues,
    exclude_from_train,
    find_label_issues,
    label_issues_for,
    load_predictions,
    match_predictions,
    write_label_issues_csv,
)
from medclf.errors import ConfigError, DataError, MedclfError

pytest.importorskip("cleanlab")

CLASSES = ["a", "b", "c"]


def planted(
    n: int = 600, rate: float = 0.08, seed: int = 0, only: tuple[int, int] | None = None
) -> tuple[pd.DataFrame, set[str]]:
    """Probabilities of a decent model (true-class logit + 3) and given labels with ``rate`` of them flipped
    (to another class at random, or ``only=(from, to)``); returns the table and the flipped paths."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += 3.0
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    given = true.copy()
    if only is None:
        flip = rng.choice(n, int(rate * n), replace=False)
        given[flip] = (true[flip] + rng.integers(1, k, len(flip))) % k
    else:
        src = np.flatnonzero(true == only[0])
        flip = rng.choice(src, int(rate * len(src)), replace=False)
        given[flip] = only[1]
    table = pd.DataFrame(
        {"path": [f"/data/img{i:04d}.png" for i in range(n)], "label": [CLASSES[g] for g in given]}
    )
    for j, c in enumerate(CLASSES):
        table[f"prob_{c}"] = probs[:, j]
    return table, set(table["path"].iloc[flip])


def precision_recall(found: set[str], truth: set[str]) -> tuple[float, float]:
    hit = len(found & truth)
    return hit / max(len(found), 1), hit / len(truth)


@pytest.mark.parametrize("rank_by", ["self_confidence", "normalized_margin"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_flips_recovered_from_probabilities(rank_by: str, seed: int) -> None:
    # 8% of 600 labels flipped: confident learning finds them with precision and recall >= 0.8
    table, flipped = planted(seed=seed)
    issues = find_label_issues(table, CLASSES, rank_by=rank_by)
    precision, recall = precision_recall(set(issues.issues["path"]), flipped)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    # the ranking puts the planted flips first: the top len(flipped) are >= 80% planted
    top = issues.issues["path"].head(len(flipped))
    assert top.isin(flipped).mean() >= 0.8
    ranked = issues.issues
    assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
    assert ranked["score"].is_monotonic_increasing  # rank follows cleanlab's label-quality score
    assert (ranked["suggested_label"] != ranked["given_label"]).mean() >= 0.9


def test_noise_matrix_estimates_the_planted_flip_rate() -> None:
    # 15% of class a labelled b, nothing else: P(given=b | true=a) about 0.15, the other off-diagonals about 0
    table, flipped = planted(n=1500, rate=0.15, only=(0, 1), seed=3)
    issues = find_label_issues(table, CLASSES)
    nm = issues.noise_matrix
    assert np.allclose(nm.sum(axis=0), 1.0)
    assert abs(nm[1, 0] - 0.15) < 0.05, nm
    off = [nm[i, j] for i in range(3) for j in range(3) if i != j and (i, j) != (1, 0)]
    assert max(off) < 0.05, nm
    per = issues.per_class()
    # the flags land on the class that received the flips (60 of 78 here), hardly anywhere else
    assert per["b"]["flagged"] >= 0.7 * len(flipped)
    assert per["a"]["flagged"] + per["c"]["flagged"] < 0.2 * len(flipped)
    section = issues.to_dict(top=5)
    assert section["confident_joint"]["b"]["a"] == int(issues.confident_joint[1, 0]) > 0
    assert len(section["issues"]) == section["flagged"] and section["top_n"] == 5


def test_too_few_images_per_class_is_an_error() -> None:
    table, _ = planted(n=600)
    table = pd.concat([table[table["label"] != "c"], table[table["label"] == "c"].head(4)])
    with pytest.raises(DataError, match=r"too few .* c \(4\).*medclf cv"):
        find_label_issues(table, CLASSES)


def test_missing_cleanlab_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("cleanlab", "cleanlab.count", "cleanlab.filter", "cleanlab.rank"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MedclfError, match=r"pip install 'medclf\[labels\]'"):
        label_issues_for(tmp_path, pd.DataFrame({"path": [], "label": []}), CLASSES)


# ---- predictions that do not fit the data ------------------------------------------------------------------------
def _write_cv(folder: Path, table: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table.assign(fold=np.arange(len(table)) % 3).to_csv(folder / "oof_predictions.csv", index=False)
    return folder


def test_mismatched_predictions_name_paths_and_classes(tmp_path: Path) -> None:
    table, _ = planted(n=60)
    records = table[["path", "label"]].copy()
    cv = load_predictions(_write_cv(tmp_path / "cv", table))
    assert cv.covers_all and cv.kind == "cv"
    assert set(match_predictions(cv, records, CLASSES)["model"]) == {
        str(tmp_path / "cv" / f"fold_{k}") for k in range(3)
    }

    # an image of the data with no out-of-fold prediction
    short = load_predictions(_write_cv(tmp_path / "short", table.iloc[1:]))
    with pytest.raises(
        DataError, match=r"1 image\(s\) of the data have no out-of-fold prediction: /data/img0000.png"
    ):
        match_predictions(short, records, CLASSES)
    # a scored image the data lacks
    with pytest.raises(DataError, match=r"not in the data: /data/img0000.png"):
        match_predictions(cv, records.iloc[1:], CLASSES)
    # other classes
    with pytest.raises(DataError, match=r"only in the predictions \['c'\], only in the data \['d'\]"):
        match_predictions(cv, records, ["a", "b", "d"])
    # labels changed since the predictions were made
    relabelled = records.assign(
        label=np.where(records.index == 5, "a" if records.loc[5, "label"] != "a" else "b", records["label"])
    )
    with pytest.raises(DataError, match=r"another label .* /data/img0005.png"):
        match_predictions(cv, relabelled, CLASSES)
    with pytest.raises(DataError, match="neither a `medclf cv` folder"):
        load_predictions(tmp_path / "nowhere")


# ---- end to end: medclf cv on images with planted flips, then medclf data audit --predictions ------------------------
@pytest.fixture(scope="module")
def flipped_cv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, set[str]]:
    """A learnable two-class image folder with 10% of its images moved to the other class, and `medclf cv`
    (3 folds, tiny CNN) on it."""
    from medclf.train import run_cv

    root = tmp_path_factory.mktemp("flips")
    data = make_folder_data(root / "data", n_per_class=40, size=24)
    files = sorted(data.glob("*/*.png"))
    rng = np.random.default_rng(0)
    flipped = set()
    for i in rng.choice(len(files), len(files) // 10, replace=False):
        other = "malignant" if files[i].parent.name == "benign" else "benign"
        dst = data / other / files[i].name
        shutil.move(files[i], dst)
        flipped.add(str(dst))
    run_cv(tiny_cfg(data), root / "cv", folds=3, progress=False)
    return data, root / "cv", flipped


@pytest.mark.slow
def test_cv_then_audit_recovers_flipped_images(
    flipped_cv, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data, cv, flipped = flipped_cv
    out = tmp_path / "audit"
    assert (
        main(
            [
                "data",
                "audit",
                str(data),
                "--predictions",
                str(cv),
                "--out",
                str(out),
                "--label-issues-top",
                "4",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "probable label errors" in printed and "nothing was deleted or relabelled" in printed
    csv = pd.read_csv(out / "label_issues.csv")
    assert list(csv.columns) == ["path", "given_label", "suggested_label", "score", "rank"]
    # 8 of 80 images flipped: precision and recall >= 0.8 through the whole CLI path
    precision, recall = precision_recall(set(csv["path"]), flipped)
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)
    report = json.loads((out / "audit.json").read_text())
    li = report["label_issues"]
    assert li["covers_all_images"] and li["images"] == 80 and li["flagged"] == len(csv)
    assert sum(v["flagged"] for v in li["per_class"].values()) == len(csv)
    assert any("improbable given label" in w for w in report["warnings"])
    assert "Probable label errors" in (out / "audit.html").read_text()
    gallery = (out / "label_issues.html").read_text()
    assert gallery.count('alt="suspect') == min(4, len(csv))
    assert gallery.count('alt="Grad-CAM') == min(4, len(csv))  # each fold model explains its own images
    assert "not a diagnosis" in gallery
    # nothing was moved, deleted or relabelled
    assert all(Path(p).is_file() for p in csv["path"]) and len(list(data.glob("*/*.png"))) == 80


@pytest.mark.slow
def test_a_run_folder_checks_only_its_val_and_test_images(flipped_cv, tmp_path: Path) -> None:
    data, cv, _ = flipped_cv
    pred = load_predictions(cv / "fold_0")
    assert pred.kind == "run" and not pred.covers_all and "only out-of-fold predictions" in pred.note
    ds = load_dataset(data)
    table = match_predictions(pred, ds.records, ds.classes)
    split = pd.read_csv(cv / "fold_0" / "split.csv")
    assert set(table["path"]) == set(split.loc[split["split"] != "train", "path"])
    out = tmp_path / "audit"
    main(["data", "audit", str(data), "--predictions", str(cv / "fold_0"), "--out", str(out), "--no-gradcam"])
    gallery = (out / "label_issues.html").read_text()
    assert "Thumbnails only" in gallery and "turned off" in gallery
    assert "Only these images were checked" in (out / "audit.html").read_text()


def test_audit_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = make_folder_data(tmp_path / "data", n_per_class=6)
    assert main(["data", "audit", str(data), "--label-issues-top", "3"]) == 2
    assert "--label-issues-top needs --predictions" in capsys.readouterr().err
    table = pd.DataFrame(
        {"path": ["/elsewhere/x.png"], "label": ["benign"], "prob_benign": [0.9], "prob_malignant": [0.1]}
    )
    _write_cv(tmp_path / "cv", table)
    assert main(["data", "audit", str(data), "--predictions", str(tmp_path / "cv")]) == 2
    assert "/elsewhere/x.png" in capsys.readouterr().err


# ---- data.exclude / --exclude -------------------------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder_data(tmp_path / "data", n_per_class=24, size=16)


def _listed(tmp_path: Path, paths: list[str]) -> Path:
    csv = tmp_path / "label_issues.csv"
    pd.DataFrame({"path": paths, "given_label": "x"}).to_csv(csv, index=False)
    return csv


def test_exclude_removes_only_training_rows(folder: Path, tmp_path: Path) -> None:
    ds = load_dataset(folder)
    split = make_split(ds.records, val=0.25, test=0.25, seed=0, group_by="regex:^(P\\d+)_")
    by_part = {s: split.loc[split["split"] == s, "path"].tolist() for s in ("train", "val", "test")}
    listed = by_part["train"][:3] + by_part["val"][:1] + by_part["test"][:1] + ["/not/in/data.png"]
    out = exclude_from_train(split, _listed(tmp_path, listed))
    assert out.attrs["excluded_images"] == 3
    assert set(out.loc[out["split"] == "train", "path"]) == set(by_part["train"][3:])
    for part in ("val", "test"):
        assert out.loc[out["split"] == part, "path"].tolist() == by_part[part]


def test_exclude_errors_name_the_file_and_the_fix(folder: Path, tmp_path: Path) -> None:
    split = make_split(load_dataset(folder).records, val=0.25, test=0.25, seed=0)
    with pytest.raises(DataError, match=r"none of its 2 paths is an image of this data"):
        exclude_from_train(split, _listed(tmp_path, ["/x/1.png", "/x/2.png"]))
    no_col = tmp_path / "nocol.csv"
    no_col.write_text("file\n/x/1.png\n")
    with pytest.raises(ConfigError, match=r"nocol.csv: the CSV has no `path` column \(columns: file\)"):
        exclude_from_train(split, no_col)
    with pytest.raises(ConfigError, match="no such file"):
        exclude_from_train(split, tmp_path / "missing.csv")


def test_resolve_split_applies_data_exclude_per_fold(folder: Path, tmp_path: Path) -> None:
    from medclf.data import make_folds
    from medclf.train.engine import resolve_split

    ds = load_dataset(folder)
    folds = make_folds(ds.records, k=3, seed=0, group_by="regex:^(P\\d+)_")
    base = tiny_cfg(folder)
    plain = resolve_split(base, folds, fold=1)
    train = plain.loc[plain["split"] == "train", "path"].tolist()
    held = plain.loc[plain["split"] != "train", "path"].tolist()
    csv = _listed(tmp_path, train[:4] + held[:2])
    cfg = tiny_cfg(folder, f"data.exclude={csv}")
    cut = resolve_split(cfg, folds, fold=1)
    assert cut.attrs["excluded_images"] == 4
    assert set(cut["path"]) == set(plain["path"]) - set(train[:4])
    pd.testing.assert_frame_equal(
        cut[cut["split"] != "train"].reset_index(drop=True),
        plain[plain["split"] != "train"].reset_index(drop=True),
    )


def test_train_exclude_cli_records_the_count(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from medclf.train.engine import resolve_split

    cfg = tiny_cfg(folder, "train.epochs=1")
    plain = resolve_split(cfg, load_dataset(folder))
    train = plain.loc[plain["split"] == "train", "path"].tolist()
    csv = _listed(tmp_path, [*train[:5], plain.loc[plain["split"] == "test", "path"].iloc[0]])
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(dump_config(cfg))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--exclude", str(csv), "--out", str(run), "--quiet"]) == 0
    assert "left 5 image(s) of data.exclude out of training" in capsys.readouterr().out
    info = json.loads((run / "run.json").read_text())
    assert info["excluded_images"] == 5 and info["images"]["train"] == len(train) - 5
    saved = pd.read_csv(run / "split.csv")
    assert not set(train[:5]) & set(saved["path"])
    assert set(saved.loc[saved["split"] == "test", "path"]) == set(
        plain.loc[plain["split"] == "test", "path"]
    )
    assert load_config(run / "config.yaml").data.exclude == str(csv.resolve())


def test_cv_exclude_is_the_data_exclude_override(tmp_path: Path) -> None:
    from medclf.cli import build_parser
    from medclf.train._cli import _load

    args = build_parser().parse_args(
        ["cv", "--data", str(tmp_path), "--exclude", "flagged.csv", "--out", "x"]
    )
    assert _load(args).data.exclude == str(Path("flagged.csv").resolve())


def test_label_issues_csv_is_usable_as_exclude(tmp_path: Path) -> None:
    table, _ = planted(n=300)
    issues: LabelIssues = find_label_issues(table, CLASSES)
    csv = write_label_issues_csv(issues, tmp_path / "label_issues.csv")
    back = pd.read_csv(csv)
    assert back["rank"].tolist() == list(range(1, len(back) + 1))
    split = table.assign(split="train")
    assert exclude_from_train(split, csv).attrs["excluded_images"] == len(back)
