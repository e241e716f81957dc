"""`medclf explain`: a class-activation heat map over one image, as a PNG."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="Grad-CAM / Grad-CAM++ / Score-CAM heat map of one image, written as a PNG",
        description="Draw where the model looked: a class-activation map over the image. Research use only: "
        "a heat map is not a diagnosis and not proof the model is right.",
    )
    p.add_argument("run_dir", help="run folder written by `medclf train`")
    p.add_argument("image", help="image file (JPEG, PNG, DICOM, ...)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--method", choices=("gradcam", "gradcam++", "scorecam"), default="gradcam")
    p.add_argument(
        "--alpha", type=float, default=0.5, help="heat-map intensity, 0 (image only) to 1 (map only)"
    )
    p.add_argument("--target", default=None, help="class name or index to explain (default: the decision)")
    p.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata for fusion models, e.g. --meta age=55 --meta sex=male (repeatable)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from medclf import DISCLAIMER
    from medclf._atomic import atomic_path
    from medclf.errors import ConfigError
    from medclf.serve.predictor import Predictor

    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha {args.alpha}: choose a value between 0 and 1")
    metadata: dict[str, object] = {}
    for item in args.meta:
        if "=" not in item:
            raise ConfigError(f"--meta {item!r}: expected KEY=VALUE, e.g. --meta age=55")
        key, value = item.split("=", 1)
        try:
            metadata[key.strip()] = float(value)
        except ValueError:
            metadata[key.strip()] = value.strip()
    predictor = Predictor.from_run(args.run_dir, backend="torch", ood=False)
    ex = predictor.explain(
        args.image, metadata or None, method=args.method, target=args.target, alpha=args.alpha
    )
    with atomic_path(args.out, suffix=".png") as tmp:
        ex.overlay.save(tmp, format="PNG")
    probs = ", ".join(f"{c} {p:.3f}" for c, p in ex.prediction.probabilities.items())
    print(f"wrote {args.out}: {args.method} for '{ex.target}' (decision {ex.prediction.decision}; {probs})")
    print(DISCLAIMER)
    return 0
