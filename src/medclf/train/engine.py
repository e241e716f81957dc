"""`train(cfg, out_dir)`: one recipe -> one self-describing run folder (docs/architecture.md §4).

Every strategy trains with one PyTorch Lightning loop (``medclf.train.module.ClassifierModule``): `scratch`,
`finetune` and `full` from images, `cached` from frozen-backbone outputs computed once (``medclf.train.cached``).
Whatever the strategy, the run ends the same way: best weights, validation predictions -> temperature and threshold (binary, or the eval.positive_classes group; validation only), val/test
prediction tables, run.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medclf._atomic import (
    atomic_path,
    atomic_write_text,
    json_text,
    make_dir,
    remove_temp_files,
    write_error,
)
from medclf._lazy import require_extra
from medclf.config import STRATEGIES, RunConfig, TrainConfig, check_choices, dump_config, load_config
from medclf.data.label_issues import exclude_from_train, excluded_images
from medclf.errors import ConfigError, DataError, MedclfError

__all__ = ["STRATEGIES", "default_recipe", "finalize_run", "load_data", "named", "resolve_split", "train"]

CHECKPOINTS = "checkpoints"
LAST_CKPT = "last.ckpt"
BEST_WEIGHTS = "best.safetensors"
BUDGET_PLAN = "budget.json"
_QUIET = (
    ".*does not have many workers.*",  # on a small CPU, worker processes only compete with training for cores
    ".*The number of training batches.*",
    ".*module\\(s\\) in eval mode.*",  # frozen batch norm in finetune phase 1, on purpose
    ".*exists and is not empty.*",  # --resume reuses the run's folders
    ".*LeafSpec.*",
)


def default_recipe() -> RunConfig:
    """The recipe `medclf train` and `medclf cv` use without a CONFIG, for any class-per-folder data:
    EfficientNet-Lite0 from its offline ImageNet weights, every layer trained from images decoded once, 128 px
    then 160 px for the last two epochs, weight averaging, within a 10-minute budget per run (per fold in cv)
    that picks the side and epochs on this machine. Monitored on validation loss, which suits any number of
    classes. Its figures: docs/benchmarks-training.md."""
    cfg = RunConfig()
    cfg.model = dataclasses.replace(cfg.model, name="efficientnet_lite0", pretrained=True, input_size=160)
    cfg.train = dataclasses.replace(
        cfg.train,
        strategy="full",
        low_res_size=128,
        full_res_epochs=2,
        epochs=12,
        warmup_epochs=1,
        ema=0.99,
        augment="standard",
        batch_size=32,
        lr=1e-3,
        scheduler="cosine",
        patience=0,
        monitor="val_loss",
        budget="10m",
    )
    return cfg


# ---- data ---------------------------------------------------------------------------------------------------
def load_data(cfg: RunConfig, data: str | Path | None = None) -> Any:
    """The recipe's dataset (``data`` overrides ``data.root``; ``data.spec`` rules apply to it, and a folder other
    than the spec's own root is read in its own layout: ``resolve_spec``)."""
    from medclf.data import DatasetSpec, load_dataset, resolve_spec

    root = str(data) if data is not None else cfg.data.root
    spec: Any = cfg.data.spec
    if isinstance(spec, dict):
        spec = DatasetSpec.from_dict(spec)
    if root is None and spec is None:
        raise ConfigError(
            "no data: set data.root (a folder) or data.spec (a dataset spec), or pass --data DATA"
        )
    resolved = resolve_spec(root, spec) if root is not None else resolve_spec(spec)
    return load_dataset(resolved, skip_bad=cfg.data.skip_bad)


def named(cfg: RunConfig, dataset: Any) -> RunConfig:
    """``cfg`` with its ``name`` set: the recipe's own, else the dataset's (its spec's name or folder name)."""
    return cfg if cfg.name else dataclasses.replace(cfg, name=dataset.name)


