"""`medclf train / cv / tune` on the command line (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from _fixtures_train import make_folder_data
from medclf.cli import main

torch.set_num_threads(1)

TINY = [
    "--set",
    "model.name=tiny_cnn",
    "--set",
    "model.pretrained=false",
    "--set",
    "train.strategy=scratch",
    "--set",
    "train.epochs=1",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.augment=none",
    "--quiet",
]


def test_train_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder_data(tmp_path / "d", n_per_class=10)
    assert main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "run folder" in out and "not a diagnosis" in out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model"]["name"] == "tiny_cnn"
    # the run is named after the data folder
    assert json.loads((tmp_path / "run" / "run.json").read_text())["name"] == "d"
    # a finished run is not silently overwritten, and is not offered --resume: one message, with or without it
    for resume in ([], ["--resume"]):
        assert main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "run"), *resume]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "already holds a finished run" in err and "--resume" not in err
        assert f"medclf evaluate {tmp_path / 'run'} --out" in err and "another --out folder" in err
    # a bad key is one clear line
    assert main(["train", "--data", str(data), "--set", "train.nope=1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_train_skip_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder_data(tmp_path / "d", n_per_class=10)
    (data / "benign" / "broken.png").write_text("not an image")
    (data / "malignant" / "empty.png").write_bytes(b"")
    # stopped before training with every bad file named, and the advice is an option `medclf train` takes
    assert main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "2 bad inputs" in err and "broken.png" in err and "empty.png" in err and "pass --skip-bad" in err
    assert not (tmp_path / "a").exists()
    assert main(["train", "--data", str(data), *TINY, "--skip-bad", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    cfg = (tmp_path / "b" / "config.yaml").read_text()
    assert "skip_bad: true" in cfg
    split = (tmp_path / "b" / "split.csv").read_text()
    assert "broken.png" not in split and "empty.png" not in split


def test_cv_cli_requires_data_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cv", "--out", str(tmp_path / "cv")]) == 2
    assert "--data" in capsys.readouterr().err


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "cv", "tune", "models"):
        assert cmd in out


def test_help_does_not_load_torch() -> None:
    # `medclf --help` and a mistyped command answer at once: building the parser imports no heavy library
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from medclf.cli import build_parser\n"
        "build_parser().format_help()\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'lightning', 'onnxruntime') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_models_lists_every_registered_model(capsys: pytest.CaptureFixture[str]) -> None:
    from medclf.models import list_models

    assert main(["models"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert set(list_models()) <= set(rows)
    # built models report their size; the fold ensemble exists only as a cv result, so it has none
    assert rows["tiny_cnn"][3].replace(",", "").isdigit() and rows["fold_ensemble"][3] == "-"
    assert rows["efficientnet_lite0"][4] == "yes"


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    "name", ["skin_bm", "ham10000_fusion", "cxr_pneumonia3", "mpox_kfold", "skin_backbones"]
)
def test_recipes_load(name: str) -> None:
    from medclf.config import load_config

    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    if cfg.data.spec:
        assert Path(str(cfg.data.spec)).is_file()


@pytest.mark.slow
def test_mpox_recipe_on_synthetic_fold_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medclf.data import synth_dataset

    synth_dataset(tmp_path / "msld", layout="kfold", n=30, size=32, folds=3, seed=2)
    args = [
        "cv",
        str(CONFIGS / "mpox_kfold.yaml"),
        "--data",
        str(tmp_path / "msld"),
        "--set",
        "train.epochs=1",
        "--quiet",
        "--out",
        str(tmp_path / "cv"),
    ]
    assert main(args) == 0
    result = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert len(result["folds"]) == 3 and result["premade_folds"]
    assert json.loads((tmp_path / "cv" / "fold_0" / "run.json").read_text())["model"]["name"] == "mpox_cnn"


@pytest.mark.slow
def test_cv_without_config_runs_the_default_recipe(tmp_path: Path) -> None:
    """`medclf cv --data DIR` with no CONFIG: offline-pretrained Lite0, every layer, within a budget per fold."""
    from medclf.data import synth_dataset
    from medclf.train.engine import default_recipe

    default = default_recipe()
    assert (default.model.name, default.model.pretrained) == ("efficientnet_lite0", True)
    assert (default.train.strategy, default.train.budget, default.train.ema) == ("full", "10m", 0.99)
    synth_dataset(tmp_path / "data", n=24, size=48, seed=3)
    args = ["cv", "--data", str(tmp_path / "data"), "--folds", "2", "--quiet", "--out", str(tmp_path / "cv")]
    args += ["--set", "train.epochs=2", "--set", "model.input_size=64", "--set", "train.low_res_size=48"]
    assert main(args) == 0
    run = json.loads((tmp_path / "cv" / "fold_1" / "run.json").read_text())
    assert run["model"]["name"] == "efficientnet_lite0" and run["strategy"] == "full"
    assert run["budget"]["budget_s"] == 600 and run["budget"]["input_size"] == 64
    assert len(json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())["folds"]) == 2


@pytest.mark.slow
def test_train_without_config_runs_the_default_recipe_within_its_budget(tmp_path: Path) -> None:
    from medclf.data import synth_dataset

    synth_dataset(tmp_path / "data", n=24, size=48, seed=3)
    args = ["train", "--data", str(tmp_path / "data"), "--quiet", "--out", str(tmp_path / "run")]
    args += ["--set", "train.epochs=2", "--set", "model.input_size=64", "--budget", "5m"]
    assert main(args) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["strategy"] == "full" and run["budget"]["budget_s"] == 300 and run["epochs_run"] == 2


def test_train_warns_about_small_splits_and_skips_fits_they_cannot_support(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    data = make_folder_data(tmp_path / "d", n_per_class=12, classes=("a", "b", "c"))
    rows = []
    for path in sorted(data.rglob("*.png")):
        label, i = path.parent.name, int(path.stem[2:5]) * 2 + int(path.stem[-1])
        # class c only in train: val and test have none of it
        split = "train" if label == "c" or i < 6 else "val" if i < 9 else "test"
        rows.append({"path": str(path), "label": label, "group": path.stem, "split": split})
    pd.DataFrame(rows).to_csv(tmp_path / "split.csv", index=False)
    args = ["train", "--data", str(data), *TINY, "--out", str(tmp_path / "run")]
    args += ["--set", f"data.split_csv={tmp_path / 'split.csv'}", "--set", "eval.positive_classes=[c]"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "warning: test has no image of class 'c'" in out and "warning: val has no image of class 'c'" in out
    )
    assert "warning: temperature scaling not fitted" in out and "warning: operating point not chosen" in out
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert any("test has no image of class 'c'" in w for w in info["warnings"])
    # 6 validation images: T = 1 and the default threshold, each with the reason
    assert info["temperature"] == 1.0 and "6 validation images" in info["temperature_skipped"]
    assert info["threshold"] == 0.5 and "0 positive" in info["threshold_skipped"]
