"""Subgroup performance (`medclf.evaluate.subgroups`): a planted effect is flagged where it was planted and
nowhere else; age bands, pooling of small values, the CLI options, metrics.json, report, model card, compare,
and an image-only run evaluated on data that carries metadata."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from _fixtures_evaluate import make_run_dir, stub_model
from medclf.cli import main
from medclf.errors import ConfigError
from medclf.evaluate.pipeline import evaluate_predictions
from medclf.evaluate.subgroups import (
    POOLED,
    SubgroupOptions,
    evaluate_subgroups,
    parse_bands,
    subgroup_labels,
)

CLASSES = ["benign", "malignant"]


def _planted(n: int = 1600, seed: int = 0, miss_rate: float = 0.35) -> pd.DataFrame:
    """Predictions where ``miss_rate`` of the men's malignant cases get a benign-looking score: sensitivity for
    sex == "m" is lower by construction; age and site are independent of the effect (site has one rare value)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    sex = rng.choice(["f", "m"], n)
    score = rng.normal(0, 1, n) + 2.5 * y
    missed = (sex == "m") & (y == 1) & (rng.random(n) < miss_rate)
    score[missed] -= 2.5
    p1 = 1 / (1 + np.exp(-(score - 1.25)))
    return pd.DataFrame(
        {
            "path": [f"/d/{i}.png" for i in range(n)],
            "label": np.where(y == 1, "malignant", "benign"),
            "group": [f"g{i // 2}" for i in range(n)],
            "prob_benign": 1 - p1,
            "prob_malignant": p1,
            "sex": sex,
            "age": rng.uniform(18, 90, n).round(),
            "site": rng.choice(["back", "face", "leg", "ear"], n, p=[0.45, 0.3, 0.245, 0.005]),
        }
    )


def _entry(section: dict, column: str, name: str) -> dict:
    return next(e for e in section["columns"][column]["subgroups"] if e["name"] == name)


@pytest.mark.slow
def test_a_planted_effect_is_flagged_for_its_subgroup_only(tmp_path: Path) -> None:
    m = evaluate_predictions(
        _planted(), CLASSES, tmp_path / "eval", threshold=0.5, temperature=1.0, n_boot=500
    )
    sub = m["subgroups"]
    men, women = _entry(sub, "sex", "m"), _entry(sub, "sex", "f")
    assert men["sensitivity"] < sub["overall"]["sensitivity"] - 0.1 < women["sensitivity"]
    assert any(f.startswith("sensitivity") and "below the overall" in f for f in men["flags"])
    assert men["ci95"]["sensitivity"][1] < sub["overall"]["sensitivity"]  # the interval rule fires too
    assert all(f.startswith("sex = m:") for f in sub["flags"]) and sub["flags"]
    assert set(sub["columns"]) == {"sex", "age", "site"}
    for column, part in sub["columns"].items():
        for e in part["subgroups"]:
            if (column, e["name"]) != ("sex", "m"):
                assert not e.get("flags"), (column, e["name"], e.get("flags"))
    # every evaluated subgroup carries its interval; the counts add up to the evaluated images
    for part in sub["columns"].values():
        assert sum(e["n"] for e in part["subgroups"]) == m["n"]
        for e in part["subgroups"]:
            if not e.get("too_small"):
                lo, hi = e["ci95"]["sensitivity"]
                assert lo <= e["sensitivity"] <= hi

    # without the planted effect nothing about sex is flagged
    clean = evaluate_predictions(
        _planted(miss_rate=0.0), CLASSES, tmp_path / "clean", threshold=0.5, temperature=1.0, n_boot=500
    )
    assert not any(f.startswith("sex") for f in clean["subgroups"]["flags"])

    # metrics.json, the report (table, flag, plot) and the model card
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["subgroups"]["flags"] == sub["flags"]
    assert (tmp_path / "eval" / "plots" / "subgroups.png").is_file()
    html = (tmp_path / "eval" / "report.html").read_text()
    section = html[html.index('<section id="subgroups">') : html.index('<section id="data">')]
    assert "<h3>sex" in section and "Flagged subgroups" in section and "sex = m: sensitivity" in section
    assert 'src="data:image/png;base64,' in section
    card = html[html.index('<section id="model-card">') :]
    assert "subgroups evaluated" in card and "sex (2 categories)" in card and "sex = m:" in card
    assert "ear" not in section  # the rare value is pooled, never named
    predictions = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    assert {"sex", "age", "site"} <= set(predictions.columns)


