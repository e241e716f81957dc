"""Class weights and focal loss against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medclf.errors import ConfigError
from medclf.train.losses import FocalLoss, class_weights


def test_inverse_frequency_and_its_square_root() -> None:
    labels = np.array([0] * 60 + [1] * 1)  # HAM-like imbalance: class 1 is 60x rarer
    full = class_weights(labels, 2)
    soft = class_weights(labels, 2, power=0.5)
    np.testing.assert_allclose(full.numpy(), [61 / 120, 61 / 2], rtol=1e-6)
    np.testing.assert_allclose(soft.numpy(), np.sqrt(full.numpy()), rtol=1e-6)
    assert float(full[1] / full[0]) == pytest.approx(60.0)
    assert float(soft[1] / soft[0]) == pytest.approx(60.0**0.5)
    np.testing.assert_allclose(class_weights(labels, 2, power=0.0).numpy(), [1.0, 1.0])


def test_balanced_data_gets_unit_weights_and_negative_power_fails() -> None:
    np.testing.assert_allclose(class_weights(np.array([0, 1, 2] * 5), 3, power=0.5).numpy(), 1.0)
    with pytest.raises(ConfigError, match="class_weight_power"):
        class_weights(np.array([0, 1]), 2, power=-1)


def test_focal_loss_with_gamma_zero_is_weighted_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    w = torch.tensor([0.5, 1.0, 2.0])
    expected = F.cross_entropy(logits, target, weight=w, label_smoothing=0.1)
    got = FocalLoss(gamma=0.0, weight=w, label_smoothing=0.1)(logits, target)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert float(FocalLoss(gamma=2.0)(logits, target)) < float(F.cross_entropy(logits, target))