def resolve_split(cfg: RunConfig, dataset: Any, fold: int | None = None) -> pd.DataFrame:
    """Records (of ``dataset``, a Dataset or a records table) with a ``split`` column (train/val/test): the
    recipe's split CSV, the data's own split folders or
    folds (fold ``fold``, default 0), or a grouped stratified split made here; a missing val part is carved out
    of train by group."""
    from medclf.data import make_split, read_split_csv, select_fold

    d = cfg.data
    if d.split_csv:
        recs = read_split_csv(d.split_csv)
    else:
        recs = dataset if isinstance(dataset, pd.DataFrame) else dataset.records
    kinds = dict(recs.attrs.get("metadata", {}) or {})
    if "fold" in recs.columns:
        recs = select_fold(recs, 0 if fold is None else fold, val=d.val, seed=d.seed)
    has_val = "split" in recs.columns and (recs["split"] == "val").any()
    if not has_val and d.val <= 0:
        raise ConfigError(
            "data.val is 0 and the data has no val split; validation picks the epoch and threshold"
        )
    has_test = "split" in recs.columns and (recs["split"] == "test").any()
    if not (has_val and has_test and "split" in recs.columns):
        recs = make_split(recs, val=d.val, test=d.test, seed=d.seed, group_by=d.group_by)
    recs = recs.reset_index(drop=True)
    recs.attrs["metadata"] = kinds
    if d.exclude:  # after the split is made, so val and test are the same with and without the list
        recs = exclude_from_train(recs, d.exclude)
    return recs


# ---- the run ------------------------------------------------------------------------------------------------
def _check_cfg(cfg: RunConfig) -> None:
    from medclf.data.transforms import AUGMENT_POLICIES
    from medclf.train.metrics import monitor_mode

    t = cfg.train
    check_choices(t, "train")
    monitor_mode(t.monitor)
    if t.augment not in AUGMENT_POLICIES:
        raise ConfigError(f"train.augment={t.augment!r}: choose one of {', '.join(AUGMENT_POLICIES)}")
    if t.epochs < 1 or t.batch_size < 1 or t.lr <= 0:
        raise ConfigError("train.epochs and train.batch_size must be at least 1 and train.lr positive")
    if t.strategy == "finetune" and not 0 <= t.head_epochs < t.epochs:
        raise ConfigError(
            f"train.head_epochs={t.head_epochs}, train.epochs={t.epochs}: train.epochs counts the head epochs too, "
            "so finetune needs 0 <= train.head_epochs < train.epochs"
        )
    if t.num_nodes < 1:
        raise ConfigError(f"train.num_nodes={t.num_nodes}: must be at least 1 (the number of machines)")
    from medclf.train.module import check_ema, check_mixup

    check_ema(t.ema)
    check_mixup(t.mixup)
    if t.low_res_size < 0 or t.full_res_epochs < 1 or t.warmup_epochs < 0:
        raise ConfigError(
            f"train.low_res_size={t.low_res_size}, train.full_res_epochs={t.full_res_epochs}, "
            f"train.warmup_epochs={t.warmup_epochs}: low_res_size and warmup_epochs must be 0 or more, "
            "full_res_epochs at least 1"
        )
    from medclf.train.budget import parse_budget

    parse_budget(t.budget)
    if cfg.model.metadata_only and not cfg.model.metadata:
        raise ConfigError("model.metadata_only needs model.metadata columns (e.g. [age, sex, localization])")
    if cfg.eval.tta:
        from medclf.models.tta import check_tta_views

        check_tta_views(cfg.eval.tta)
        if cfg.model.metadata_only:
            raise ConfigError("eval.tta: a metadata-only model does not look at images; remove eval.tta")


def train(
    cfg: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    *,
    dataset: Any = None,
    split: pd.DataFrame | None = None,
    fold: int | None = None,
    callbacks: Sequence[Any] = (),
    progress: bool = True,
) -> Path:
    """Train ``cfg`` into the run folder ``out_dir`` and return it.

    ``resume=True`` continues an interrupted run from ``out_dir/checkpoints/last.ckpt`` with the run's own saved
    config and split (``cfg`` is then ignored); the result equals an uninterrupted run with the same seed.
    ``dataset``/``split`` skip loading and splitting (cv passes them); ``fold`` picks a fold of folded data.
    """
    require_extra("train", "medclf train")
    t0 = time.perf_counter()
    run_dir = Path(out_dir)
    if resume:
        cfg, dataset, split = _resume_inputs(run_dir)
        # temporary files of writes cut short by the crash (`medclf._atomic`): never read, so just removed
        for folder in (run_dir, run_dir / CHECKPOINTS):
            remove_temp_files(folder)
    else:
        _check_fresh(run_dir)
        _check_cfg(cfg)
        if dataset is None:
            dataset = load_data(cfg)
        cfg = named(cfg, dataset)
        if split is None:
            split = resolve_split(cfg, dataset, fold)
        # the operating point's classes are checked now, not after hours of training
        classes = list(dataset.classes)
        _positive_classes(cfg, classes, _positive_index(cfg, classes))
        plan = _plan_budget(cfg, dataset, split, t0) if cfg.train.budget else None
        if plan is not None:
            # the plan becomes the run's recipe: config.yaml (and so --resume) holds the side and epochs chosen
            cfg = _apply_plan(cfg, plan)
        _write_description(run_dir, cfg, dataset, split)
        if plan is not None:
            atomic_write_text(run_dir / BUDGET_PLAN, json_text(plan.to_dict()))
    from medclf.data.splits import small_split_warnings

    # said before training starts, not first seen in the report; run.json keeps them (finalize_run)
    for line in small_split_warnings(split, list(dataset.classes)):
        logging.getLogger(__name__).warning("warning: %s", line)
    return _train_lightning(
        cfg, dataset, split, run_dir, resume=resume, callbacks=callbacks, progress=progress, t0=t0
    )


