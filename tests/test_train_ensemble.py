"""`medclf ensemble`: runs with different backbones and input sizes, one split, one run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from _fixtures_train import make_folder_data, tiny_cfg
from medclf.cli import main
from medclf.errors import ConfigError
from medclf.models import load_run
from medclf.train import train
from medclf.train.ensemble import build_run_ensemble


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("ens")
    data = make_folder_data(root / "d", n_per_class=12)
    # different backbones, input sizes (96 / 64 px) and normalisations (0.5 / ImageNet), the same split
    a = train(tiny_cfg(data, "train.epochs=2", "model.input_size=96"), root / "tiny", progress=False)
    b = train(
        tiny_cfg(data, "train.epochs=1", "model.name=resnet_small", "train.lr=0.003"),
        root / "res",
        progress=False,
    )
    return data, a, b


@pytest.mark.slow
def test_ensemble_averages_members_on_their_own_inputs(two_runs, tmp_path: Path, capsys) -> None:
    _, a, b = two_runs
    out = tmp_path / "ens"
    assert main(["ensemble", str(a), str(b), "--out", str(out)]) == 0
    assert "ensemble of 2 runs" in capsys.readouterr().out
    info = json.loads((out / "run.json").read_text())
    # the ensemble reads images as its largest member does (tiny_cnn at 96 px, mean = std = 0.5)
    assert info["strategy"] == "ensemble" and info["preprocessing"]["input_size"] == 96
    assert info["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert [m["input_size"] for m in info["ensemble"]["member_inputs"]] == [96, 64]
    # this process's seconds (choosing the operating point), the members' training time apart
    assert 0 < info["train_seconds"] < 600 and info["train_seconds_members"] > 0

    ens, ra, rb = load_run(out), load_run(a), load_run(b)
    x = torch.rand(3, 3, 96, 96) * 2 - 1  # normalised the ensemble's (= tiny_cnn's) way
    with torch.no_grad():
        # what resnet_small's own preprocessing (64 px, ImageNet mean/std) would give for the same pixels
        pixels = torch.nn.functional.interpolate(
            x * 0.5 + 0.5, size=(64, 64), mode="bilinear", align_corners=False
        )
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        xb = (pixels - mean) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        want = (
            torch.softmax(ra.model(x) / ra.temperature, 1) + torch.softmax(rb.model(xb) / rb.temperature, 1)
        ) / 2
        got = torch.softmax(ens.model(x), 1)  # before the ensemble's own temperature: the plain average
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    # a run like any other: threshold from its validation predictions, test predictions, evaluate, export
    val = pd.read_csv(out / "val_predictions.csv")
    split = pd.read_csv(a / "split.csv")
    assert len(val) == int((split["split"] == "val").sum()) and (out / "test_predictions.csv").is_file()
    assert info["threshold"] is not None and info["threshold_rule"] == "youden"
    from medclf.evaluate.pipeline import evaluate_run
    from medclf.serve.export import export_onnx

    metrics = evaluate_run(out, tmp_path / "ev", n_boot=20)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert export_onnx(out, tmp_path / "ens.onnx", ood=False).max_abs_diff_probs < 1e-4


def test_ensemble_refuses_runs_on_different_splits(two_runs, tmp_path: Path) -> None:
    data, a, _ = two_runs
    other = train(tiny_cfg(data, "train.epochs=1", "data.seed=7"), tmp_path / "other", progress=False)
    with pytest.raises(ConfigError, match=r"different (val|test) images"):
        build_run_ensemble([a, other], tmp_path / "ens")
    with pytest.raises(ConfigError, match="at least 2 run folders"):
        build_run_ensemble([a], tmp_path / "ens1")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "run.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run"):
        build_run_ensemble([a, a], tmp_path / "taken")
