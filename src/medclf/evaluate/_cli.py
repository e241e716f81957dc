"""`medclf evaluate` and `medclf compare`."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="metrics with 95%% intervals, calibration, plots and an HTML report for a trained run",
        description="Predict a run's test split (or --data, read with the run's dataset spec) and write "
        "predictions.csv, metrics.json, plots/ and report.html to --out. The threshold and temperature come "
        "from the run (chosen on validation data), never from the evaluated images.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `medclf train`")
    p.add_argument(
        "--data",
        help="evaluate these images instead: any folder (read in its own layout with the run's dataset rules; "
        "of split folders, the --split part) or a dataset spec .yaml",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "all"),
        help="which rows to evaluate (default: test)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        metavar="N",
        help="bootstrap resamples (default: the run's eval.bootstrap, 1000)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed in skipped.csv)")
    p.add_argument(
        "--audit", metavar="FILE", help="audit.json of the dataset (`medclf data audit`) for the report"
    )
    p.add_argument("--pdf", action="store_true", help="also write report.pdf (headline numbers + plots)")
    p.add_argument(
        "--subgroups",
        nargs="+",
        metavar="COL",
        help="metadata columns to evaluate per subgroup (default: every metadata column of the data); a column "
        "of the data's CSV that the dataset spec does not declare is read from the CSV",
    )
    p.add_argument(
        "--age-bands",
        metavar="EDGES",
        help="lower edges of the age bands, e.g. 0,30,45,60,75 (the default), for columns named age, age_approx, ...",
    )
    p.add_argument(
        "--subgroup-min",
        type=int,
        default=None,
        metavar="N",
        help="subgroups with fewer images are pooled into one (default: 30)",
    )
    p.add_argument(
        "--flag-margin",
        type=float,
        default=None,
        metavar="M",
        help="flag a subgroup (with 10 or more positives) whose sensitivity is more than M below the overall one "
        "(default: 0.10)",
    )
    p.add_argument(
        "--no-gradcam",
        action="store_true",
        help="leave the Grad-CAM overlays out of the report's gallery of confident errors",
    )
    p.set_defaults(func=_evaluate)

    c = subparsers.add_parser(
        "compare",
        help="leaderboard (Markdown, HTML, CSV) of runs, evaluations or cv folders, with a paired test",
        description="Rank runs / evaluation folders / cross-validation folders and test the top two "
        "(paired bootstrap of the AUC and accuracy difference on the images both were evaluated on).",
    )
    c.add_argument("dirs", nargs="+", metavar="RUN_OR_EVAL_DIR")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument(
        "--sort", default=None, help="metric to rank by (default: auc, else macro_auc, else accuracy)"
    )
    c.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_compare)

    k = subparsers.add_parser(
        "card",
        help="write a run's model card (Markdown): the run's facts, and fields for its owner to fill in",
        description="Write the model card of a run: model, data counts, decision rule, performance with 95%% "
        "intervals (from the evaluation), the limits true of every model, and placeholders for what only the "
        "model's owner knows (intended use, data, subgroups, limitations, licence). `medclf app` and the REST "
        "API's /model show RUN_DIR/model_card.md.",
    )
    k.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `medclf train`")
    k.add_argument(
        "--eval",
        metavar="EVAL_DIR",
        help="the `medclf evaluate` folder whose figures the card gives (default: RUN_DIR/eval when it exists)",
    )
    k.add_argument(
        "--out",
        metavar="FILE.md",
        help="where to write it (default: RUN_DIR/model_card.md; never overwritten)",
    )
    k.set_defaults(func=_card)


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medclf._lazy import has_extra
    from medclf.errors import ConfigError
    from medclf.evaluate.pipeline import evaluate_run, read_run_context
    from medclf.evaluate.subgroups import (
        DEFAULT_AGE_BANDS,
        MIN_SUBGROUP_IMAGES,
        SENSITIVITY_MARGIN,
        SubgroupOptions,
        parse_bands,
    )
    from medclf.explain.gallery import run_explainer

    n_boot = args.bootstrap
    if n_boot is None:
        n_boot = int(
            ((read_run_context(args.run_dir)["config"] or {}).get("eval") or {}).get("bootstrap", 1000)
        )
    if n_boot < 0:
        raise ConfigError("--bootstrap must be 0 (no intervals) or a positive number of resamples, e.g. 1000")
    options = SubgroupOptions(
        columns=tuple(args.subgroups) if args.subgroups else None,
        age_bands=parse_bands(args.age_bands) if args.age_bands else DEFAULT_AGE_BANDS,
        min_size=MIN_SUBGROUP_IMAGES if args.subgroup_min is None else args.subgroup_min,
        sensitivity_margin=SENSITIVITY_MARGIN if args.flag_margin is None else args.flag_margin,
    )
    metrics = evaluate_run(
        args.run_dir,
        args.out,
        data=args.data,
        split=args.split,
        n_boot=n_boot,
        seed=args.seed,
        batch_size=args.batch_size,
        skip_bad=args.skip_bad,
        audit_path=args.audit,
        pdf=args.pdf,
        explain=None if args.no_gradcam else run_explainer(args.run_dir),
        subgroups=options,
    )
    _print_summary(metrics)
    if has_extra("report"):  # without it, a note printed above names the extra
        print(f"wrote {Path(args.out) / 'report.html'}")
    return 0


def _print_summary(metrics: dict) -> None:
    from medclf import DISCLAIMER

    ci = metrics.get("ci95") or {}
    ci_method = metrics.get("ci95_method") or {}
    keys = ["sensitivity", "specificity", "auc"] if "sensitivity" in metrics else []
    keys += ["macro_auc"] if "sensitivity" not in metrics or len(metrics["classes"]) > 2 else []
    keys += ["accuracy", "balanced_accuracy", "macro_f1", "ece", "top1_accuracy", "top1_balanced_accuracy"]
    print(f"{metrics['n']} images: {metrics.get('evaluated_on', '')}")
    for k in keys:
        v = metrics.get(k)
        if v is None or v != v:
            continue
        lo, hi = ci.get(k, [None, None])
        interval = f"  [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None and lo == lo else ""
        method = str(ci_method.get(k, "bootstrap"))
        print(f"  {k:<22} {v:.3f}{interval}" + (f" ({method})" if interval and method != "bootstrap" else ""))
    sub = metrics.get("subgroups") or {}
    if sub.get("columns"):
        print(f"  subgroups: {', '.join(sub['columns'])} ({len(sub['flags'])} flagged; see report.html)")
    for line in sub.get("flags") or []:
        print(f"  subgroup flag: {line}")
    for line in metrics.get("warnings", []):
        print(f"  warning: {line}")
    for note in metrics.get("notes", []):
        print(f"  note: {note}")
    print(DISCLAIMER)


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medclf.evaluate.compare import compare

    result = compare(args.dirs, args.out, sort_by=args.sort, n_boot=args.bootstrap, seed=args.seed)
    print((Path(args.out) / "leaderboard.md").read_text(encoding="utf-8"))
    del result
    return 0


def _card(args: argparse.Namespace) -> int:
    from medclf.evaluate.card import PLACEHOLDER, write_model_card

    path = write_model_card(args.run_dir, args.out, eval_dir=args.eval)
    print(f"wrote {path}: replace each '{PLACEHOLDER}' with what only you know about the model")
    return 0
