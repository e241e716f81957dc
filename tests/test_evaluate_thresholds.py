"""Operating-point selection: rules, edge cases, one-vs-rest, the sweep."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from medclf.errors import ConfigError, DataError
from medclf.evaluate.thresholds import (
    choose_threshold,
    choose_threshold_ovr,
    decide,
    parse_rule,
    positive_scores,
    resolve_positive_classes,
    threshold_skip_reason,
    threshold_sweep,
)


def _data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * (2 * y - 1))))
    return y, p


def _rates(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    called = p >= t
    return called[y == 1].mean(), (~called[y == 0]).mean()


def test_parse_rule() -> None:
    assert parse_rule("youden") == ("youden", None)
    assert parse_rule("sensitivity:0.95") == ("sensitivity", 0.95)
    assert parse_rule("SPEC:0.9") == ("specificity", 0.9)
    assert parse_rule("0.3") == ("fixed", 0.3)
    assert parse_rule(0.7) == ("fixed", 0.7)
    for bad in ("median", "sensitivity:high", "1.5", "specificity:-0.1"):
        with pytest.raises(ConfigError):
            parse_rule(bad)


def test_youden_matches_sklearn_roc_curve() -> None:
    y, p = _data()
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    expected = thr[np.argmax(j)]
    t = choose_threshold(y, p, "youden")
    assert t == pytest.approx(expected)
    sens, spec = _rates(y, p, t)
    assert sens + spec - 1 == pytest.approx(j.max())


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_target_is_met_with_best_specificity(target: float) -> None:
    y, p = _data()
    t = choose_threshold(y, p, f"sensitivity:{target}")
    sens, _ = _rates(y, p, t)
    assert sens >= target
    # any higher candidate threshold misses the target: this one is the most specific that meets it
    higher = np.unique(p[p > t])
    assert all(_rates(y, p, h)[0] < target for h in higher[:5])


@pytest.mark.parametrize("target", [0.5, 0.9, 0.99])
def test_specificity_target_is_met_with_best_sensitivity(target: float) -> None:
    y, p = _data()
    t = choose_threshold(y, p, f"specificity:{target}")
    _, spec = _rates(y, p, t)
    assert spec >= target
    lower = np.unique(p[p < t])[::-1]
    assert all(_rates(y, p, lo)[1] < target for lo in lower[:5])


def test_fixed_threshold_and_ties() -> None:
    assert choose_threshold(np.array([0, 1]), np.array([0.2, 0.8]), "0.35") == 0.35
    # all scores tied: the only candidate threshold calls everything positive
    y = np.array([0, 1, 0, 1])
    assert choose_threshold(y, np.full(4, 0.5), "youden") == 0.5


def test_one_class_only_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="no positive cases"):
        choose_threshold(np.zeros(10, int), np.linspace(0, 1, 10), "youden")
    with pytest.raises(DataError, match="0 \\(negative\\) or 1"):
        choose_threshold(np.array([0, 2]), np.array([0.1, 0.2]), "youden")


def test_one_vs_rest_sums_the_positive_classes() -> None:
    rng = np.random.default_rng(1)
    classes = ["nv", "mel", "bcc", "bkl"]
    y = rng.integers(0, 4, 300)
    logits = rng.normal(size=(300, 4))
    logits[np.arange(300), y] += 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    score = positive_scores(probs, classes, ["mel", "bcc"])
    np.testing.assert_allclose(score, probs[:, 1] + probs[:, 2])
    t = choose_threshold_ovr(y, probs, classes, ["mel", "bcc"], "sensitivity:0.9")
    assert t == choose_threshold(np.isin(y, [1, 2]).astype(int), score, "sensitivity:0.9")
    with pytest.raises(ConfigError, match="akiec"):
        positive_scores(probs, classes, ["akiec"])


def test_threshold_sweep_counts_match_brute_force() -> None:
    y, p = _data(200)
    sweep = threshold_sweep(y, p, np.array([0.0, 0.25, 0.5, 0.75, 1.0]))
    for i, t in enumerate(sweep["threshold"]):
        called = p >= t
        tp, fp = (called & (y == 1)).sum(), (called & (y == 0)).sum()
        assert sweep["tp"][i] == tp and sweep["fp"][i] == fp
        assert sweep["sensitivity"][i] == pytest.approx(tp / (y == 1).sum())
    assert len(threshold_sweep(y, p)["threshold"]) == 101
    # nothing called positive at t > max(p): PPV undefined, not a crash
    assert np.isnan(threshold_sweep(y, p, np.array([1.1]))["ppv"][0])


def test_decide_group_rule() -> None:
    classes = ["nv", "mel", "bcc", "akiec"]
    probs = np.array(
        [
            [0.50, 0.20, 0.25, 0.05],  # P(group) = 0.5 >= 0.4: best of the group (bcc), not the arg-max nv
            [0.70, 0.10, 0.15, 0.05],  # P(group) = 0.3 < 0.4: best of the rest (nv)
            [0.10, 0.05, 0.05, 0.80],  # akiec is not in the group: P(group) = 0.1 -> the rest's best is akiec
            [0.30, 0.40, 0.00, 0.30],  # exactly at the threshold counts as positive
        ]
    )
    got = decide(probs, classes, 0.4, ["mel", "bcc"])
    assert [classes[i] for i in got] == ["bcc", "nv", "akiec", "mel"]
    # no threshold or no group: the arg-max
    np.testing.assert_array_equal(decide(probs, classes, None, ["mel", "bcc"]), probs.argmax(1))
    np.testing.assert_array_equal(decide(probs, classes, 0.4, []), probs.argmax(1))
    # the whole set positive: always the best of it
    np.testing.assert_array_equal(decide(probs, classes, 0.99, classes), probs.argmax(1))
    # binary is the special case p_pos >= t
    p2 = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    assert decide(p2, ["benign", "malignant"], 0.35, "malignant").tolist() == [0, 1, 1]
    assert decide(p2, ["benign", "malignant"], 0.35, ["benign"]).tolist() == [0, 1, 0]
    # decided positive is exactly score >= threshold, on random data
    rng = np.random.default_rng(3)
    pr = rng.dirichlet(np.ones(4), 500)
    score = positive_scores(pr, classes, ["mel", "bcc", "akiec"])
    d = decide(pr, classes, 0.6, ["mel", "bcc", "akiec"])
    np.testing.assert_array_equal(d != 0, score >= 0.6)
    with pytest.raises(ConfigError, match="scc"):
        decide(probs, classes, 0.4, ["scc"])
    with pytest.raises(DataError, match="do not match"):
        decide(probs[:, :3], classes, 0.4, ["mel"])


def test_resolve_positive_classes_reads_old_and_new_runs() -> None:
    assert resolve_positive_classes(["b", "m"], "m") == ["m"]
    assert resolve_positive_classes(["b", "m"], None) == ["m"]  # default: the second class
    assert resolve_positive_classes(["b", "m"], "b", ["b"]) == ["b"]
    assert resolve_positive_classes(["nv", "mel", "bcc"], None) == []  # arg-max
    assert resolve_positive_classes(["nv", "mel", "bcc"], None, ["mel", "bcc"]) == ["mel", "bcc"]


def test_no_rule_is_applied_on_a_validation_split_too_small_for_it() -> None:
    y, _ = _data(30)  # 30 images: below the 50 a rule needs, whatever the class mix
    reason = threshold_skip_reason(y, "youden")
    assert reason and "default threshold 0.5" in reason and f"{int(y.sum())} positive" in reason
    y_rare = np.r_[np.ones(6, int), np.zeros(200, int)]  # plenty of images, 6 positives
    assert "6 positive" in threshold_skip_reason(y_rare, "sensitivity:0.95")
    assert threshold_skip_reason(y_rare, 0.3) is None  # a fixed number is not fitted
    big, _ = _data(400)
    assert threshold_skip_reason(big, "youden") is None
