"""Metrics against scikit-learn, bootstrap intervals (coverage by simulation), degenerate inputs."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy.stats import norm
from sklearn import metrics as skm

from medclf.errors import DataError
from medclf.evaluate.bootstrap import resample_weights
from medclf.evaluate.metrics import (
    compute_metrics,
    json_safe,
    paired_bootstrap,
    weighted_auc,
    weighted_average_precision,
)


def _probs(
    n: int, k: int, seed: int, sep: float = 1.2, decimals: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += sep
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    if decimals is not None:  # coarse probabilities: many ties
        p = np.round(p, decimals)
        p[:, -1] = 1 - p[:, :-1].sum(1)
        p = np.clip(p, 0, 1)
        p /= p.sum(1, keepdims=True)
    return y, p


@pytest.mark.parametrize(("k", "decimals"), [(2, None), (2, 1), (3, None), (5, 2)])
def test_point_estimates_match_sklearn(k: int, decimals: int | None) -> None:
    y, p = _probs(500, k, seed=k, decimals=decimals)
    classes = [f"c{i}" for i in range(k)]
    m = compute_metrics(y, p, classes, n_boot=0)
    pred = (p[:, 1] >= 0.5).astype(int) if k == 2 else p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(y, pred, average="weighted"))
    assert m["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    if k == 2:
        assert m["macro_auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
        assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
        assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p[:, 1]))
        assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p[:, 1]))
        tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
        assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert m["specificity"] == pytest.approx(tn / (tn + fp))
        assert m["ppv"] == pytest.approx(tp / (tp + fp))
        assert m["npv"] == pytest.approx(tn / (tn + fn))
    else:
        assert m["macro_auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))
        assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p, labels=list(range(k))))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=list(range(k))).tolist()
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, labels=list(range(k)))
    for i, c in enumerate(classes):
        pc = m["per_class"][c]
        assert pc["precision"] == pytest.approx(prec[i]) and pc["ppv"] == pc["precision"]
        assert pc["recall"] == pytest.approx(rec[i])
        assert pc["f1"] == pytest.approx(f1[i])
        assert pc["support"] == sup[i]
        assert pc["auc"] == pytest.approx(skm.roc_auc_score(y == i, p[:, i]))
        tn = ((y != i) & (pred != i)).sum()
        assert pc["specificity"] == pytest.approx(tn / (y != i).sum())
        assert pc["npv"] == pytest.approx(tn / (pred != i).sum())


def test_weighted_auc_and_ap_equal_sklearn_on_a_resample() -> None:
    """Weights = bootstrap counts must give the metric of the explicitly resampled data."""
    y, p = _probs(300, 2, seed=3, decimals=2)
    w = next(resample_weights(y, n_boot=3, seed=1))
    for row in w:
        idx = np.repeat(np.arange(y.size), row.astype(int))
        auc = weighted_auc(row[None], p[:, 1], y == 1)[0]
        ap = weighted_average_precision(row[None], p[:, 1], y == 1)[0]
        assert auc == pytest.approx(skm.roc_auc_score(y[idx], p[idx, 1]))
        assert ap == pytest.approx(skm.average_precision_score(y[idx], p[idx, 1]))


def test_threshold_changes_the_decision() -> None:
    y, p = _probs(400, 2, seed=4)
    low = compute_metrics(y, p, ["b", "m"], threshold=0.2, n_boot=0)
    high = compute_metrics(y, p, ["b", "m"], threshold=0.8, n_boot=0)
    assert low["sensitivity"] > high["sensitivity"] and low["specificity"] < high["specificity"]
    assert low["threshold"] == 0.2
    assert low["auc"] == high["auc"]  # threshold-free
    # positive class 0 instead of 1
    flipped = compute_metrics(y, p, ["b", "m"], positive_index=0, n_boot=0)
    assert flipped["positive_class"] == "b"
    assert flipped["sensitivity"] == pytest.approx(((p[:, 0] >= 0.5) & (y == 0)).sum() / (y == 0).sum())


def test_multiclass_positive_set_adds_screening_metrics() -> None:
    y, p = _probs(600, 4, seed=5)
    m = compute_metrics(y, p, ["nv", "mel", "bcc", "bkl"], positive_index=[1, 2], threshold=0.3, n_boot=50)
    score, y_bin = p[:, 1] + p[:, 2], np.isin(y, [1, 2])
    assert m["positive_class"] == ["mel", "bcc"]
    assert m["sensitivity"] == pytest.approx((score[y_bin] >= 0.3).mean())
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y_bin, score))
    # decisions follow the group rule: the best of mel/bcc when P(mel+bcc) >= 0.3, else the best of nv/bkl
    pred = np.where(
        score >= 0.3, np.array([1, 2])[p[:, [1, 2]].argmax(1)], np.array([0, 3])[p[:, [0, 3]].argmax(1)]
    )
    assert (pred != p.argmax(1)).any()  # the rule matters on this data
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert np.array(m["confusion_matrix"]).trace() == (pred == y).sum()
    assert "sensitivity" in m["ci95"]
    # the plain arg-max figures stand beside the operating point's, with their own intervals
    top1 = p.argmax(1)
    assert m["top1_accuracy"] == pytest.approx(skm.accuracy_score(y, top1))
    assert m["top1_balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, top1))
    assert m["top1_macro_f1"] == pytest.approx(skm.f1_score(y, top1, average="macro"))
    assert m["top1_accuracy"] != m["accuracy"]
    lo, hi = m["ci95"]["top1_balanced_accuracy"]
    assert lo <= m["top1_balanced_accuracy"] <= hi
    # arg-max runs (and binary ones) have no second set
    assert "top1_accuracy" not in compute_metrics(y, p, ["nv", "mel", "bcc", "bkl"], n_boot=0)


def test_intervals_are_seeded_and_contain_the_estimate() -> None:
    y, p = _probs(400, 3, seed=6)
    a = compute_metrics(y, p, ["a", "b", "c"], n_boot=300, seed=1)
    b = compute_metrics(y, p, ["a", "b", "c"], n_boot=300, seed=1)
    c = compute_metrics(y, p, ["a", "b", "c"], n_boot=300, seed=2)
    assert a["ci95"] == b["ci95"] and a["ci95"] != c["ci95"]
    for name, (lo, hi) in a["ci95"].items():
        assert lo <= a[name] + 1e-9 and a[name] <= hi + 1e-9, name
    assert a["bootstrap"]["n_resamples"] == 300
    assert set(a["per_class_ci95"]["b"]) == {"precision", "recall", "specificity", "f1", "auc"}


def test_bootstrap_is_stratified_and_grouped() -> None:
    y = np.array([0] * 30 + [1] * 10)
    for w in resample_weights(y, n_boot=50, seed=0):
        assert (w[:, y == 0].sum(1) == 30).all() and (w[:, y == 1].sum(1) == 10).all()
    groups = np.repeat(np.arange(20), 2)  # two images per patient
    for w in resample_weights(y, groups, n_boot=50, seed=0):
        # both images of a patient are always drawn together
        np.testing.assert_array_equal(w[:, 0::2], w[:, 1::2])


def test_grouped_intervals_are_wider_when_images_are_copies() -> None:
    """Ten copies of each image are not ten times the evidence: grouping must widen the interval."""
    y, p = _probs(100, 2, seed=7)
    y10, p10 = np.repeat(y, 10), np.repeat(p, 10, axis=0)
    groups = np.repeat(np.arange(100), 10)
    naive = compute_metrics(y10, p10, ["b", "m"], n_boot=300)["ci95"]["auc"]
    grouped = compute_metrics(y10, p10, ["b", "m"], groups=groups, n_boot=300)["ci95"]["auc"]
    assert grouped[1] - grouped[0] > 2 * (naive[1] - naive[0])


@pytest.mark.slow
def test_interval_coverage_by_simulation() -> None:
    """A 95% interval covers the true value about 95% of the time (200 draws × 200 resamples)."""
    d, thr, n_each = 1.0, 0.5, 100
    # binormal scores: negatives ~ N(0, 1), positives ~ N(d, 1); score = Phi(x) so it lies in [0, 1]
    true = {"auc": norm.cdf(d / np.sqrt(2)), "sensitivity": 1 - norm.cdf(norm.ppf(thr) - d)}
    rng = np.random.default_rng(123)
    covered = dict.fromkeys(true, 0)
    sims = 200
    for s in range(sims):
        x = np.r_[rng.normal(0, 1, n_each), rng.normal(d, 1, n_each)]
        y = np.r_[np.zeros(n_each, int), np.ones(n_each, int)]
        p1 = norm.cdf(x)
        m = compute_metrics(y, np.c_[1 - p1, p1], ["neg", "pos"], threshold=thr, n_boot=200, seed=s)
        for metric, value in true.items():
            lo, hi = m["ci95"][metric]
            covered[metric] += lo <= value <= hi
    for metric in true:
        assert 0.88 <= covered[metric] / sims <= 0.99, (metric, covered[metric] / sims)


def test_degenerate_class_absent_gives_null_and_a_note() -> None:
    y, p = _probs(200, 3, seed=8)
    y[y == 2] = 0  # class "c" never occurs in the labels
    m = compute_metrics(y, p, ["a", "b", "c"], n_boot=100)
    assert np.isnan(m["per_class"]["c"]["auc"]) and np.isnan(m["per_class"]["c"]["recall"])
    assert m["per_class"]["c"]["support"] == 0
    assert np.isfinite(m["macro_auc"])  # averaged over the classes where it is defined
    assert any("'c'" in note for note in m["notes"])
    text = json.dumps(json_safe(m), allow_nan=False)  # strict JSON: NaN became null
    assert json.loads(text)["per_class"]["c"]["auc"] is None


def test_degenerate_single_class_binary_does_not_crash() -> None:
    p1 = np.linspace(0.1, 0.9, 20)
    m = compute_metrics(np.ones(20, int), np.c_[1 - p1, p1], ["b", "m"], n_boot=50)
    assert np.isnan(m["auc"]) and np.isnan(m["specificity"])
    assert m["sensitivity"] == pytest.approx((p1 >= 0.5).mean())
    assert m["notes"]
    assert json_safe(m)["ci95"]["auc"] == [None, None]


def test_input_errors_name_the_fix() -> None:
    with pytest.raises(DataError, match="sum to 1"):
        compute_metrics(np.array([0, 1]), np.array([[0.5, 0.9], [0.5, 0.5]]), ["a", "b"], n_boot=0)
    with pytest.raises(DataError, match=r"\[n, 3\]"):
        compute_metrics(np.array([0, 1]), np.full((2, 2), 0.5), ["a", "b", "c"], n_boot=0)
    with pytest.raises(DataError, match="class indices"):
        compute_metrics(np.array([0, 5]), np.full((2, 2), 0.5), ["a", "b"], n_boot=0)
    with pytest.raises(DataError, match="group"):
        compute_metrics(np.array([0, 1]), np.full((2, 2), 0.5), ["a", "b"], groups=np.array(["g"]), n_boot=0)


@pytest.mark.slow
def test_ten_thousand_images_thousand_resamples_in_seconds() -> None:
    y, p = _probs(10_000, 7, seed=9)
    groups = np.arange(10_000) // 3
    start = time.perf_counter()
    m = compute_metrics(y, p, [f"c{i}" for i in range(7)], groups=groups, n_boot=1000)
    elapsed = time.perf_counter() - start
    assert m["bootstrap"]["n_resamples"] == 1000
    assert elapsed < 20, f"{elapsed:.1f}s"  # about 1.5 s on one laptop core; generous for a shared CI machine


def test_paired_bootstrap_detects_a_better_model() -> None:
    rng = np.random.default_rng(10)
    y = rng.integers(0, 2, 400)
    good = 1 / (1 + np.exp(-(2.0 * (2 * y - 1) + rng.normal(size=400))))
    bad = 1 / (1 + np.exp(-(0.3 * (2 * y - 1) + rng.normal(size=400))))
    res = paired_bootstrap(y, np.c_[1 - good, good], np.c_[1 - bad, bad], ["b", "m"], n_boot=300)
    assert res["auc"]["diff"] > 0 and res["auc"]["ci95"][0] > 0 and res["auc"]["p_value"] < 0.01
    same = paired_bootstrap(y, np.c_[1 - good, good], np.c_[1 - good, good], ["b", "m"], n_boot=100)
    assert same["auc"]["diff"] == 0 and same["accuracy"]["ci95"] == [0.0, 0.0]


def _wilson(k: int, n: int, z: float = norm.ppf(0.975)) -> tuple[float, float]:
    """The Wilson score interval written out (Wilson 1927), independent of the implementation under test."""
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return centre - half, centre + half


def test_a_collapsed_bootstrap_is_replaced_by_the_wilson_interval() -> None:
    """15 positives, all caught: every resample says 1.000, which hides how few cases there were."""
    y = np.r_[np.zeros(15, int), np.ones(15, int)]
    p1 = np.r_[np.linspace(0.05, 0.3, 15), np.linspace(0.7, 0.95, 15)]
    m = compute_metrics(y, np.c_[1 - p1, p1], ["b", "m"], n_boot=500)
    assert m["sensitivity"] == 1.0
    lo, hi = m["ci95"]["sensitivity"]
    assert lo < 0.85 and hi == pytest.approx(1.0)
    assert (lo, hi) == pytest.approx(_wilson(15, 15))
    assert m["ci95_method"]["sensitivity"] == "wilson" and "sensitivity" in m["ci95_degenerate"]
    assert m["ci95"]["accuracy"] == pytest.approx(_wilson(30, 30))
    # per-class recall too; the AUC has no exact interval, so its collapsed bootstrap stays and is marked
    assert m["per_class_ci95"]["m"]["recall"] == pytest.approx(_wilson(15, 15))
    assert m["per_class_ci95_method"]["m"]["recall"] == "wilson"
    assert m["ci95"]["auc"] == [1.0, 1.0] and m["ci95_method"]["auc"] == "bootstrap (degenerate)"
    json.dumps(json_safe(m), allow_nan=False)


def test_few_distinct_resamples_also_count_as_collapsed() -> None:
    # 5 positives, 4 caught: the resampled sensitivity takes at most 6 values
    y = np.r_[np.zeros(60, int), np.ones(5, int)]
    p1 = np.r_[np.linspace(0.05, 0.45, 60), [0.9, 0.8, 0.7, 0.6, 0.2]]
    m = compute_metrics(y, np.c_[1 - p1, p1], ["b", "m"], n_boot=500)
    assert m["sensitivity"] == pytest.approx(0.8)
    assert m["ci95_method"]["sensitivity"] == "wilson"
    assert "distinct" in m["ci95_degenerate"]["sensitivity"]
    assert m["ci95"]["sensitivity"] == pytest.approx(_wilson(4, 5))


def test_a_usable_bootstrap_is_kept_with_the_wilson_interval_beside_it() -> None:
    y, p = _probs(600, 2, seed=11)
    m = compute_metrics(y, p, ["b", "m"], n_boot=500)
    assert 0.05 < m["sensitivity"] < 0.95
    assert m["ci95_method"]["sensitivity"] == "bootstrap" and not m["ci95_degenerate"]
    tp = int(((p[:, 1] >= 0.5) & (y == 1)).sum())
    assert m["wilson95"]["sensitivity"] == pytest.approx(_wilson(tp, int((y == 1).sum())))
    # on a few hundred cases the two methods agree about the width
    (blo, bhi), (wlo, whi) = m["ci95"]["sensitivity"], m["wilson95"]["sensitivity"]
    assert 0.7 < (bhi - blo) / (whi - wlo) < 1.4
    # balanced accuracy's exact-style interval is the mean of its per-class recall intervals
    recalls = [_wilson(int(((p.argmax(1) == c) & (y == c)).sum()), int((y == c).sum())) for c in (0, 1)]
    assert m["wilson95"]["balanced_accuracy"] == pytest.approx(np.mean(recalls, axis=0))
