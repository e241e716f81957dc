"""Mahalanobis OOD detector: distances against scikit-learn, the calibration quantile, file round trip."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from medclf.errors import DataError
from medclf.serve.ood import FeatureOOD


def _data(seed: int = 0, n: int = 300, d: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ a + 3.0


def test_score_equals_sklearn_mahalanobis() -> None:
    x = _data()
    ood = FeatureOOD.fit(x)
    lw = LedoitWolf().fit(x)
    q = _data(seed=1, n=20)
    np.testing.assert_allclose(ood.score(q), lw.mahalanobis(q), rtol=1e-4)


def test_threshold_is_calibration_quantile_and_flags_far_points() -> None:
    x, val = _data(), _data(seed=2, n=200)
    ood = FeatureOOD.fit(x, val, quantile=0.99)
    assert ood.calib_split == "val" and ood.n_calib == 200 and ood.n_fit == 300
    assert ood.threshold == pytest.approx(np.quantile(ood.score(val), 0.99))
    assert ood.is_ood(ood.score(val)).mean() <= 0.02
    far = _data(seed=3, n=50) * 4.0 - 20.0
    assert ood.is_ood(ood.score(far)).all()
    # without a validation split the threshold comes from the training features
    assert FeatureOOD.fit(x).calib_split == "train"


def test_fewer_images_than_dimensions_is_stable() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 64))
    ood = FeatureOOD.fit(x)
    assert np.isfinite(ood.score(rng.normal(size=(5, 64)))).all()
    with pytest.raises(DataError):
        FeatureOOD.fit(x[:1])


def test_save_load_round_trip_and_damaged_file(tmp_path) -> None:
    ood = FeatureOOD.fit(_data(), _data(seed=2, n=50))
    path = tmp_path / "ood.safetensors"
    ood.save(path, weights_sha256="abc")
    back = FeatureOOD.load(path)
    assert back.threshold == ood.threshold and back.n_fit == ood.n_fit
    np.testing.assert_array_equal(back.precision, ood.precision)
    assert FeatureOOD.read_info(path)["weights_sha256"] == "abc"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="rebuilt"):
        FeatureOOD.load(path)
    assert FeatureOOD.read_info(path) == {}
