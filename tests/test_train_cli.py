"""`medclf train / cv / tune` on the command line (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medclf.cli import main

from _fixtures_train import make_folder_data

torch.set_num_threads(1)

TINY = ["--set", "model.name=tiny_cnn", "--set", "model.pretrained=false", "--set", "train.strategy=scratch",
        "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "train.augment=none", "--quiet"]


def test_train_cli_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder_data(tmp_path / "d", n_per_class=10)
    assert main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "run folder" in out and "not a diagnosis" in out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model"]["name"] == "tiny_cnn"
    # a finished run is not silently overwritten; a bad key is one clear line
    assert main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--set", "train.nope=1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_cv_cli_requires_data_without_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cv", "--out", str(tmp_path / "cv")]) == 2
    assert "--data" in capsys.readouterr().err


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("train", "cv", "tune", "models"):
        assert cmd in out