def _plan_budget(cfg: RunConfig, dataset: Any, split: pd.DataFrame, t0: float) -> Any:
    """Measure this machine's training throughput for the recipe's model and plan side, epochs and strategy
    within ``train.budget`` (``medclf.train.budget``)."""
    from medclf.data.images import load_image
    from medclf.data.transforms import create_transform
    from medclf.models import create_model, resolve_preprocessing
    from medclf.train.budget import candidate_sides, measure_throughput, parse_budget, plan_budget

    t, m = cfg.train, cfg.model
    budget = parse_budget(t.budget)
    assert budget is not None
    log = logging.getLogger(__name__)
    if t.strategy == "cached" or m.metadata_only:
        log.warning(
            "warning: train.budget plans image training; the %s run trains its set epochs", t.strategy
        )
        return None
    if str(t.devices) not in ("auto", "1") or t.num_nodes > 1:
        # every DDP process would time itself and could plan differently
        log.warning(
            "warning: train.budget plans one-process training; with several devices the recipe's epochs run"
        )
        return None
    kwargs = dict(m.kwargs)
    if m.input_size:
        kwargs["input_size"] = m.input_size
    n_classes = len(dataset.classes)
    model = create_model(m.name, n_classes, pretrained=False, in_chans=m.in_chans, **kwargs)
    pre = resolve_preprocessing(model, m.input_size, m.in_chans, m.jpeg_draft)
    if t.strategy == "finetune":  # the measure trains every layer: an upper bound of a finetune epoch
        log.info("budget: timing all layers; finetune epochs cost less")
    paths = split.loc[split["split"] == "train", "path"].astype(str).tolist()[:16]
    to_uint8 = create_transform(pre, "none").to_uint8
    t_dec = time.perf_counter()
    for p in paths:
        with contextlib.suppress(MedclfError):
            to_uint8(load_image(p, min_side=pre.decode_side()))
    decode = (time.perf_counter() - t_dec) / max(1, len(paths))
    counts = {s: int((split["split"] == s).sum()) for s in ("train", "val", "test")}
    throughput: dict[int, tuple[float, float]] = {}
    # largest side first; a smaller one is timed only when the larger cannot train enough epochs
    for side in candidate_sides(pre.input_size):
        wanted = [side, *([t.low_res_size] if 0 < t.low_res_size < side else [])]
        missing = [s for s in wanted if s not in throughput]
        throughput |= measure_throughput(
            model, missing, in_chans=pre.in_chans, batch_size=t.batch_size, precision=t.precision
        )
        plan = plan_budget(
            budget,
            time.perf_counter() - t0,
            n_train=counts["train"],
            n_val=counts["val"],
            n_test=counts["test"],
            input_size=pre.input_size,
            max_epochs=t.epochs,
            throughput=throughput,
            decode_s_per_image=decode,
            strategy=t.strategy,
            low_res_size=t.low_res_size,
            full_res_epochs=t.full_res_epochs,
            sides=[side],
        )
        if plan.strategy != "cached":
            break
    log.info("budget %s: %s", t.budget, plan.note)
    return plan


