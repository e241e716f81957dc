"""`medclf data {info,split,audit,synth}`: thin handlers over `medclf.data` (heavy imports inside handlers)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "data", metavar="DATA", help="dataset folder (layout auto-detected) or a dataset spec .yaml"
    )
    p.add_argument("--spec", help="dataset spec .yaml whose rules apply to the folder DATA")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip and list bad images/rows instead of stopping at the first one",
    )


def register(subparsers: Any) -> None:
    data = subparsers.add_parser(
        "data", help="inspect, split, audit or synthesise datasets", description="Dataset tools."
    )
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 0)[1])

    p = sub.add_parser("info", help="layout, classes, counts and metadata columns of a dataset")
    _add_data_args(p)
    p.set_defaults(func=_info)

    p = sub.add_parser(
        "split",
        help="write a stratified, patient-grouped split (or k folds) as CSV",
        description="Stratified by label, grouped by patient/lesion, deterministic by seed. Split folders and "
        "pre-made folds the data ships with are kept, not re-split.",
    )
    _add_data_args(p)
    p.add_argument(
        "--group-by", help="group column, or 'regex:PATTERN' on the file name (first capture group)"
    )
    p.add_argument("--val", type=float, help="validation fraction of all images (default 0.15)")
    p.add_argument("--test", type=float, help="test fraction of all images (default 0.15)")
    p.add_argument("--folds", type=int, help="make K cross-validation folds instead of train/val/test")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="split CSV to write")
    p.set_defaults(func=_split)

    p = sub.add_parser(
        "audit",
        help="duplicates, near-duplicates, leakage, unreadable files, imbalance, metadata gaps, probable label "
        "errors",
        description="Reads and decodes every image once; prints a summary, and with --out writes audit.json and "
        "a self-contained audit.html. With --predictions (out-of-fold predictions of `medclf cv`) it also ranks "
        "the images whose given label is improbable (cleanlab) into label_issues.csv and a gallery.",
    )
    _add_data_args(p)
    p.add_argument(
        "--split", metavar="CSV", help="audit this split CSV's assignment (leakage across its splits)"
    )
    p.add_argument("--out", metavar="DIR", help="folder for audit.json and audit.html")
    p.add_argument("--workers", type=int, help="decoding threads (default: up to 4)")
    p.add_argument(
        "--near-threshold",
        type=int,
        help="max perceptual-hash distance (of 256 bits) for near duplicates (default 20)",
    )
    p.add_argument(
        "--predictions",
        metavar="DIR",
        help="also find probable label errors (cleanlab) from held-out predictions: a `medclf cv` folder "
        "(out-of-fold: every image), a `medclf train` run folder (its val/test images only) or a predictions CSV; "
        "writes label_issues.csv and label_issues.html; nothing is deleted or relabelled",
    )
    p.add_argument(
        "--label-issues-top",
        type=int,
        metavar="N",
        help="suspects shown in audit.html and the gallery (default 24; label_issues.csv lists all)",
    )
    p.add_argument(
        "--rank-by",
        choices=("self_confidence", "normalized_margin"),
        default="self_confidence",
        help="cleanlab's label-quality score that ranks the suspects (default self_confidence)",
    )
    p.add_argument(
        "--no-gradcam",
        action="store_true",
        help="thumbnails only in the label-issue gallery (no model is loaded)",
    )
    p.set_defaults(func=_audit)

    p = sub.add_parser(
        "synth",
        help="write SYNTHETIC dermoscopy-like images (not medical data) for demos and tests",
        description="Deterministic ABCD-rule caricatures: benign round/even/one colour, malignant "
        "asymmetric/irregular/several colours; metadata age/sex/site; several images per patient.",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--layout", default="folders", choices=("folders", "split-folders", "kfold", "csv"))
    p.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=96, help="image side in pixels (default 96)")
    p.set_defaults(func=_synth)


def _load(args: argparse.Namespace, **kw: Any) -> Any:
    from medclf.data.dataset import load_dataset, resolve_spec

    return load_dataset(resolve_spec(args.data, args.spec), skip_bad=args.skip_bad, **kw)


def _print_bad(bad: list[tuple[str, str]]) -> None:
    if bad:
        print(f"skipped {len(bad)} bad input(s):")
        for where, reason in bad[:20]:
            print(f"  {where}: {reason}")
        if len(bad) > 20:
            print(f"  ... and {len(bad) - 20} more")


def _info(args: argparse.Namespace) -> int:
    import pandas as pd

    from medclf.data.splits import summarize_split

    ds = _load(args)
    print(f"dataset   {ds.name}")
    print(f"root      {ds.root}")
    print(f"layout    {ds.layout}")
    print(f"classes   {', '.join(ds.classes)}")
    print(f"images    {ds.records['path'].nunique()} ({len(ds.records)} records)")
    print(f"groups    {ds.records['group'].nunique()} (rule: {ds.group_rule or 'none, one image per group'})")
    if ds.dropped:
        print(f"dropped   {ds.dropped} image(s) of classes outside `subset`")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print()
        print(summarize_split(ds.records, ds.classes).to_string(index=False))
    if ds.metadata:
        print("\nmetadata:")
        for col, kind in ds.metadata.items():
            values = ds.records.drop_duplicates("path")[col]
            print(f"  {col:<16} {kind:<12} missing {int(values.isna().sum())}")
    _print_bad(ds.bad_files)
    return 0


def _split(args: argparse.Namespace) -> int:
    import pandas as pd

    from medclf.data.splits import (
        group_leaks,
        make_folds,
        make_split,
        small_split_warnings,
        split_makeup_warnings,
        summarize_split,
        write_split_csv,
    )
    from medclf.errors import ConfigError

    if args.folds is not None and (args.val is not None or args.test is not None):
        raise ConfigError("give either --val/--test (train/val/test split) or --folds K, not both")
    ds = _load(args)
    recs = ds.records
    if "fold" in recs.columns:
        n = recs["fold"].nunique()
        print(f"{ds.root}: the data ships {n} pre-made folds; they are kept as they are (not re-split)")
        if args.group_by:
            print("note: --group-by does not change pre-made folds")
    elif args.folds is not None:
        recs = make_folds(recs, args.folds, args.seed, args.group_by)
    else:
        val = 0.15 if args.val is None else args.val
        test = 0.15 if args.test is None else args.test
        if "split" in recs.columns and set(recs["split"]) - {"train"}:
            kept = ", ".join(sorted(set(recs["split"]) - {"train"}))
            print(f"{ds.root}: shipped split folder(s) {kept} are kept; missing parts are carved from train")
        recs = make_split(recs, val, test, args.seed, args.group_by)
    out = write_split_csv(recs, args.out)
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(summarize_split(recs, ds.classes).to_string(index=False))
    leaks = group_leaks(recs)
    if leaks:
        print(
            f"warning: {len(leaks)} group(s) span several splits (shipped that way), e.g. {leaks[0]['group']!r}"
        )
    for line in split_makeup_warnings(recs) + small_split_warnings(recs, ds.classes):
        print(f"warning: {line}")
    _print_bad(ds.bad_files)
    print(f"wrote {out}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from medclf._lazy import require_extra
    from medclf.data.audit import NEAR_DUPLICATE_THRESHOLD, audit_dataset, format_audit, write_audit
    from medclf.data.dataset import load_dataset, resolve_spec
    from medclf.data.label_issues import DEFAULT_TOP
    from medclf.data.splits import read_split_csv
    from medclf.errors import ConfigError

    require_extra("audit", "medclf data audit")  # before reading any image: the fix is an install
    top = DEFAULT_TOP if args.label_issues_top is None else args.label_issues_top
    if args.label_issues_top is not None and not args.predictions:
        raise ConfigError("--label-issues-top needs --predictions DIR (a `medclf cv` folder or a run folder)")
    if top < 0:
        raise ConfigError(f"--label-issues-top {top}: give 0 or more")
    # the audit reports bad files instead of stopping at them, and decodes every image itself
    ds = load_dataset(resolve_spec(args.data, args.spec), skip_bad=True, verify="none")
    records = read_split_csv(args.split, check_groups=False) if args.split else None
    report = audit_dataset(
        ds,
        records=records,
        workers=args.workers,
        near_threshold=args.near_threshold if args.near_threshold is not None else NEAR_DUPLICATE_THRESHOLD,
        predictions=args.predictions,
        label_issues_top=top,
        rank_by=args.rank_by,
    )
    print(format_audit(report))
    if args.out:
        j, h = write_audit(report, args.out)
        print(f"\nwrote {j} and {h}")
        if report.get("label_issues"):
            from medclf.explain.label_gallery import write_label_issue_gallery

            out = Path(args.out)
            explainer = None if args.no_gradcam else _explainers()
            write_label_issue_gallery(report["label_issues"], out, explainer=explainer)
            print(
                f"wrote {out / 'label_issues.csv'} and {out / 'label_issues.html'} (nothing was deleted or relabelled)"
            )
    else:
        print("\n(pass --out DIR to write audit.json and audit.html)")
    return 0


def _explainers() -> Any:
    """``model folder -> (Predictor or None, why not)`` for the label-issue gallery, each folder loaded once."""
    from medclf.errors import MedclfError

    cache: dict[str, tuple[Any, str | None]] = {}

    def get(model: str | None) -> tuple[Any, str | None]:
        if not model:
            return None, "the predictions name no model"
        if model not in cache:
            try:
                from medclf.serve.predictor import Predictor

                p = Predictor.from_run(model, backend="torch", ood=False)
                cache[model] = (
                    (p, None) if p.can_explain else (None, f"{model} has no image layer to explain")
                )
            except (MedclfError, ImportError, OSError) as exc:
                cache[model] = (None, f"{model}: {exc}")
        return cache[model]

    return get


def _synth(args: argparse.Namespace) -> int:
    import time

    from medclf.data.synth import synth_dataset

    t0 = time.perf_counter()
    spec = synth_dataset(args.out, layout=args.layout, n=args.n, seed=args.seed, size=args.size)
    print(
        f"wrote {args.n} SYNTHETIC images (not medical data) to {spec.root} as {args.layout} in "
        f"{time.perf_counter() - t0:.1f} s; dataset spec: {spec.root}/dataset.yaml"
    )
    return 0
