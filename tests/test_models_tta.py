"""Test-time augmentation: the wrapper's arithmetic, its errors, and a run that carries it everywhere."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from _fixtures_train import make_folder_data, tiny_cfg
from medclf.errors import ConfigError
from medclf.models import create_model
from medclf.models.tta import TTA_VIEWS, TTAModel, check_tta_views, unwrap_tta, with_tta


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("tiny_cnn", 3, pretrained=False).eval()


def test_views_are_the_dihedral_transforms() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    torch.testing.assert_close(TTA_VIEWS["hflip"](x), torch.flip(x, dims=(3,)))
    torch.testing.assert_close(TTA_VIEWS["vflip"](x), torch.flip(x, dims=(2,)))
    for k, name in ((1, "rot90"), (2, "rot180"), (3, "rot270")):
        torch.testing.assert_close(TTA_VIEWS[name](x), torch.rot90(x, k=-k, dims=(2, 3)))


def test_features_are_the_mean_over_views_and_logits_follow() -> None:
    model = _model()
    wrapped = with_tta(model, ["hflip", "rot90"])
    assert isinstance(wrapped, TTAModel) and unwrap_tta(wrapped) is model
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        views = [x, x.flip(3), torch.rot90(x, k=-1, dims=(2, 3))]
        want = torch.stack([model.forward_features(v) for v in views]).mean(0)
        torch.testing.assert_close(wrapped.forward_features(x), want)
        torch.testing.assert_close(wrapped(x), model.forward_head(want))
        # a linear head: averaging features before it is averaging the logits
        torch.testing.assert_close(wrapped(x), torch.stack([model(v) for v in views]).mean(0))
        # a different input than its flip really changes the prediction (the views are not ignored)
        assert not torch.allclose(wrapped(x), model(x))
    # no views: the model itself; the wrapper exposes the inner model's surface
    assert with_tta(model, []) is model and with_tta(wrapped, None) is model
    assert wrapped.head is model.head and wrapped.cam_layer is model.cam_layer
    assert wrapped.num_classes == 3 and wrapped.num_features == model.num_features
    # nothing of the wrapper's own is saved: its parameters are the model's, under the `model.` prefix
    assert set(wrapped.state_dict()) == {f"model.{k}" for k in model.state_dict()}


def test_bad_views_name_the_key_and_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"eval.tta: unknown test-time view 'mirror'.*hflip, vflip"):
        check_tta_views(["mirror"])
    with pytest.raises(ConfigError, match="listed twice"):
        check_tta_views(["hflip", "hflip"])
    meta_only = create_model("metadata_mlp", 2, pretrained=False, num_meta=3)
    with pytest.raises(ConfigError, match="does not look at images"):
        with_tta(meta_only, ["hflip"])
    wrapped = with_tta(_model(), ["rot90"])
    with pytest.raises(ConfigError, match="square inputs"):
        wrapped(torch.rand(1, 3, 32, 48))


def test_a_run_trained_with_tta_uses_it_in_every_prediction(tmp_path: Path) -> None:
    from medclf.explain import compute_cam
    from medclf.models import load_run
    from medclf.models.inference import predict_frame, predict_records
    from medclf.serve import Predictor
    from medclf.serve.export import export_onnx
    from medclf.train import train

    data = make_folder_data(tmp_path / "d", n_per_class=12)
    run_dir = train(
        tiny_cfg(data, "train.epochs=2", "eval.tta=[hflip, vflip]"), tmp_path / "run", progress=False
    )
    info = json.loads((run_dir / "run.json").read_text())
    assert info["tta"] == ["hflip", "vflip"]
    run = load_run(run_dir)
    assert isinstance(run.model, TTAModel) and run.model.views == ("hflip", "vflip")

    # the stored validation predictions (temperature and threshold were fitted on them) were made with the views
    val = pd.read_csv(run_dir / "val_predictions.csv")
    split = pd.read_csv(run_dir / "split.csv")
    again = predict_frame(run, split[split["split"] == "val"])
    cols = [f"prob_{c}" for c in run.classes]
    pd.testing.assert_frame_equal(again[cols].reset_index(drop=True), val[cols], check_exact=False, atol=1e-6)
    # (logits, not the saturated probabilities of this easy data, show that the views change the prediction)
    _, logits_tta, _ = predict_records(run, split[split["split"] == "val"])
    _, logits_plain, _ = predict_records(
        dataclasses.replace(run, model=unwrap_tta(run.model)), split[split["split"] == "val"]
    )
    assert abs(logits_tta - logits_plain).max() > 1e-3

    # the predictor (torch and ONNX) and the export see the same averaged model; Grad-CAM explains one view
    image = next(iter(sorted(data.rglob("*.png"))))
    p_torch = Predictor.from_run(run_dir, backend="torch", ood=False).predict(image)[0]
    p_onnx = Predictor.from_run(run_dir, backend="onnx", ood=False).predict(image)[0]
    for c in run.classes:
        assert p_onnx.probabilities[c] == pytest.approx(p_torch.probabilities[c], abs=1e-4)
    assert export_onnx(run_dir, tmp_path / "m.onnx", ood=False).max_abs_diff_probs < 1e-4
    heat = compute_cam(run.model, torch.rand(3, 32, 32))
    assert heat.shape == (32, 32)


@pytest.mark.slow
def test_a_fold_ensemble_keeps_the_folds_views(tmp_path: Path) -> None:
    from medclf.models import load_run
    from medclf.train.cv import run_cv

    data = make_folder_data(tmp_path / "d", n_per_class=12)
    cfg = tiny_cfg(data, "train.epochs=1", "data.val=0.2", "eval.tta=[vflip]")
    result = run_cv(cfg, tmp_path / "cv", folds=3, progress=False, ensemble=True)
    ens = load_run(result["ensemble"])
    # the threshold was chosen on out-of-fold predictions made with the views, so the ensemble predicts with them
    assert isinstance(ens.model, TTAModel) and ens.model.views == ("vflip",)
    # the members hold the folds' own weights (saved without the wrapper's prefix)
    member = load_run(tmp_path / "cv" / "fold_0")
    assert isinstance(member.model, TTAModel)
    inner = unwrap_tta(member.model).state_dict()
    got = unwrap_tta(ens.model).members[0].state_dict()
    assert inner.keys() == got.keys() and all(torch.equal(inner[k], got[k]) for k in inner)
