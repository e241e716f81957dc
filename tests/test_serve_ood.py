"""Mahalanobis OOD detector: distances against scikit-learn, the calibration quantile, file round trip."""

from __future__ import annotations

from pathlib import Path

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
    ood = FeatureOOD.fit(x, normalize=False)
    lw = LedoitWolf().fit(x)
    q = _data(seed=1, n=20)
    np.testing.assert_allclose(ood.score(q), lw.mahalanobis(q), rtol=1e-4)
    # normalised: the same distance on unit-length features, so the scale of a feature vector does not matter
    unit = FeatureOOD.fit(x)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(unit.score(q), LedoitWolf().fit(xn).mahalanobis(qn), rtol=2e-3)
    np.testing.assert_allclose(unit.score(3.0 * q), unit.score(q), rtol=1e-6)


def test_threshold_is_calibration_quantile_and_flags_far_points() -> None:
    x, val = _data(), _data(seed=2, n=200)
    ood = FeatureOOD.fit(x, val, quantile=0.99, normalize=False)
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


def test_low_rank_form_gives_the_same_scores() -> None:
    rng = np.random.default_rng(0)
    # fewer fit images than dimensions (as served: 400 images, 1280 features): scale·|d|² − |d·U|², U of rank n − 1
    x = rng.normal(size=(30, 96)) @ rng.normal(size=(96, 96))
    ood = FeatureOOD.fit(x)
    factors = ood.low_rank()
    assert factors is not None
    scale, u = factors
    assert u.shape == (96, 29) and u.dtype == np.float32
    q = rng.normal(size=(8, 96)) @ rng.normal(size=(96, 96))
    d = q / np.linalg.norm(q, axis=1, keepdims=True) - ood.mean
    low = scale * (d * d).sum(1) - ((d @ u.astype(np.float64)) ** 2).sum(1)
    np.testing.assert_allclose(low, ood.score(q), rtol=1e-5)
    # more images than dimensions: the precision has full rank and no smaller form
    assert FeatureOOD.fit(_data()).low_rank() is None


def test_save_load_round_trip_and_damaged_file(tmp_path) -> None:
    ood = FeatureOOD.fit(_data(), _data(seed=2, n=50))
    path = tmp_path / "ood.safetensors"
    ood.save(path, weights_sha256="abc")
    back = FeatureOOD.load(path)
    assert back.threshold == ood.threshold and back.n_fit == ood.n_fit and back.normalize
    np.testing.assert_array_equal(back.precision, ood.precision)
    assert FeatureOOD.read_info(path)["weights_sha256"] == "abc"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="rebuilt"):
        FeatureOOD.load(path)
    assert FeatureOOD.read_info(path) == {}


def _datasets() -> Path:
    import os

    return Path(
        os.environ.get("MEDCLF_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets")
    )


@pytest.mark.real_data
@pytest.mark.slow
def test_skin_detector_flags_chest_xrays_and_noise() -> None:
    """ImageNet EfficientNet-Lite0 features of skin_bm: chest X-rays and noise are out, held-out skin is in."""
    import torch
    from PIL import Image

    from medclf.data import load_image
    from medclf.data.transforms import create_transform
    from medclf.models import create_model, resolve_preprocessing

    root = _datasets()
    if not (root / "skin_bm").is_dir() or not (root / "cxr_pneumonia").is_dir():
        pytest.skip(f"real datasets not found at {root} (set MEDCLF_SHARED_DATASETS)")
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    skin = sorted((root / "skin_bm" / "train").glob("*/*.jpg"))
    skin = [skin[i] for i in rng.permutation(len(skin))[:260]]
    cxr = sorted((root / "cxr_pneumonia" / "train").glob("*/*.jpeg"))
    cxr = [cxr[i] for i in rng.permutation(len(cxr))[:60]]
    model = create_model("efficientnet_lite0", 2, pretrained=True).eval()
    tf = create_transform(resolve_preprocessing(model))

    def feats(images: list) -> np.ndarray:
        x = torch.stack([tf(im if isinstance(im, Image.Image) else load_image(im)) for im in images])
        with torch.inference_mode():
            return model.forward_features(x).numpy()

    ood = FeatureOOD.fit(feats(skin[:140]), feats(skin[140:200]))
    held = ood.is_ood(ood.score(feats(skin[200:])))
    xray = ood.is_ood(ood.score(feats(cxr)))
    noise = ood.is_ood(
        ood.score(feats([Image.fromarray(rng.integers(0, 256, (224, 224, 3), np.uint8)) for _ in range(8)]))
    )
    assert held.mean() <= 0.15, held.mean()
    assert xray.mean() >= 0.9, xray.mean()
    assert noise.all()
