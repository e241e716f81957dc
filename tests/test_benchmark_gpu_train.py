"""benchmarks/gpu_train.py runs its steps (train, evaluate, table) end to end; on CPU here, on a GPU when lent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _fixtures_train import load_benchmark, make_folder_data, tiny_cfg
from medclf.config import dump_config


@pytest.mark.slow
def test_gpu_benchmark_trains_evaluates_and_writes_its_table(tmp_path: Path) -> None:
    bench = load_benchmark("gpu_train")

    data = make_folder_data(tmp_path / "d", n_per_class=12)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(dump_config(tiny_cfg(data)))
    out, doc = tmp_path / "out", tmp_path / "page.md"
    argv = [
        str(recipe),
        "--out",
        str(out),
        "--accelerator",
        "cpu",
        "--precision",
        "32-true",
        "--workers",
        "0",
    ]
    argv += ["--epochs", "2", "--lr", "0.02", "--variant", "full", "--variant", "finetune"]
    argv += ["--set", "train.head_epochs=1", "--section", "smoke", "--doc", str(doc)]
    bench.main(argv)

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in rows] == ["full", "finetune"]
    for r in rows:
        assert "error" not in r, r
        assert r["epochs_run"] == 2  # finetune: 1 head epoch + 1
        assert r["test_n"] > 0 and 0.0 <= r["accuracy"] <= 1.0
        lo, hi = r["ci95"]["accuracy"]
        assert lo <= r["accuracy"] <= hi
        assert (out / r["variant"] / "eval" / "metrics.json").is_file()
    page = doc.read_text()
    assert "<!-- smoke:start -->" in page and "| `full` | 2 (" in page and "| `finetune` | 2 (" in page
    assert f"{rows[0]['accuracy']:.3f}" in page


@pytest.mark.slow
def test_gpu_benchmark_reports_a_failed_training_as_a_row(tmp_path: Path) -> None:
    bench = load_benchmark("gpu_train")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train: {strategy: cached}\n")
    out = tmp_path / "out"
    bench.main([str(recipe), "--out", str(out), "--accelerator", "cpu", "--data", str(tmp_path / "missing")])
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["error"] == "medclf train exited 2"
    assert "medclf train exited 2" in bench.table([row], "cpu")
