"""`medclf demo`."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole path on built-in synthetic data: audit, split, train, evaluate, report, export",
        description="Synthetic lesion data (NOT medical data) → audit → grouped split → train (cached features) → "
        "evaluate with 95% intervals → HTML report → ONNX export. Works offline on a laptop CPU "
        "(time: docs/benchmarks.md).",
    )
    p.add_argument("--out", default="medclf-demo", help="output folder (default: %(default)s)")
    p.add_argument("--n", type=int, default=480, help="number of synthetic images (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="efficientnet_lite0", help="backbone (default: %(default)s)")
    p.add_argument("--input-size", type=int, default=160, help="input side in pixels (default: %(default)s)")
    p.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from medclf.demo import run_demo

    run_demo(
        args.out,
        n=args.n,
        seed=args.seed,
        model=args.model,
        input_size=args.input_size,
        export=not args.no_export,
    )
    return 0
