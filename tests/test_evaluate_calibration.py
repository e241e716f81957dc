"""Temperature scaling and calibration error."""

from __future__ import annotations

import numpy as np
import pytest

from medclf.errors import DataError
from medclf.evaluate.calibration import (
    MIN_CALIBRATION_IMAGES,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    log_probs,
    reliability_curve,
    softmax,
    temperature_skip_reason,
)


def _calibrated_logits(n: int = 4000, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true class distribution, so the labels are perfectly calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, k))
    p = softmax(z)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z, y


def test_fit_temperature_recovers_the_scale() -> None:
    z, y = _calibrated_logits()
    assert fit_temperature(z, y) == pytest.approx(1.0, abs=0.12)
    # an over-confident model (logits x 3) needs T ≈ 3
    assert fit_temperature(3 * z, y) == pytest.approx(3.0, rel=0.12)


def test_fit_temperature_works_on_log_probabilities() -> None:
    z, y = _calibrated_logits()
    # softmax ignores a per-row shift, so log-probabilities give the same temperature as logits
    assert fit_temperature(log_probs(softmax(2 * z)), y) == pytest.approx(fit_temperature(2 * z, y), rel=1e-3)


def test_temperature_improves_ece_and_keeps_the_ranking() -> None:
    z, y = _calibrated_logits()
    over = 3 * z
    t = fit_temperature(over, y)
    before, after = softmax(over), apply_temperature(over, t)
    assert expected_calibration_error(after, y) < expected_calibration_error(before, y)
    np.testing.assert_array_equal(before.argmax(1), after.argmax(1))


def test_ece_known_value() -> None:
    # 4 predictions, confidence 0.9 in one bin, 3 correct: |0.9 - 0.75| = 0.15
    probs = np.array([[0.9, 0.1]] * 4)
    y = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probs, y, n_bins=10) == pytest.approx(0.15)
    curve = reliability_curve(probs, y, n_bins=10)
    assert curve["count"][9] == 4 and curve["accuracy"][9] == pytest.approx(0.75)
    assert np.isnan(curve["accuracy"][0])


def test_bad_inputs() -> None:
    with pytest.raises(DataError, match="do not match"):
        fit_temperature(np.zeros((3, 2)), np.zeros(4, int))
    with pytest.raises(DataError, match="positive"):
        apply_temperature(np.zeros((3, 2)), 0.0)
    with pytest.raises(DataError, match="NaN"):
        fit_temperature(np.array([[np.nan, 0.0]]), np.array([0]))


def test_no_temperature_is_fitted_on_a_tiny_validation_split() -> None:
    reason = temperature_skip_reason(30)
    assert reason and "30 validation images" in reason and "T = 1" in reason
    assert (
        temperature_skip_reason(MIN_CALIBRATION_IMAGES - 1)
        and temperature_skip_reason(MIN_CALIBRATION_IMAGES) is None
    )