def _apply_plan(cfg: RunConfig, plan: Any) -> RunConfig:
    t = cfg.train
    if plan.strategy == "cached":
        return dataclasses.replace(cfg, train=dataclasses.replace(t, strategy="cached"))
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, input_size=plan.input_size),
        train=dataclasses.replace(t, epochs=plan.epochs),
    )


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _loader_kwargs(t: TrainConfig) -> dict[str, Any]:
    """DataLoader options shared by the training and validation loaders of the Lightning strategies."""
    from medclf.train.batches import collate_skip_bad

    workers = t.num_workers > 0
    return {
        "batch_size": t.batch_size,
        "num_workers": t.num_workers,
        "collate_fn": collate_skip_bad,
        "persistent_workers": workers,
        # page-locked batches let the copy to a CUDA device run asynchronously; a CPU run gains nothing from them
        "pin_memory": workers and t.accelerator in ("auto", "gpu", "cuda") and _cuda_available(),
    }


def _starved_gpu_message(accelerator: str, num_workers: int) -> str | None:
    """What to say when a GPU trains on batches that the training process decodes alone (Lightning's own warning
    about few workers is silenced, since 0 is the right choice on a small CPU)."""
    if accelerator != "CUDAAccelerator" or num_workers > 0:
        return None
    return (
        "train.num_workers=0 on a GPU: every image is decoded and augmented in the training process while the GPU "
        "waits; set train.num_workers to about the CPU cores per GPU (docs/scaling.md)"
    )


def _check_fresh(run_dir: Path) -> None:
    if (run_dir / "run.json").exists():
        raise _finished(run_dir)
    if (run_dir / CHECKPOINTS / LAST_CKPT).exists():
        raise ConfigError(
            f"{run_dir} already holds an interrupted run; pass --resume to continue it, or choose a new --out folder"
        )


def _finished(run_dir: Path) -> ConfigError:
    return ConfigError(
        f"{run_dir} already holds a finished run; evaluate it with `medclf evaluate {run_dir} --out "
        f"{run_dir / 'eval'}`, or train a new run into another --out folder"
    )


def _write_description(run_dir: Path, cfg: RunConfig, dataset: Any, split: pd.DataFrame) -> None:
    from medclf.data import write_split_csv

    make_dir(run_dir)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    atomic_write_text(run_dir / "dataset.yaml", dataset.spec.to_yaml())
    write_split_csv(split, run_dir / "split.csv")


def _resume_inputs(run_dir: Path) -> tuple[RunConfig, Any, pd.DataFrame]:
    from medclf.data import load_dataset, read_split_csv

    if (run_dir / "run.json").is_file():
        raise _finished(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "split.csv").is_file():
        raise ConfigError(
            f"{run_dir} is not an interrupted medclf run (no config.yaml/split.csv); train it afresh"
        )
    cfg = load_config(run_dir / "config.yaml")
    dataset = load_dataset(run_dir / "dataset.yaml", skip_bad=cfg.data.skip_bad, verify="none")
    split = read_split_csv(run_dir / "split.csv")
    return cfg, dataset, split


