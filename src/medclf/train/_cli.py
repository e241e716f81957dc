"""`medclf train`, `medclf cv`, `medclf tune`: thin wrappers over medclf.train (heavy imports inside handlers)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medclf.models import RunInfo

__all__ = ["register"]

_SET_HELP = "override a config key, e.g. --set train.epochs=10 (repeatable; values are YAML)"


def _common(p: argparse.ArgumentParser, config_required: bool = False) -> None:
    if config_required:
        p.add_argument("config", metavar="CONFIG", help="YAML recipe (configs/*.yaml)")
    else:
        p.add_argument(
            "config", metavar="CONFIG", nargs="?", help="YAML recipe (configs/*.yaml); defaults if omitted"
        )
    p.add_argument(
        "--data",
        metavar="DATA",
        help="data folder (read in its own layout with the recipe's dataset rules) or dataset spec .yaml; "
        "overrides data.root of the recipe",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=_SET_HELP
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip and list unreadable images instead of stopping (the same as --set data.skip_bad=true)",
    )
    p.add_argument(
        "--budget",
        metavar="DURATION",
        help="time budget of the run, e.g. 10m (in cv: of each fold): the image side, epochs and strategy are "
        "chosen from this machine's measured speed, and training stops on time with the best epoch "
        "(the same as --set train.budget=DURATION)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_exclude(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--exclude",
        metavar="CSV",
        help="leave the images of CSV's `path` column (e.g. label_issues.csv of `medclf data audit "
        "--predictions`) out of training only, never out of val/test (the same as --set data.exclude=CSV)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model from a recipe into a self-describing run folder",
        description="Train a recipe (strategies: scratch, finetune, full, cached) into RUN_DIR: weights "
        "(safetensors), run.json, config, split, history, logs, val/test predictions.",
    )
    _common(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to create (or to resume)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in RUN_DIR from its last checkpoint",
    )
    _add_exclude(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "cv",
        help="K-fold cross-validation: per-fold runs, out-of-fold predictions, cv_metrics.json",
        description="Cross-validate a recipe. Pre-made folds in the data are used as shipped; otherwise grouped, "
        "stratified folds are made. Without CONFIG a default recipe (EfficientNet-Lite0, every layer, 10-minute budget per fold) is used "
        "on any class-per-folder DATA. Re-running continues: finished folds are kept.",
    )
    _common(p)
    p.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds to make (default 5)")
    p.add_argument("--group-by", metavar="RULE", help="group column or 'regex:PATTERN' on file names")
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="also write DIR/ensemble: the fold models averaged as one final model (image-only recipes)",
    )
    _add_exclude(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (DIR/fold_k, cv_metrics.json)")
    p.set_defaults(func=_cv)

    p = subparsers.add_parser(
        "tune",
        help="hyper-parameter search (Optuna) over the recipe's search_space",
        description="Search the recipe's search_space with Optuna (random or TPE sampler, median pruning on the "
        "per-epoch validation metric). Writes results.csv/.md and best_config.yaml to DIR.",
    )
    _common(p, config_required=True)
    p.add_argument("--trials", type=int, default=20, metavar="N", help="number of trials (default 20)")
    p.add_argument("--sampler", choices=("random", "tpe"), default="random", help="random (default) or tpe")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=_tune)

    p = subparsers.add_parser(
        "ensemble",
        help="average several trained runs (same split) into one run folder",
        description="Combine runs trained on the same split (e.g. EfficientNet-Lite0 and Lite2) into one run: "
        "their calibrated probabilities are averaged, and the temperature and operating point are fitted on the "
        "shared validation split. Members may differ in backbone and input size.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="two or more run folders from medclf train")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder to create")
    p.add_argument(
        "--threshold",
        metavar="RULE",
        help="operating point rule (youden, sensitivity:0.95, ...); default: the first run's eval.threshold",
    )
    p.add_argument("--name", help="label for reports (default: ensemble-<member names>)")
    p.set_defaults(func=_ensemble)


def _load(args: argparse.Namespace, default: Any = None) -> Any:
    from medclf.config import apply_overrides, load_config

    if args.config is None and default is not None:
        cfg = apply_overrides(default, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    if args.data:
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, root=str(Path(args.data).resolve()))
        )
    if args.skip_bad:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, skip_bad=True))
    if getattr(args, "budget", None):
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, budget=args.budget))
    if getattr(args, "exclude", None):
        cfg = dataclasses.replace(
            cfg, data=dataclasses.replace(cfg.data, exclude=str(Path(args.exclude).resolve()))
        )
    return cfg


def _train(args: argparse.Namespace) -> int:
    import medclf
    from medclf.train import train

    if args.resume:
        if args.config or args.overrides or args.data or args.skip_bad:
            print("medclf train --resume: continuing with the run's own config.yaml and split.csv")
        cfg = None
    else:
        from medclf.train.engine import default_recipe

        cfg = _load(args, default=default_recipe())
    run = train(cfg, args.out, resume=args.resume, progress=not args.quiet)  # type: ignore[arg-type]
    if _ddp_rank() != 0:
        return 0  # a DDP worker process: global rank 0 writes run.json and reports the run
    from medclf.models import RunDir

    info = RunDir(run).load_info()
    print(f"run folder: {run}")
    print(
        f"  strategy {info.strategy}, {info.epochs_run} epochs, {info.train_seconds} s; "
        f"best {info.monitor} = {_fmt(info.best_score)} (epoch {info.best_epoch})"
    )
    _print_validation(info)
    for line in info.warnings:
        print(f"  warning: {line}")
    if info.skipped_images:
        print(f"  skipped {len(info.skipped_images)} unreadable image(s): listed in run.json")
    if info.excluded_images:
        print(
            f"  left {info.excluded_images} image(s) of data.exclude out of training (val/test keep theirs)"
        )
    print(f"  next: medclf evaluate {run} --out {Path(run) / 'eval'}")
    print(medclf.DISCLAIMER)
    return 0


def _ddp_rank() -> int:
    """Global rank of this process: Lightning's DDP launcher (and torchrun) start `medclf train` once per device."""
    import sys

    # the module is loaded only by the Lightning strategies; without it this process is the only one
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    return int(getattr(getattr(rank_zero, "rank_zero_only", None), "rank", 0) or 0)