def test_the_sensitivity_margin_is_configurable() -> None:
    from medclf.evaluate.metrics import compute_metrics

    df = _planted(miss_rate=0.2)
    y = df["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    probs = df[["prob_benign", "prob_malignant"]].to_numpy()
    overall = compute_metrics(y, probs, CLASSES, threshold=0.5, n_boot=0)

    def margin_flagged(margin: float) -> tuple[float, bool]:
        options = SubgroupOptions(columns=("sex",), sensitivity_margin=margin)
        sub = evaluate_subgroups(
            df, y, probs, CLASSES, overall, threshold=0.5, positive=[1], n_boot=0, options=options
        )
        men = _entry(sub, "sex", "m")
        return overall["sensitivity"] - men["sensitivity"], any("margin" in f for f in men["flags"])

    gap, _ = margin_flagged(0.1)
    assert gap > 0.02
    assert margin_flagged(gap - 0.01)[1] and not margin_flagged(gap + 0.01)[1]
    with pytest.raises(ConfigError, match="--flag-margin"):
        SubgroupOptions(sensitivity_margin=1.5)


def test_the_margin_rule_needs_ten_positives() -> None:
    from medclf.evaluate.metrics import compute_metrics

    # site "a": 100 images, 50 positives all caught; site "b": 40 images, 4 (then 12) positives, half missed
    def flags_of(n_pos_b: int) -> list[str]:
        y = np.r_[np.repeat([0, 1], 50), np.zeros(40 - n_pos_b, int), np.ones(n_pos_b, int)]
        p1 = np.where(y == 1, 0.9, 0.1)
        p1[140 - n_pos_b // 2 :] = 0.2  # half of b's positives missed
        probs = np.stack([1 - p1, p1], axis=1)
        df = pd.DataFrame({"label": y, "site": ["a"] * 100 + ["b"] * 40})
        overall = compute_metrics(y, probs, CLASSES, threshold=0.5, n_boot=0)
        sub = evaluate_subgroups(df, y, probs, CLASSES, overall, threshold=0.5, positive=[1], n_boot=200)
        b = _entry(sub, "site", "b")
        assert b["n_positive"] == n_pos_b and b["sensitivity"] == 0.5 < overall["sensitivity"] - 0.1
        return b["flags"]

    assert not any("margin" in f for f in flags_of(4))
    assert any("margin" in f for f in flags_of(12))


def test_age_bands() -> None:
    ages = pd.Series([5.0, 30.0, 44.9, 75.0, 90.0, np.nan, -1.0])
    labels, kind, order = subgroup_labels(ages, "age", (0, 30, 45, 60, 75))
    assert kind == "age bands"
    assert list(labels) == ["[0, 30)", "[30, 45)", "[30, 45)", "≥ 75", "≥ 75", "missing", "< 0"]
    assert order == ["< 0", "[0, 30)", "[30, 45)", "≥ 75", "missing"]
    labels, _, _ = subgroup_labels(pd.Series([10.0, 50.0, 70.0]), "age_approx", parse_bands("0,50"))
    assert list(labels) == ["[0, 50)", "≥ 50", "≥ 50"]
    # a numeric column with few values is read as categories, a non-age one with many at its quartiles
    assert subgroup_labels(pd.Series([1.0, 2.0, 2.0]), "skin_type", (0, 30))[1] == "values"
    assert subgroup_labels(pd.Series(np.arange(40.0)), "weight", (0, 30))[1] == "quartile bands"
    for bad in ("0,x", "30,10", ""):
        with pytest.raises(ConfigError, match="--age-bands"):
            parse_bands(bad)


def test_small_values_are_pooled_and_a_small_pool_is_not_evaluated() -> None:
    rng = np.random.default_rng(1)
    values = ["a"] * 100 + ["b"] * 50 + ["c"] * 12 + ["d"] * 6 + [None] * 40
    n = len(values)
    y = rng.integers(0, 2, n)
    p1 = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0.01, 0.99)
    probs = np.stack([1 - p1, p1], axis=1)
    df = pd.DataFrame({"label": y, "site": values, "constant": "x", "rare": [f"v{i}" for i in range(n)]})
    from medclf.evaluate.metrics import compute_metrics

    overall = compute_metrics(y, probs, CLASSES, n_boot=0)
    sub = evaluate_subgroups(df, y, probs, CLASSES, overall, positive=[1], n_boot=100)
    rows = {e["name"]: e for e in sub["columns"]["site"]["subgroups"]}
    assert list(rows) == ["a", "b", "missing", POOLED]
    assert rows[POOLED] == {"name": POOLED, "n": 18, "pooled_values": 2, "too_small": True}
    assert rows["b"]["n"] == 50 and math.isfinite(rows["b"]["accuracy"]) and "ci95" in rows["b"]
    assert "constant: one value only" in sub["skipped"]
    assert "rare: every value has fewer than 30 images" in sub["skipped"] and "rare" not in sub["columns"]
    # a smaller minimum evaluates c on its own; d alone is still too small
    sub = evaluate_subgroups(
        df, y, probs, CLASSES, overall, positive=[1], n_boot=0, options=SubgroupOptions(min_size=10)
    )
    rows = {e["name"]: e for e in sub["columns"]["site"]["subgroups"]}
    assert rows["c"]["n"] == 12 and not rows["c"].get("too_small")
    assert rows[POOLED]["n"] == 6 and rows[POOLED]["too_small"]
    with pytest.raises(ConfigError, match="--subgroup-min"):
        SubgroupOptions(min_size=0)


def test_multiclass_without_a_positive_group_reports_macro_auc(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n, classes = 300, ["a", "b", "c"]
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    df = pd.DataFrame({"label": [classes[i] for i in y], "sex": rng.choice(["f", "m"], n)})
    for j, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, j]
    m = evaluate_predictions(df, classes, tmp_path, n_boot=100)
    assert m["subgroups"]["metrics"] == ["accuracy", "balanced_accuracy", "macro_auc"]
    assert m["subgroups"]["sensitivity_margin"] is None
    # a multiclass subgroup's balanced accuracy and macro AUC average over the classes it holds: never flagged
    assert m["subgroups"]["flag_metrics"] == ["accuracy"]
    assert all(math.isfinite(e["macro_auc"]) for e in m["subgroups"]["columns"]["sex"]["subgroups"])


def _metadata_run(tmp_path: Path) -> Path:
    """A fake run whose split.csv carries sex and age; its dataset.yaml points at a CSV that also has site."""
    run = make_run_dir(tmp_path)
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    from PIL import Image

    rows = []
    for split, n in (("train", 8), ("val", 6), ("test", 80)):
        for i in range(n):
            path = data / f"{split}_{i}.png"
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
            rows.append(
                {
                    "path": str(path),
                    "label": CLASSES[i % 2],
                    "group": f"{split}{i}",
                    "split": split,
                    "sex": "m" if i < n // 2 else "f",
                    "age": 30.0 + 40.0 * (i % 2),
                    "site": ["back", "face"][i % 4 // 2],
                }
            )
    table = pd.DataFrame(rows)
    table.drop(columns="site").to_csv(run / "split.csv", index=False)
    table.assign(image=[Path(p).name for p in table["path"]])[["image", "label", "site"]].to_csv(
        data / "meta.csv", index=False
    )
    (run / "dataset.yaml").write_text(
        f"root: {data}\nlayout: csv\ncsv: meta.csv\nimage_column: image\nlabel_column: label\n"
        "metadata: []\nclasses: [benign, malignant]\n"
    )
    return run


@pytest.fixture()
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's model replaced by a stub that, like an image-only model, returns no metadata columns; it misses
    half the men's malignant images and no one else's."""

    def misses_men(records: pd.DataFrame) -> np.ndarray:
        missed = (records["sex"] == "m") & (records.index % 4 == 1)
        p1 = np.where((records["label"] == "malignant") & ~missed, 0.8, 0.2)
        return np.stack([1 - p1, p1], axis=1)

    stub_model(monkeypatch, CLASSES, misses_men)


@pytest.mark.slow
def test_cli_subgroups_options(tmp_path: Path, fake_model: None, capsys: pytest.CaptureFixture[str]) -> None:
    run = _metadata_run(tmp_path)
    out = tmp_path / "eval"
    args = ["evaluate", str(run), "--out", str(out), "--bootstrap", "100", "--no-gradcam"]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["subgroups"]["columns"]) == ["sex", "age"]  # every metadata column of the data
    assert any(f.startswith("sex = m: sensitivity") for f in m["subgroups"]["flags"])
    printed = capsys.readouterr().out
    assert "subgroups: sex, age" in printed and "subgroup flag: sex = m" in printed
    assert {"sex", "age"} <= set(pd.read_csv(out / "predictions.csv").columns)

    # named columns only, other age bands and minimum; site is read from the data's CSV (not declared metadata)
    assert main([*args, "--subgroups", "age", "site", "--age-bands", "0,50", "--subgroup-min", "20"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["subgroups"]["columns"]) == ["age", "site"] and m["subgroups"]["min_size"] == 20
    assert [e["name"] for e in m["subgroups"]["columns"]["age"]["subgroups"]] == ["[0, 50)", "≥ 50"]
    assert {e["name"] for e in m["subgroups"]["columns"]["site"]["subgroups"]} == {"back", "face"}
    assert "sex" not in pd.read_csv(out / "predictions.csv").columns

    capsys.readouterr()
    assert main([*args, "--subgroups", "weight"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--subgroups weight" in err and "\n" not in err
    assert main([*args, "--subgroups", "group"]) == 2
    assert "identify images and patients" in capsys.readouterr().err
    assert main([*args, "--flag-margin", "2"]) == 2


@pytest.mark.slow
def test_compare_shows_subgroups_side_by_side(tmp_path: Path) -> None:
    df = _planted(n=600)
    kw = {"threshold": 0.5, "temperature": 1.0, "n_boot": 100}
    evaluate_predictions(df, CLASSES, tmp_path / "a", **kw)
    better = df.copy()
    better["prob_malignant"] = np.where(better["label"] == "malignant", 0.9, 0.1)
    better["prob_benign"] = 1 - better["prob_malignant"]
    evaluate_predictions(better, CLASSES, tmp_path / "b", **kw)
    result = main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")])
    assert result == 0
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    tables = saved["subgroups"]["tables"]
    assert saved["subgroups"]["done"] and list(tables) == ["sex", "age", "site"]
    header, rows = tables["sex"]["header"], tables["sex"]["rows"]
    assert header[:2] == ["subgroup", "n"] and any(h.endswith(": sensitivity") for h in header)
    men = next(r for r in rows if r[0] == "m")
    assert all(men) and "(flagged)" in " ".join(men)  # flagged by the planted run, not by the perfect one
    md = (tmp_path / "cmp" / "leaderboard.md").read_text()
    assert "## Subgroups" in md and "### sex" in md
    assert "<h3>sex</h3>" in (tmp_path / "cmp" / "leaderboard.html").read_text()

    # other images: no side-by-side table
    evaluate_predictions(df.iloc[:300], CLASSES, tmp_path / "c", **kw)
    main(["compare", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "cmp2")])
    saved = json.loads((tmp_path / "cmp2" / "compare.json").read_text())
    assert not saved["subgroups"]["done"] and "same images" in saved["subgroups"]["reason"]


def test_an_image_only_run_evaluated_on_data_with_metadata(tiny_run: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    split = pd.read_csv(tiny_run / "split.csv")
    images = Path(split["path"].iloc[0]).parent
    meta = split.assign(image=[Path(p).name for p in split["path"]])[["image", "label", "sex", "age"]]
    meta.to_csv(tmp_path / "meta.csv", index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"root: {images}\nlayout: csv\ncsv: {tmp_path / 'meta.csv'}\nimage_column: image\nlabel_column: label\n"
        "metadata: {sex: categorical, age: numeric}\nclasses: [benign, malignant]\n"
    )
    out = tmp_path / "eval"
    args = ["evaluate", str(tiny_run), "--data", str(spec), "--split", "all", "--out", str(out)]
    assert main([*args, "--bootstrap", "100", "--no-gradcam"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert "metadata_encoder" not in json.loads((tiny_run / "run.json").read_text())  # image-only
    assert set(m["subgroups"]["columns"]) == {"sex", "age"}
    sexes = m["subgroups"]["columns"]["sex"]["subgroups"]
    assert sum(e["n"] for e in sexes) == len(split) == m["n"]
    # each age band holds one class only (the fixture ties age to the label): its AUC is undefined, not made up
    bands = m["subgroups"]["columns"]["age"]["subgroups"]
    assert all(e["auc"] is None for e in bands if not e.get("too_small"))
    assert {"sex", "age"} <= set(pd.read_csv(out / "predictions.csv").columns)