def _split_parts(split: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    parts = [split[split["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")]
    if parts[0].empty or parts[1].empty:
        raise DataError("the split has no train or no val images; check data.val / the split CSV")
    return parts[0], parts[1], parts[2]


@dataclasses.dataclass
class _Inputs:
    """What one run trains: the image model, the part of it the module trains (``net``: the model itself, or for
    `cached` its top and head on cached inputs), the preprocessing, the metadata encoder and the data."""

    model: Any
    net: Any
    pre: Any
    enc: Any
    train_ds: Any
    val_ds: Any
    sampler: Any
    loader_kw: dict[str, Any]
    bad: list[tuple[str, str]]


def _inputs(cfg: RunConfig, dataset: Any, split: pd.DataFrame, run_dir: Path, *, progress: bool) -> _Inputs:
    from medclf.models import MetadataEncoder, create_model, resolve_preprocessing
    from medclf.train.metrics import seed_all

    t, m = cfg.train, cfg.model
    classes = list(dataset.classes)
    train_df, val_df, _ = _split_parts(split)
    kinds = {**dict(getattr(dataset, "metadata", {}) or {}), **dict(split.attrs.get("metadata", {}) or {})}
    enc = MetadataEncoder.fit(train_df, list(m.metadata), kinds) if m.metadata else None
    seed_all(t.seed)  # weight initialisation
    kwargs = dict(m.kwargs)
    if m.input_size:
        kwargs["input_size"] = m.input_size
    model = create_model(
        m.name,
        len(classes),
        pretrained=m.pretrained and t.strategy != "scratch",
        in_chans=m.in_chans,
        drop_rate=m.drop_rate,
        num_meta=enc.dim if enc else 0,
        meta_only=m.metadata_only,
        **kwargs,
    )
    pre = resolve_preprocessing(model, m.input_size, m.in_chans, m.jpeg_draft)
    loader_kw = _loader_kwargs(t)
    if t.strategy != "cached":
        meta_only = bool(getattr(model, "meta_only", False))
        train_ds, val_ds, sampler = _datasets(cfg, pre, classes, train_df, val_df, enc, meta_only)
        bad = [*_bad(train_ds).items(), *_bad(val_ds).items()]
        return _Inputs(model, model, pre, enc, train_ds, val_ds, sampler, loader_kw, bad)
    from medclf.train.batches import EpochSampler
    from medclf.train.cached import cached_inputs

    parts = {"train": train_df, "val": val_df}
    cached = cached_inputs(cfg, model, pre, classes, parts, enc, run_dir, progress=progress)
    sampler = EpochSampler(cached.train.labels, seed=t.seed, balanced=t.balanced_sampler)
    # the arrays are in memory: worker processes would only copy them
    loader_kw.update(num_workers=0, persistent_workers=False, pin_memory=False)
    bad = [(p, "unreadable") for p in cached.bad]
    return _Inputs(model, cached.net, pre, enc, cached.train, cached.val, sampler, loader_kw, bad)


def _callbacks(cfg: RunConfig, run_dir: Path, extra: Sequence[Any], plan: dict[str, Any] | None) -> list[Any]:
    """History, best weights, early stopping, last.ckpt, the budget's timer, then the caller's callbacks."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from medclf.train.callbacks import BestWeights, History, PhaseEarlyStopping
    from medclf.train.metrics import monitor_mode

    t = cfg.train
    ckpt_dir = run_dir / CHECKPOINTS
    mode = monitor_mode(t.monitor)
    cbs: list[Any] = [History(run_dir / "history.csv"), BestWeights(ckpt_dir / BEST_WEIGHTS, t.monitor, mode)]
    head_epochs = t.head_epochs if t.strategy == "finetune" else 0
    if t.patience > 0:
        cbs.append(
            PhaseEarlyStopping(monitor=t.monitor, mode=mode, patience=t.patience, start_epoch=head_epochs)
        )
    cbs.append(
        ModelCheckpoint(
            dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
        )
    )
    if plan is not None:
        from lightning.pytorch.callbacks import Timer

        from medclf.train.budget import timer_duration

        # counts training time only and travels in last.ckpt, so a resumed run gets what is left
        cbs.append(Timer(duration=timer_duration(plan["train_seconds"])))
    return [*cbs, *extra]


def _trainer(cfg: RunConfig, run_dir: Path, cbs: list[Any], steps: int, *, progress: bool) -> Any:
    import lightning.pytorch as pl
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.loggers import CSVLogger

    t = cfg.train
    if not progress:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    loggers: list[Any] = [CSVLogger(run_dir / "logs", name="csv", version="")]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(
            TensorBoardLogger(run_dir / "logs", name="tensorboard", version="", default_hp_metric=False)
        )
    except ModuleNotFoundError:  # tensorboard is optional at run time; the CSV log is always written
        pass
    try:
        trainer = pl.Trainer(
            max_epochs=t.epochs,  # finetune: the head epochs are part of train.epochs
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            precision=t.precision,
            callbacks=cbs,
            logger=loggers,
            default_root_dir=run_dir,
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=min(50, steps),
        )
    except MisconfigurationException as exc:  # e.g. accelerator=gpu on a machine without a GPU
        raise ConfigError(
            f"train.accelerator={t.accelerator!r}, train.devices={t.devices!r}, train.num_nodes={t.num_nodes}, "
            f"train.precision={t.precision!r}: Lightning refused them ({exc}); without a GPU use "
            "--set train.accelerator=cpu (see docs/scaling.md)"
        ) from None
    starved = _starved_gpu_message(type(trainer.accelerator).__name__, t.num_workers)
    if starved and trainer.is_global_zero:
        logging.getLogger(__name__).warning(starved)
    return trainer


def _train_lightning(
    cfg: RunConfig,
    dataset: Any,
    split: pd.DataFrame,
    run_dir: Path,
    *,
    resume: bool,
    callbacks: Sequence[Any],
    progress: bool,
    t0: float,
) -> Path:
    from torch.utils.data import DataLoader

    from medclf.train.callbacks import BestWeights, History
    from medclf.train.losses import class_weights
    from medclf.train.module import ClassifierModule

    t = cfg.train
    classes = list(dataset.classes)
    x = _inputs(cfg, dataset, split, run_dir, progress=progress)
    train_loader = DataLoader(
        x.train_ds,
        sampler=x.sampler,
        drop_last=len(x.train_ds) % t.batch_size == 1,  # a batch of one breaks batch norm
        **x.loader_kw,
    )
    val_loader = DataLoader(x.val_ds, shuffle=False, **x.loader_kw)
    weight = class_weights(x.train_ds.labels, len(classes), t.class_weight_power) if t.class_weights else None
    # Lightning keeps each submodule's train/eval mode as it finds it at the start (feature extraction left the
    # model in eval mode): every trained module starts in training mode, also in a resumed run
    module = ClassifierModule(
        x.net.train(), t, class_weight=weight, positive_index=_positive_index(cfg, classes)
    )
    plan = _read_plan(run_dir)
    cbs = _callbacks(cfg, run_dir, callbacks, plan)
    history = next(c for c in cbs if isinstance(c, History))
    best = next(c for c in cbs if isinstance(c, BestWeights))
    trainer = _trainer(cfg, run_dir, cbs, max(1, len(train_loader)), progress=progress)
    ckpt_dir = run_dir / CHECKPOINTS
    # a run stopped before its first epoch ended (e.g. while computing the feature cache) has no checkpoint yet
    ckpt_path = ckpt_dir / LAST_CKPT if resume and (ckpt_dir / LAST_CKPT).is_file() else None
    if ckpt_path is not None:
        _check_checkpoint(ckpt_path)
    with warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        try:
            trainer.fit(
                module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True if resume else None
            )
        except MedclfError:
            raise
        except OSError as exc:  # Lightning's own writes (last.ckpt, logs/) on a full or read-only disk
            raise write_error(exc.filename or ckpt_dir, exc) from None
    if not trainer.is_global_zero:
        return run_dir
    _load_best(x.net, ckpt_dir / BEST_WEIGHTS)
    _, val_df, test_df = _split_parts(split)
    return finalize_run(
        cfg,
        run_dir,
        model=x.model.requires_grad_(True).cpu().eval(),
        preprocessing=x.pre,
        classes=classes,
        meta_encoder=x.enc,
        val_df=val_df,
        test_df=test_df,
        split=split,
        extra={
            "strategy": t.strategy,
            "monitor": t.monitor,
            "best_epoch": best.best_epoch,
            "best_score": best.best,
            "epochs_run": len(history.rows),
            "resumed": resume,
            "budget": plan,
        },
        skipped=[*getattr(dataset, "bad_files", []), *x.bad],
        history_rows=history.rows,
        t0=t0,
    )


def _load_best(net: Any, path: Path) -> None:
    if not path.is_file():
        return
    from safetensors.torch import load_model

    try:
        load_model(net, str(path))
    except Exception as exc:  # safetensors raises plain exceptions on a damaged file
        raise MedclfError(
            f"{path} cannot be read ({exc}); delete {path.parent} and train the run again"
        ) from None


def _datasets(
    cfg: RunConfig,
    pre: Any,
    classes: list[str],
    train_df: pd.DataFrame,
    val_df: pd.DataFrame,
    enc: Any,
    meta_only: bool,
) -> tuple[Any, Any, Any]:
    """(train dataset, val dataset, train sampler): decoded once into memory (`train.image_cache`, with
    progressive resizing) or read from the files every epoch."""
    from medclf.data.images import load_image
    from medclf.data.transforms import create_transform
    from medclf.train.batches import EpochSampler, RecordsDataset

    t = cfg.train
    train_meta = enc.transform(train_df) if enc else None
    val_meta = enc.transform(val_df) if enc else None
    if t.image_cache and not meta_only:
        from medclf.train.image_cache import (
            CachedImageDataset,
            DecodedImages,
            ProgressiveSampler,
            resolution_schedule,
        )

        t_dec = time.perf_counter()
        decoded = [
            DecodedImages.build(df["path"].astype(str).tolist(), pre, skip_bad=cfg.data.skip_bad)
            for df in (train_df, val_df)
        ]
        logging.getLogger(__name__).info(
            "decoded %d images once (%.0f MB) in %.0f s",
            len(train_df) + len(val_df),
            sum(d.nbytes for d in decoded) / 1e6,
            time.perf_counter() - t_dec,
        )
        index = {c: i for i, c in enumerate(classes)}
        labels = [np.array([index[str(v)] for v in df["label"]], dtype=np.int64) for df in (train_df, val_df)]
        train_ds = CachedImageDataset(decoded[0], labels[0], pre, t.augment, train_meta)
        val_ds = CachedImageDataset(decoded[1], labels[1], pre, "none", val_meta)
        sizes = resolution_schedule(t.epochs, pre.input_size, t.low_res_size, t.full_res_epochs)
        sampler = ProgressiveSampler(EpochSampler(labels[0], seed=t.seed, balanced=t.balanced_sampler), sizes)
        return train_ds, val_ds, sampler
    loader = functools.partial(load_image, min_side=pre.decode_side())
    train_ds = RecordsDataset(
        train_df,
        classes,
        None if meta_only else create_transform(pre, t.augment),
        train_meta,
        skip_bad=cfg.data.skip_bad,
        loader=loader,
    )
    val_ds = RecordsDataset(
        val_df,
        classes,
        None if meta_only else create_transform(pre, "none"),
        val_meta,
        skip_bad=cfg.data.skip_bad,
        loader=loader,
    )
    return train_ds, val_ds, EpochSampler(train_ds.labels, seed=t.seed, balanced=t.balanced_sampler)


def _read_plan(run_dir: Path) -> dict[str, Any] | None:
    import json

    path = run_dir / BUDGET_PLAN
    return json.loads(path.read_text()) if path.is_file() else None


def _bad(ds: Any) -> dict[str, str]:
    return ds.images.bad if hasattr(ds, "images") else ds.bad


def _check_checkpoint(path: Path) -> None:
    """Refuse a ``last.ckpt`` that PyTorch's restricted loader (``weights_only=True``) will not read, before
    Lightning tries: its own message would suggest ``weights_only=False``, which runs whatever the file holds."""
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged, foreign, or carrying code: none of them can be resumed
        raise MedclfError(
            f"{path} cannot be loaded safely ({type(exc).__name__}: it is damaged or holds more than weights); "
            f"delete {path.parent} and train the run again, without --resume"
        ) from None


def _positive_index(cfg: RunConfig, classes: list[str]) -> int:
    pc = cfg.eval.positive_class
    if pc is None:
        return 1 if len(classes) == 2 else 0
    if pc not in classes:
        raise ConfigError(f"eval.positive_class={pc!r} is not a class; classes: {', '.join(classes)}")
    return classes.index(pc)


def _positive_classes(cfg: RunConfig, classes: list[str], positive: int) -> list[str]:
    """The classes whose summed probability the threshold applies to: binary ``[positive class]``, multiclass
    ``eval.positive_classes`` (validated) or ``[]`` (arg-max decisions, no threshold)."""
    names = [str(c) for c in cfg.eval.positive_classes]
    unknown = [c for c in names if c not in classes]
    if unknown:
        raise ConfigError(
            f"eval.positive_classes: {', '.join(map(repr, unknown))} not a class; classes: {', '.join(classes)}"
        )
    if len(classes) != 2:
        return list(dict.fromkeys(names))
    if len(names) > 1 or (names and cfg.eval.positive_class not in (None, names[0])):
        raise ConfigError(
            f"eval.positive_classes={names}: a binary task has one positive class; "
            "set eval.positive_class instead and leave eval.positive_classes empty"
        )
    return names or [classes[positive]]


def finalize_run(
    cfg: RunConfig,
    run_dir: Path,
    *,
    model: Any,
    preprocessing: Any,
    classes: list[str],
    meta_encoder: Any,
    val_df: pd.DataFrame,
    test_df: pd.DataFrame,
    split: pd.DataFrame,
    extra: Mapping[str, Any] | None = None,
    skipped: Sequence[tuple[str, str]] = (),
    history_rows: list[dict[str, Any]] | None = None,
    t0: float | None = None,
) -> Path:
    """Calibrate on validation predictions, write val/test predictions, the plot and run.json + weights.

    Too few validation images keep T = 1 and the default threshold; run.json says why (``temperature_skipped``,
    ``threshold_skipped``) and lists them with the split's small-class sentences in ``warnings``. ``extra`` holds
    the strategy's own ``RunInfo`` fields (strategy, monitor, best_epoch, ...) by name.

    Shared by every strategy (the cached strategy calls it with its own model) so all run folders agree.
    """

    import medclf
    from medclf.models import LoadedRun, RunInfo, save_run_model
    from medclf.models.inference import predict_records, predictions_frame
    from medclf.models.tta import with_tta
    from medclf.train.metrics import classification_metrics
    from medclf.train.rundir import data_fingerprint, library_versions, plot_history

    binary = len(classes) == 2
    positive = _positive_index(cfg, classes)
    positive_set = _positive_classes(cfg, classes, positive)
    if binary:
        positive = classes.index(positive_set[0])
    # every prediction from here on (temperature, operating point, val/test tables) uses the run's TTA views
    model = with_tta(model, cfg.eval.tta)
    loaded = LoadedRun(
        model=model,
        info=RunInfo(classes=classes),
        preprocessing=preprocessing,
        classes=classes,
        meta_encoder=meta_encoder,
        threshold=None,
        temperature=1.0,
        run_dir=run_dir,
        positive_class=classes[positive] if binary else None,
        positive_classes=positive_set,
    )
    skipped = list(skipped)
    val_rows, val_logits, bad = predict_records(loaded, val_df, skip_bad=cfg.data.skip_bad)
    skipped += bad
    index = {c: i for i, c in enumerate(classes)}
    y_val = np.array([index[str(v)] for v in val_rows["label"]], dtype=np.int64)
    from medclf.data.splits import small_split_warnings
    from medclf.evaluate.thresholds import fit_on_validation

    run_warnings = small_split_warnings(split, classes)
    # validation predictions only: the test split never sees the temperature or operating point being chosen
    fit = fit_on_validation(val_logits, y_val, classes, positive_set, cfg.eval.threshold, cfg.eval.calibrate)
    temperature, threshold = fit.temperature, fit.threshold
    temperature_skipped, threshold_skipped = fit.temperature_skipped, fit.threshold_skipped
    for line in (temperature_skipped, threshold_skipped):
        if line:
            logging.getLogger(__name__).warning("warning: %s", line)
            run_warnings.append(line)
    loaded.temperature, loaded.threshold = temperature, threshold
    _write_csv(predictions_frame(loaded, val_rows, val_logits), run_dir / "val_predictions.csv")
    if not test_df.empty:
        test_rows, test_logits, bad = predict_records(loaded, test_df, skip_bad=cfg.data.skip_bad)
        skipped += bad
        _write_csv(predictions_frame(loaded, test_rows, test_logits), run_dir / "test_predictions.csv")
    if history_rows:
        plot_history(history_rows, run_dir / "training_curves.png", title=cfg.name)
    extra = dict(extra or {})
    info = RunInfo(
        name=cfg.name,
        classes=classes,
        task="binary" if binary else "multiclass",
        preprocessing=preprocessing.to_dict(),
        metadata_encoder=meta_encoder.to_dict() if meta_encoder else None,
        positive_class=classes[positive] if binary else None,
        threshold=threshold,
        positive_classes=positive_set,
        threshold_rule=str(cfg.eval.threshold) if positive_set else None,
        threshold_skipped=threshold_skipped,
        temperature=temperature,
        temperature_skipped=temperature_skipped,
        refer_below=cfg.eval.refer_below,
        warnings=run_warnings,
        tta=list(cfg.eval.tta),
        val_metrics=classification_metrics(val_logits, y_val, positive),
        train_seconds=_train_seconds(t0, history_rows, bool(extra.get("resumed"))),
        peak_memory_mb=_peak_memory_mb(),
        images={s: int((split["split"] == s).sum()) for s in ("train", "val", "test")},
        excluded_images=excluded_images(cfg.data.exclude, split),
        data_fingerprint=data_fingerprint(
            zip(split["path"].astype(str), split["label"].astype(str), strict=True)
        ),
        skipped_images=[{"path": str(p), "reason": str(r)} for p, r in skipped],
        versions=library_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        disclaimer=medclf.DISCLAIMER,
    )
    # the strategy's own fields; a name that is not a RunInfo field is a TypeError here, not a silent key
    save_run_model(run_dir, model, dataclasses.replace(info, **extra))
    return run_dir


def _train_seconds(
    t0: float | None, history_rows: list[dict[str, Any]] | None, resumed: bool
) -> float | None:
    """Wall time of this process; for a resumed run, at least the epochs' own times from every process that
    trained it, so a run finished after a crash does not report only its last minutes."""
    if t0 is None:
        return None
    elapsed = time.perf_counter() - t0
    if resumed and history_rows:
        elapsed = max(elapsed, sum(float(r.get("seconds") or 0.0) for r in history_rows))
    return round(elapsed, 2)


def _peak_memory_mb() -> float | None:
    """The largest resident memory this process has held (the training process; loader workers not counted)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
