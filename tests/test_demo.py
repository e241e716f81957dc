from __future__ import annotations

import json

import pytest

from medclf.cli import main


@pytest.mark.slow
def test_demo_runs_every_step_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n", "96", "--input-size", "64"]) == 0
    printed = capsys.readouterr().out
    for step in ("[1/6]", "[6/6]", "report", "medclf app", "not a diagnosis"):
        assert step in printed
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["n"] > 0 and 0.0 <= metrics["auc"] <= 1.0
    assert metrics["ci95"]["auc"][0] <= metrics["auc"] <= metrics["ci95"]["auc"][1]
    assert (out / "eval" / "report.html").stat().st_size > 10_000
    assert (out / "audit" / "audit.json").is_file()
    assert (out / "model.onnx").is_file()
    assert (out / "run" / "model.safetensors").is_file()
    # the split is grouped by patient: no patient in two parts
    import pandas as pd

    split = pd.read_csv(out / "split.csv")
    assert split.groupby("group")["split"].nunique().max() == 1
