"""`medclf ensemble`: several trained runs on one split become one run (the average of their probabilities).

The members must share classes and the split (the same validation and test images): the ensemble's temperature
and operating point are chosen on that validation split, exactly as training does for a single run
(``engine.finalize_run``), and its test predictions are scored like any run's. Members may differ in backbone,
input size and normalisation (``medclf.models.ensemble.FoldEnsemble`` adapts the input per member).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medclf.errors import ConfigError

__all__ = ["build_run_ensemble"]


def _split_key(split: pd.DataFrame, part: str) -> list[tuple[str, str]]:
    rows = split[split["split"] == part]
    return sorted(zip(rows["path"].astype(str), rows["label"].astype(str), strict=True))


def build_run_ensemble(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    threshold: str | None = None,
    name: str | None = None,
) -> Path:
    """Write the run folder ``out_dir``: the members' calibrated probabilities averaged, with a temperature and
    operating point (``threshold``, default the first member's ``eval.threshold``) fitted on the shared
    validation split. Returns ``out_dir``."""
    from medclf._atomic import atomic_path, atomic_write_text
    from medclf.config import dump_config, load_config
    from medclf.models import RunDir, load_run
    from medclf.models.ensemble import FoldEnsemble
    from medclf.models.tta import unwrap_tta
    from medclf.train.engine import finalize_run

    t0 = time.perf_counter()  # finalize_run measures train_seconds on the same clock
    if len(run_dirs) < 2:
        raise ConfigError("medclf ensemble needs at least 2 run folders")
    out = Path(out_dir)
    if RunDir(out).info_path.exists():
        raise ConfigError(f"{out} already holds a run; choose a new --out folder")
    runs = [load_run(r) for r in run_dirs]
    first = runs[0]
    splits = []
    for r in runs:
        if not (r.run_dir / "split.csv").is_file():
            raise ConfigError(
                f"{r.run_dir}: no split.csv; only training runs (not fold ensembles) can be members"
            )
        splits.append(pd.read_csv(r.run_dir / "split.csv"))
    reference = {part: _split_key(splits[0], part) for part in ("val", "test")}
    for r, split in zip(runs[1:], splits[1:], strict=True):
        if r.classes != first.classes:
            raise ConfigError(f"{r.run_dir} has classes {r.classes}, {first.run_dir} has {first.classes}")
        if r.meta_encoder is not None or first.meta_encoder is not None:
            raise ConfigError(
                f"{r.run_dir}: ensembles of metadata-fusion runs are not supported (each fits its own metadata "
                "encoder); ensemble image-only runs"
            )
        pre, pre0 = r.preprocessing, first.preprocessing
        if (pre.in_chans, pre.resize) != (pre0.in_chans, pre0.resize):
            raise ConfigError(
                f"{r.run_dir} reads images as {pre.in_chans} channel(s) with resize={pre.resize}, {first.run_dir} "
                f"as {pre0.in_chans} with resize={pre0.resize}; members must agree on both"
            )
        for part in ("val", "test"):
            if _split_key(split, part) != reference[part]:
                raise ConfigError(
                    f"{r.run_dir} and {first.run_dir} have different {part} images; train the members on one "
                    "split (same data and data.seed, or the same data.split_csv) so that the ensemble's operating "
                    "point is chosen on images none of them trained on"
                )
    if any(getattr(unwrap_tta(r.model), "members", None) is not None for r in runs):
        raise ConfigError("a member is itself an ensemble; list its runs instead")

    cfg = load_config(first.run_dir / "config.yaml")
    cfg.name = name or "ensemble-" + "+".join(r.info.name or r.run_dir.name for r in runs)
    cfg.eval.tta = []  # the members' views, if any, are not carried over: one input adapter serves them all
    if threshold is not None:
        cfg.eval.threshold = threshold
    inputs = [
        {
            "input_size": r.preprocessing.input_size,
            "mean": list(r.preprocessing.mean),
            "std": list(r.preprocessing.std),
        }
        for r in runs
    ]
    split = splits[0]
    val_df = split[split["split"] == "val"].reset_index(drop=True)
    test_df = split[split["split"] == "test"].reset_index(drop=True)
    if val_df.empty:
        raise ConfigError(
            f"{first.run_dir}/split.csv has no validation images to choose the operating point on"
        )
    model = FoldEnsemble.from_runs(runs, member_inputs=inputs)
    # the ensemble reads the input the model chose (the largest member's); smaller members are resized inside it
    big = runs[inputs.index(model.input_cfg)].preprocessing
    preprocessing = dataclasses.replace(big, resize=first.preprocessing.resize)
    out.mkdir(parents=True, exist_ok=True)
    if (first.run_dir / "dataset.yaml").is_file():
        shutil.copyfile(first.run_dir / "dataset.yaml", out / "dataset.yaml")
    with atomic_path(out / "split.csv", suffix=".csv") as tmp:
        split.to_csv(tmp, index=False)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    return finalize_run(
        cfg,
        out,
        model=model,
        preprocessing=preprocessing,
        classes=first.classes,
        meta_encoder=None,
        val_df=val_df,
        test_df=test_df,
        split=split,
        extra={
            "strategy": "ensemble",
            "ensemble": {
                "members": [str(r.run_dir.resolve()) for r in runs],
                "member_temperatures": [float(r.temperature) for r in runs],
                "member_inputs": inputs,
            },
            "train_seconds_members": round(sum(float(r.info.train_seconds or 0.0) for r in runs), 2),
        },
        t0=t0,
    )
