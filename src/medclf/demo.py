"""`medclf demo`: the whole path on built-in synthetic data, offline, on a laptop CPU (time: docs/benchmarks.md).

synthetic data → audit → grouped split → train (cached features, the fast CPU strategy) → evaluate with
intervals → HTML report → ONNX export. The data are drawn shapes, not medical images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medclf import DISCLAIMER

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    """Where the demo put things and what it measured."""

    out_dir: Path
    run_dir: Path
    eval_dir: Path
    report: Path
    onnx: Path | None
    metrics: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(
    out_dir: str | Path = "medclf-demo",
    *,
    n: int = 480,
    seed: int = 0,
    model: str = "efficientnet_lite0",
    input_size: int = 160,
    export: bool = True,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run every step on synthetic data under ``out_dir`` and return where the results are."""
    from medclf._lazy import require_extra
    from medclf.config import DataConfig, EvalConfig, ModelConfig, RunConfig, TrainConfig
    from medclf.data import (
        audit_dataset,
        load_dataset,
        make_split,
        summarize_split,
        synth_dataset,
        write_split_csv,
    )
    from medclf.data.audit import write_audit
    from medclf.evaluate.pipeline import evaluate_run
    from medclf.explain.gallery import run_explainer
    from medclf.train import train

    for extra in ("audit", "train", "report"):
        require_extra(extra, "medclf demo")
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    def step(name: str, title: str) -> Callable[[], None]:
        log(f"[{len(seconds) + 1}/6] {title} ...")
        start = time.perf_counter()

        def done() -> None:
            seconds[name] = time.perf_counter() - start
            log(f"      done in {seconds[name]:.1f} s")

        return done

    done = step("synth", f"synthetic lesion images ({n}, with age/sex/site metadata; NOT medical data)")
    data_dir = out / "data"
    synth_dataset(data_dir, layout="csv", n=n, seed=seed, size=128)
    dataset = load_dataset(data_dir)
    done()

    done = step("audit", "dataset audit (duplicates, leakage, imbalance, missing metadata)")
    audit = audit_dataset(dataset)
    write_audit(audit, out / "audit")
    done()

    done = step("split", "split grouped by patient, stratified by label")
    split = make_split(dataset.records, val=0.2, test=0.2, seed=seed)
    split_csv = write_split_csv(split, out / "split.csv")
    log(summarize_split(split, dataset.classes).to_string())
    done()

    done = step("train", f"train ({model} at {input_size} px, cached features + head: the fast CPU strategy)")
    cfg = RunConfig(
        name="demo",
        data=DataConfig(root=str(data_dir), split_csv=str(split_csv), seed=seed),
        model=ModelConfig(
            name=model, pretrained=True, input_size=input_size, metadata=["age", "sex", "site"]
        ),
        # head only (finetune_blocks=0) and two cached views: the cheapest training that still runs the whole path
        train=TrainConfig(
            strategy="cached",
            epochs=40,
            patience=8,
            seed=seed,
            augment="lesion_safe",
            views=2,
            finetune_blocks=0,
        ),
        eval=EvalConfig(threshold="sensitivity:0.90", positive_class="malignant"),
    )
    run_dir = Path(train(cfg, out / "run"))
    done()

    done = step(
        "evaluate", "evaluate on the held-out test split (95% bootstrap intervals, calibration, report)"
    )
    eval_dir = out / "eval"
    metrics = evaluate_run(
        run_dir,
        eval_dir,
        split="test",
        audit_path=out / "audit" / "audit.json",
        explain=run_explainer(run_dir),
    )
    done()

    onnx_path = None
    if export:
        from medclf.serve.export import export_onnx

        done = step("export", "ONNX export with a PyTorch parity check")
        onnx_path = out / "model.onnx"
        rep = export_onnx(run_dir, onnx_path)
        log(f"      max |Δprob| ONNX vs PyTorch = {rep.max_abs_diff_probs:.1e}")
        done()

    result = DemoResult(out, run_dir, eval_dir, eval_dir / "report.html", onnx_path, metrics, seconds)
    _summary(result, audit, log)
    return result


def _fmt(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if value is None:
        return "n/a"
    ci = (metrics.get("ci95") or {}).get(key)
    return f"{value:.3f}" + (f" (95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci and None not in ci else "")


def _summary(res: DemoResult, audit: Any, log: Callable[[str], None]) -> None:
    m = res.metrics
    log("")
    log(f"medclf demo finished in {sum(res.seconds.values()):.0f} s")
    log(f"  test images         {m.get('n')}")
    for key in ("auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity"):
        if key in m:
            log(f"  {key:<19} {_fmt(m, key)}")
    log(f"  report              {res.report}")
    log(f"  run folder          {res.run_dir}")
    if res.onnx:
        log(f"  ONNX model          {res.onnx}")
    log(f"  open the web app:   medclf app {res.run_dir}")
    log(f"  serve a REST API:   medclf serve {res.run_dir}")
    log(DISCLAIMER)