def _cv(args: argparse.Namespace) -> int:
    import medclf
    from medclf.errors import ConfigError
    from medclf.train.cv import run_cv
    from medclf.train.engine import default_recipe

    if args.config is None and not args.data:
        raise ConfigError("medclf cv without CONFIG needs --data DATA (a class-per-folder image folder)")
    cfg = _load(args, default=default_recipe())
    result = run_cv(
        cfg,
        args.out,
        folds=args.folds,
        group_by=args.group_by,
        progress=not args.quiet,
        ensemble=args.ensemble,
    )
    print(f"{len(result['folds'])} folds -> {Path(args.out) / 'cv_metrics.json'}")
    for k, v in result["mean"].items():
        print(f"  {k:18s} {v:.4f} ± {result['std'].get(k, float('nan')):.4f}")
    if result.get("ensemble"):
        print(
            f"fold ensemble -> {result['ensemble']} (no held-out split of its own: the cv numbers above are its "
            f"estimate; evaluate it on external data with medclf evaluate {result['ensemble']} --data DIR)"
        )
    print(medclf.DISCLAIMER)
    return 0


def _tune(args: argparse.Namespace) -> int:
    from medclf.train.tune import run_tune

    cfg = _load(args)
    table = run_tune(cfg, args.out, trials=args.trials, sampler=args.sampler, progress=not args.quiet)
    print(table.drop(columns=["run_dir"], errors="ignore").head(10).to_string(index=False))
    print(f"best recipe: {Path(args.out) / 'best_config.yaml'}")
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    import medclf
    from medclf.train.ensemble import build_run_ensemble

    run = build_run_ensemble(args.runs, args.out, threshold=args.threshold, name=args.name)
    print(f"ensemble of {len(args.runs)} runs -> {run}")
    from medclf.models import RunDir

    info = RunDir(run).load_info()
    _print_validation(info)
    for line in info.warnings:
        print(f"  warning: {line}")
    print(f"  next: medclf evaluate {run} --out {Path(run) / 'eval'}")
    print(medclf.DISCLAIMER)
    return 0


def _print_validation(info: RunInfo) -> None:
    vm = info.val_metrics or {}
    print(
        f"  validation: acc {_fmt(vm.get('acc'))}, balanced acc {_fmt(vm.get('bacc'))}, auc {_fmt(vm.get('auc'))}"
    )
    if info.threshold is not None:
        print(
            f"  threshold on P({'+'.join(info.positive_classes or [str(info.positive_class)])}): "
            f"{info.threshold:.4f} ({info.threshold_rule})"
        )


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, int | float) else "n/a"
