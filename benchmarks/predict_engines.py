"""Validation/test predictions of a trained run: ONNX Runtime (the default on a CPU) against PyTorch eager.

``medclf train`` predicts its validation and test splits at the end of every run, and ``medclf evaluate`` predicts
its data, through ``medclf.models.inference.predict_records``. This times that function on a run's split with
``engine="auto"`` (ONNX Runtime, one image per call and core; the export and the parity check included) and
``engine="torch"``, in alternating rounds, and compares the calibrated probabilities and the decisions.

    python benchmarks/predict_engines.py runs/skin_bm runs/ham_fusion --split val --rounds 2

Writes its section of docs/benchmarks-serving.md (``--doc`` for another page). Research use only: no output of
medclf is a diagnosis.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import DOC, write_section

from medclf.models import load_run
from medclf.models.inference import predict_records, predictions_frame


def one_run(run_dir: Path, split: str, rounds: int) -> dict:
    run = load_run(run_dir)
    rows = pd.read_csv(run_dir / "split.csv")
    rows = rows[rows["split"] == split]
    seconds: dict[str, list[float]] = {"auto": [], "torch": []}
    frames: dict[str, pd.DataFrame] = {}
    for _ in range(rounds):
        for engine in seconds:
            t0 = time.perf_counter()
            kept, logits, _ = predict_records(run, rows, skip_bad=True, engine=engine)
            seconds[engine].append(time.perf_counter() - t0)
            frames[engine] = predictions_frame(run, kept, logits)
    probs = [c for c in frames["auto"].columns if c.startswith("prob_")]
    a, t = frames["auto"], frames["torch"]
    return {
        "run": str(run_dir),
        "images": len(a),
        "views": 1 + len(run.info.tta),
        "metadata": bool(run.meta_encoder),
        "auto_s": min(seconds["auto"]),
        "torch_s": min(seconds["torch"]),
        "max_dprob": float(np.abs(a[probs].to_numpy() - t[probs].to_numpy()).max()),
        "changed": int((a["pred"] != t["pred"]).sum()),
        # where a decision changed: the probability the operating point applies to, under each engine
        "flips": [
            (
                Path(a["path"][i]).name,
                float(a[col][i]),
                float(t[col][i]),
            )
            for i in np.flatnonzero((a["pred"] != t["pred"]).to_numpy())
            for col in [
                f"prob_{run.positive_class}"
                if run.positive_class
                else probs[int(np.argmax(a[probs].iloc[i]))]
            ]
        ],
        "threshold": run.threshold,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders written by medclf train")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per engine (best reported)")
    p.add_argument("--doc", type=Path, default=DOC)
    a = p.parse_args()
    results = [one_run(r, a.split, a.rounds) for r in a.runs]
    lines = [
        f"## Validation/test predictions: ONNX Runtime against PyTorch ({a.split} split)",
        "",
        "`predict_records` on each run's own split, as `medclf train` (validation and test) and `medclf evaluate`"
        " run it: decoding on every core included; for ONNX Runtime the export and the parity check included."
        f" Best of {a.rounds} alternating rounds per engine.",
        "",
        "| run | images | views per image | metadata | ONNX Runtime s (img/s) | PyTorch s (img/s) | speed-up |"
        " max \\|Δ probability\\| | decisions changed |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| `{r['run']}` | {r['images']} | {r['views']} | {'yes' if r['metadata'] else 'no'} | "
            f"{r['auto_s']:.1f} ({r['images'] / r['auto_s']:.0f}) | {r['torch_s']:.1f} "
            f"({r['images'] / r['torch_s']:.0f}) | {r['torch_s'] / r['auto_s']:.1f}× | {r['max_dprob']:.1e} | "
            f"{r['changed']} |"
        )
    for r in results:
        for name, pa, pt in r["flips"]:
            lines += [
                "",
                f"`{r['run']}`: decision changed for `{name}`: probability {pa:.6f} (ONNX Runtime) against {pt:.6f}"
                f" (PyTorch), operating point {r['threshold'] if r['threshold'] is not None else 'arg-max'}.",
            ]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines += ["", f"Peak RSS of the benchmark process: {peak:.0f} MB."]
    body = "\n".join(lines)
    print(body)
    write_section("predict_engines", body, doc=a.doc)


if __name__ == "__main__":
    main()
