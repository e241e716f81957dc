"""Grad-CAM family on the tiny model, fusion models (metadata bound), overlays and `medclf explain`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _fixtures_serve import synthetic_image
from medclf.errors import ConfigError
from medclf.explain import CAM_METHODS, MetaBound, compute_cam, overlay_cam

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    from medclf.models import create_model

    torch.manual_seed(0)
    return create_model("tiny_cnn", num_classes=3).eval()


@pytest.mark.parametrize("method", CAM_METHODS)
def test_cam_shape_range_and_weights_untouched(model: torch.nn.Module, method: str) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 32, 32)
    cam = compute_cam(model, x, method=method, target=1)
    assert cam.shape == (32, 32)
    assert cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert cam.max() == pytest.approx(1.0) or cam.max() == 0.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


class _Plain(torch.nn.Module):
    # conv at full resolution, no in-place ops: Grad-CAM can be written out by hand
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, 2)
        self.cam_layer = self.conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_gradcam_matches_manual_computation() -> None:
    # Grad-CAM = ReLU(sum_k mean(dY/dA_k) * A_k), min-max scaled
    torch.manual_seed(1)
    m = _Plain().eval()
    x = torch.randn(1, 3, 8, 8)
    a = m.conv(x)
    y = m.fc(torch.relu(a).mean(dim=(2, 3)))
    (g,) = torch.autograd.grad(y[0, 1], a)
    manual = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))[0].detach().numpy()
    manual = (manual - manual.min()) / (manual.max() - manual.min() + 1e-7)
    cam = compute_cam(m, x, method="gradcam", target=1)
    np.testing.assert_allclose(cam, manual, atol=1e-4)


def test_target_changes_the_map(model: torch.nn.Module) -> None:
    x = torch.randn(3, 32, 32)
    maps = [compute_cam(model, x, target=t) for t in range(3)]
    assert not np.allclose(maps[0], maps[1]) or not np.allclose(maps[1], maps[2])


def test_fusion_model_binds_metadata() -> None:
    from medclf.models import create_model

    torch.manual_seed(0)
    m = create_model("tiny_cnn", num_classes=2, num_meta=4).eval()
    meta = torch.randn(4)
    x = torch.randn(3, 32, 32)
    bound = MetaBound(m, meta[None])
    batch = torch.randn(5, 3, 32, 32)
    expected = m(batch, meta[None].expand(5, 4))
    assert torch.allclose(bound(batch), expected)
    for method in CAM_METHODS:
        cam = compute_cam(m, x, meta=meta, method=method)
        assert cam.shape == (32, 32) and np.isfinite(cam).all()
    with pytest.raises(ValueError, match="metadata"):
        compute_cam(m, x)


def test_no_cam_layer_is_a_clear_error() -> None:
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    with pytest.raises(ConfigError, match="cam_layer"):
        compute_cam(m, torch.randn(3, 4, 4))
    from medclf.models import create_model

    with pytest.raises(ConfigError, match="unknown CAM method"):
        compute_cam(create_model("tiny_cnn", num_classes=2), torch.randn(3, 32, 32), method="lime")


def test_overlay_alpha_blends_between_image_and_heatmap() -> None:
    img = synthetic_image(0, np.random.default_rng(0), size=48)
    cam = np.zeros((32, 32), np.float32)
    cam[8:16, 8:16] = 1.0
    assert np.array_equal(np.asarray(overlay_cam(img, cam, 0.0)), np.asarray(img))
    full = np.asarray(overlay_cam(img, cam, 1.0)).astype(int)
    half = np.asarray(overlay_cam(img, cam, 0.5)).astype(int)
    assert full.shape == (48, 48, 3)
    assert np.abs(half - (np.asarray(img).astype(int) + full) / 2).max() <= 1
    # the hot square is red-ish in the jet colour map, the cold background blue
    assert full[16, 16, 0] > full[16, 16, 2] and full[40, 40, 2] > full[40, 40, 0]
    with pytest.raises(ValueError):
        overlay_cam(img, cam, 1.5)
    wide = Image.new("RGB", (80, 40))
    assert overlay_cam(wide, cam, 0.5, resize="center_crop").size == (40, 40)
    assert overlay_cam(wide, cam, 0.5).size == (80, 40)


def test_explain_cli_writes_png(tiny_run, fusion_run, tmp_path) -> None:
    from medclf.cli import main

    image = next((tiny_run.parent / "images").glob("malignant_*.png"))
    out = tmp_path / "cam.png"
    assert main(["explain", str(tiny_run), str(image), "--out", str(out), "--alpha", "0.7"]) == 0
    im = Image.open(out)
    assert im.format == "PNG" and im.size == Image.open(image).size
    out2 = tmp_path / "fusion.png"
    rc = main(
        [
            "explain",
            str(fusion_run),
            str(image),
            "--out",
            str(out2),
            "--method",
            "gradcam++",
            "--meta",
            "age=50",
            "--meta",
            "sex=female",
            "--target",
            "benign",
        ]
    )
    assert rc == 0 and out2.is_file()
    assert main(["explain", str(tiny_run), str(image), "--out", str(out), "--target", "cat"]) == 2
    assert main(["explain", str(tiny_run), str(tmp_path / "nope.png"), "--out", str(out)]) == 2


def test_cam_from_last_layer_only_equals_full_backward_and_restores_flags(monkeypatch):
    import contextlib

    import torch

    import medclf.explain.cam as cam_mod
    from medclf.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet_small", num_classes=3).eval()
    model.head.requires_grad_(False)  # a frozen part must stay frozen afterwards
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randn(3, *(model.default_cfg["input_size"],) * 2)
    fast = cam_mod.compute_cam(model, x, target=1)
    assert [p.requires_grad for p in model.parameters()] == flags

    # the same map with the whole graph built and the input's gradient taken (pytorch-grad-cam's default)
    monkeypatch.setattr(cam_mod, "_grads_from", lambda m, layer: contextlib.nullcontext())
    monkeypatch.setattr(cam_mod.MetaBound, "forward", lambda self, x: self.model(x))
    model.requires_grad_(True)
    full = cam_mod.compute_cam(model, x, target=1)
    assert np.abs(fast - full).max() < 1e-5
    assert fast.max() > 0
