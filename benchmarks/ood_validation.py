"""Validate the out-of-distribution flag: a skin-lesion model must refer chest X-rays and noise, not skin images.

A run is built from EfficientNet-Lite0 (offline ImageNet weights) on skin_bm: the detector is fitted on training
skin images and thresholded at the 99th percentile of validation skin images (exactly what `Predictor` does for
any run). Then the share flagged as out of distribution is measured on held-out skin images, HAM10000
dermatoscopy (skin, but another camera), paediatric chest X-rays and uniform noise.

    python benchmarks/ood_validation.py [--fit 300 --val 150 --heldout 200 --foreign 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def datasets_root() -> Path:
    return Path(
        os.environ.get("MEDCLF_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets")
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", type=int, default=300)
    ap.add_argument("--val", type=int, default=150)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--foreign", type=int, default=200)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import pandas as pd
    import torch
    from sklearn.metrics import roc_auc_score

    from medclf.models import create_model, resolve_preprocessing, save_run_model

    torch.set_num_threads(2)
    root = datasets_root()
    if not (root / "skin_bm").is_dir():
        print(f"skipped: {root} has no skin_bm (set MEDCLF_SHARED_DATASETS)")
        return 0
    rng = np.random.default_rng(0)
    skin = sorted(str(p) for p in (root / "skin_bm" / "train").glob("*/*.jpg"))
    skin = [skin[i] for i in rng.permutation(len(skin))]
    fit, val = skin[: args.fit], skin[args.fit : args.fit + args.val]
    held = skin[args.fit + args.val : args.fit + args.val + args.heldout]
    cxr = sorted(str(p) for p in (root / "cxr_pneumonia" / "train").glob("*/*.jpeg"))
    cxr = [cxr[i] for i in rng.permutation(len(cxr))[: args.foreign]]
    ham = sorted(str(p) for p in (root / "ham10000" / "images").glob("*.jpg"))
    ham = [ham[i] for i in rng.permutation(len(ham))[: args.foreign]]

    with tempfile.TemporaryDirectory(prefix="medclf-ood-") as tmp:
        run_dir = Path(tmp) / "run"
        pretrained = create_model("efficientnet_lite0", 2, pretrained=True)
        # copy into a freshly built model so the saved keys are exactly what load_run rebuilds
        model = create_model("efficientnet_lite0", 2, pretrained=False).eval()
        model.load_state_dict(pretrained.state_dict(), strict=False)
        rows = [
            {"path": p, "label": Path(p).parent.name, "group": Path(p).stem, "split": "train"} for p in fit
        ]
        rows += [
            {"path": p, "label": Path(p).parent.name, "group": Path(p).stem, "split": "val"} for p in val
        ]
        run_dir.mkdir()
        pd.DataFrame(rows).to_csv(run_dir / "split.csv", index=False)
        pre = resolve_preprocessing(model)
        save_run_model(
            run_dir,
            model,
            {
                "classes": ["benign", "malignant"],
                "preprocessing": pre.to_dict(),
                "positive_class": "malignant",
            },
        )
        from serve_latency import bench_predictor

        pred = bench_predictor(run_dir, "onnx", 2)
        ood = pred.ood
        assert ood is not None

        def scores(images: list) -> np.ndarray:
            return np.array([p.ood_score for p in pred.predict(images)])

        from PIL import Image

        noise = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(30)]
        groups = {
            "skin_bm held-out (in distribution)": scores(held),
            "HAM10000 dermatoscopy (skin, other source)": scores(ham) if ham else np.array([]),
            "chest X-ray (cxr_pneumonia)": scores(cxr),
            "uniform noise 224x224": scores(noise),
        }
    lines = [
        "## Out-of-distribution flag (validation)",
        "",
        f"EfficientNet-Lite0 (offline ImageNet weights) as a skin_bm model; Mahalanobis detector fitted on "
        f"{ood.n_fit} skin_bm training images (Ledoit-Wolf covariance of the 1280 L2-normalised pooled features), threshold "
        f"= 99th percentile of {ood.n_calib} validation skin images = {ood.threshold:.0f}.",
        "",
        "| input | n | flagged out of distribution | median score |",
        "|---|---|---|---|",
    ]
    for name, s in groups.items():
        if len(s):
            lines.append(f"| {name} | {len(s)} | {np.mean(s > ood.threshold):.1%} | {np.median(s):.0f} |")
    s_in, s_cxr = groups["skin_bm held-out (in distribution)"], groups["chest X-ray (cxr_pneumonia)"]
    auc = roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_cxr))], np.r_[s_in, s_cxr])
    lines += ["", f"AUROC of the score, held-out skin vs chest X-ray: {auc:.3f}."]
    print("\n".join(lines))
    if not args.no_write:
        from _results import write_section

        write_section("ood", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
