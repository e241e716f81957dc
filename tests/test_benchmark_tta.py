"""benchmarks/tta.py reproduces the product's test-time augmentation on the same weights (smoke run, tiny data)."""

from __future__ import annotations

import json
from pathlib import Path

from _fixtures_train import load_benchmark, make_folder_data, tiny_cfg
from medclf.train import train


def test_tta_benchmark_matches_the_runs_own_predictions(tmp_path: Path) -> None:
    bench = load_benchmark("tta")

    data = make_folder_data(tmp_path / "d", n_per_class=12)
    run_dir = train(
        tiny_cfg(data, "train.epochs=2", "eval.tta=[hflip, vflip]"), tmp_path / "run", progress=False
    )
    out = tmp_path / "rows.jsonl"
    doc = tmp_path / "page.md"
    bench.main(
        [
            str(run_dir),
            "--sets",
            "none",
            "hflip,vflip",
            "--bootstrap",
            "20",
            "--out",
            str(out),
            "--doc",
            str(doc),
        ]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["views"] for r in rows] == [[], ["hflip", "vflip"]]
    # the set the run was trained with reproduces its stored test predictions; the other set is not compared
    assert rows[0]["max_diff_vs_run"] is None
    assert rows[1]["max_diff_vs_run"] is not None and rows[1]["max_diff_vs_run"] < 1e-5
    assert 0.0 <= rows[1]["accuracy"] <= 1.0
    assert "<!-- tta:start -->" in doc.read_text() and "hflip, vflip" in doc.read_text()
