"""Full training from decoded images: progressive resizing, weight averaging, warm-up, the time budget, resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from _fixtures_train import make_folder_data, tiny_cfg
from medclf.errors import ConfigError
from medclf.train import train
from medclf.train.budget import MIN_EPOCHS, parse_budget, plan_budget
from medclf.train.image_cache import resolution_schedule

FAST = (
    "train.strategy=full",
    "train.augment=standard",
    "train.low_res_size=16",
    "train.full_res_epochs=1",
    "train.ema=0.9",
    "train.warmup_epochs=1",
    "train.scheduler=cosine",
    "model.input_size=24",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_data(tmp_path_factory.mktemp("fast"), n_per_class=24)


class Sides(pl.Callback):
    """The image side of each epoch's first training batch."""

    def __init__(self) -> None:
        self.sides: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.sides.setdefault(trainer.current_epoch, int(batch[0].shape[-1]))


def test_progressive_resizing_trains_low_then_full_size(data: Path, tmp_path: Path) -> None:
    sides = Sides()
    run = train(tiny_cfg(data, *FAST), tmp_path / "run", progress=False, callbacks=[sides])
    assert sides.sides == {0: 16, 1: 16, 2: 24}
    info = json.loads((run / "run.json").read_text())
    assert info["preprocessing"]["input_size"] == 24 and info["epochs_run"] == 3


def test_weight_average_is_what_validates_and_is_saved(data: Path, tmp_path: Path) -> None:
    """With train.ema the saved weights are the average, not the last step's weights."""
    cfg = tiny_cfg(data, *FAST, "train.epochs=1")  # one epoch: the best epoch is the last one
    run = train(cfg, tmp_path / "ema", progress=False)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    saved = load_file(run / "model.safetensors")
    key = next(k for k in saved if k.endswith("weight"))
    assert torch.equal(saved[key], last[f"ema_model.module.{key}"])
    assert not torch.equal(saved[key], last[f"model.{key}"])


@pytest.mark.slow
def test_image_cache_and_file_reading_learn_alike(data: Path, tmp_path: Path) -> None:
    """The decoded-once path and the read-every-epoch path are two inputs of the same model: both learn the
    task (same validation images, no augmentation)."""
    accs = []
    for cache in ("true", "false"):
        cfg = tiny_cfg(data, "train.epochs=4", f"train.image_cache={cache}")
        run = train(cfg, tmp_path / cache, progress=False)
        accs.append(json.loads((run / "run.json").read_text())["val_metrics"]["acc"])
    assert min(accs) >= 0.75, accs


@pytest.mark.slow
def test_resume_after_a_kill_equals_uninterrupted(data: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(data, *FAST, "train.epochs=3", "model.drop_rate=0.2")
    train(cfg, tmp_path / "a", progress=False)

    class Kill(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            if trainer.current_epoch == 2 and batch_idx == 1:
                raise KeyboardInterrupt

    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(cfg, tmp_path / "b", progress=False, callbacks=[Kill()])
    assert not (tmp_path / "b" / "run.json").exists()
    train(cfg, tmp_path / "b", resume=True, progress=False)
    ha, hb = (pd.read_csv(tmp_path / r / "history.csv") for r in ("a", "b"))
    pd.testing.assert_frame_equal(ha.drop(columns="seconds"), hb.drop(columns="seconds"))
    best = [load_file(tmp_path / r / "model.safetensors") for r in "ab"]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])


@pytest.mark.slow
def test_budget_plans_then_stops_on_time_with_the_best_epoch(data: Path, tmp_path: Path) -> None:
    class Slow(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            # an epoch of a real data set, in miniature; MIN_EPOCHS of them overrun the 12 s budget, so the timer
            # ends the run even when a loaded CPU made the plan the minimum
            time.sleep(2.1)

    cfg = tiny_cfg(data, "train.strategy=full", "train.epochs=60", "train.budget=12s", "model.input_size=24")
    t0 = time.perf_counter()
    run = train(cfg, tmp_path / "budget", progress=False, callbacks=[Slow()])
    elapsed = time.perf_counter() - t0
    info = json.loads((run / "run.json").read_text())
    plan = info["budget"]
    assert plan["strategy"] == "full" and plan["input_size"] == 24 and plan["epochs"] >= MIN_EPOCHS
    assert info["epochs_run"] < plan["epochs"]  # the timer, not the epoch count, ended training
    assert info["best_epoch"] is not None and (run / "model.safetensors").is_file()
    assert elapsed < 12 + 8  # the budget, plus the final predictions of a tiny set
    assert json.loads((run / "budget.json").read_text()) == plan


def test_budget_plan_picks_the_largest_side_that_fits() -> None:
    tp = {224: (18.0, 60.0), 160: (43.0, 140.0), 128: (73.0, 230.0)}
    common = dict(n_train=3600, n_val=780, n_test=780, input_size=224, throughput=tp, strategy="full")
    # 10 minutes: 224 px gives ~2 epochs, 160 px fewer than 6, 128 px enough
    p = plan_budget(600, 30, max_epochs=30, decode_s_per_image=0.002, **common)
    assert p.strategy == "full" and p.input_size == 128 and MIN_EPOCHS <= p.epochs <= 30
    # an hour: the full side, epochs capped at the recipe's
    p = plan_budget(3600, 30, max_epochs=12, decode_s_per_image=0.002, **common)
    assert p.input_size == 224 and p.epochs == 12
    # two minutes: no side fits, the cached strategy instead
    p = plan_budget(120, 30, max_epochs=30, decode_s_per_image=0.002, **common)
    assert p.strategy == "cached" and "cached" in p.note
    # progressive resizing buys epochs at the full side
    p = plan_budget(
        600, 30, max_epochs=30, decode_s_per_image=0.002, low_res_size=128, full_res_epochs=2, **common
    )
    assert p.input_size in (224, 160) and p.epochs >= MIN_EPOCHS


@pytest.mark.parametrize(
    ("text", "seconds"), [("10m", 600), ("90s", 90), ("1.5h", 5400), ("45", 45), (None, None)]
)
def test_parse_budget(text: str | None, seconds: float | None) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "0m", "-5m"])
def test_bad_budget_is_refused_with_an_example(text: str, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.budget"):
        train(tiny_cfg(data, f"train.budget={text}"), tmp_path / "x", progress=False)


def test_resolution_schedule() -> None:
    assert resolution_schedule(5, 160, 128, 2) == [128, 128, 128, 160, 160]
    assert resolution_schedule(3, 160, 0, 2) == [160] * 3
    assert resolution_schedule(2, 160, 128, 5) == [160, 160]
    assert resolution_schedule(3, 128, 160, 1) == [128] * 3
    assert np.all(np.diff(resolution_schedule(10, 224, 128, 3)) >= 0)
