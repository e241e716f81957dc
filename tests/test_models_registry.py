"""The model registry, the one model surface, the timm adapter and preprocessing resolution."""

from __future__ import annotations

import pytest
import torch

from medclf.errors import ConfigError, MedclfError
from medclf.models import create_model, list_models, resolve_preprocessing
from medclf.models.base import FusionHead

torch.set_num_threads(1)

SMALL = ["tiny_cnn", "mpox_cnn", "cxr_cnn", "resnet_small"]


@pytest.mark.parametrize("name", SMALL)
def test_small_cnn_surface(name: str) -> None:
    model = create_model(name, 3, drop_rate=0.1).eval()
    pre = resolve_preprocessing(model)
    x = torch.randn(2, pre.in_chans, pre.input_size, pre.input_size)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features)
    logits = model(x)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(model.forward_head(feats), logits)
    assert isinstance(model.cam_layer, torch.nn.Module)
    assert model.medclf_spec["name"] == name
    groups = model.block_groups()
    head_ids = {id(p) for p in model.head.parameters()}
    assert groups and all(id(p) not in head_ids for g in groups for p in g)


def test_study_architectures() -> None:
    mpox = create_model("mpox_cnn", 2)
    convs = [m for m in mpox.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(20, (5, 5)), (50, (5, 5))]
    assert resolve_preprocessing("mpox_cnn").input_size == 32
    cxr = resolve_preprocessing("cxr_cnn")
    assert (cxr.input_size, cxr.in_chans) == (128, 1)
    assert sum(p.numel() for p in create_model("tiny_cnn", 2).parameters()) < 10_000


def test_registry_lists_small_and_offline() -> None:
    names = list_models()
    for n in [*SMALL, "efficientnet_lite0"]:
        assert n in names


def test_any_timm_name_and_fusion() -> None:
    model = create_model("resnet10t", 4, num_meta=5, in_chans=1).eval()
    assert isinstance(model.head, FusionHead)
    pre = resolve_preprocessing(model, input_size=64)
    assert (pre.in_chans, pre.input_size) == (1, 64)
    out = model(torch.randn(2, 1, 64, 64), torch.randn(2, 5))
    assert out.shape == (2, 4)
    with pytest.raises(ValueError, match="meta"):
        model(torch.randn(2, 1, 64, 64))
    assert len(model.block_groups()) >= 3


def test_offline_lite_preprocessing_matches_weights() -> None:
    pre = resolve_preprocessing("efficientnet_lite0")
    assert pre.mean == (0.5, 0.5, 0.5) and pre.input_size == 224
    assert resolve_preprocessing("efficientnet_lite2").input_size == 260


def test_meta_only_model() -> None:
    model = create_model("efficientnet_lite0", 3, meta_only=True, num_meta=6)
    assert model.num_features == 0 and model.cam_layer is None
    assert model(None, torch.randn(4, 6)).shape == (4, 3)
    with pytest.raises(ConfigError, match="metadata"):
        create_model("tiny_cnn", 3, meta_only=True)


def test_errors_are_user_fixable() -> None:
    with pytest.raises(ConfigError, match="unknown model 'no_such_net'"):
        create_model("no_such_net", 2)
    with pytest.raises(ConfigError, match="pretrained"):
        create_model("tiny_cnn", 2, pretrained=True)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("tiny_cnn", 1)


def test_pretrained_download_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCLF_OFFLINE", "1")
    with pytest.raises(MedclfError, match="efficientnet_lite0"):
        create_model("resnet18", 2, pretrained=True)


def test_models_cli(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from medclf.models._cli import _run

    assert _run(argparse.Namespace(no_params=True)) == 0
    out = capsys.readouterr().out
    assert "tiny_cnn" in out and "efficientnet_lite0" in out and "yes" in out
