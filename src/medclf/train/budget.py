"""`train.budget`: fit a run into a wall-clock budget from throughput measured on this machine at the start.

The plan takes the largest image side (the recipe's input size or a smaller one) at which the budget still buys
``MIN_EPOCHS`` epochs of training (or the recipe's epochs, if fewer), and as many epochs there as fit, up to the
recipe's. When even the smallest side cannot, the run falls back to the `cached` strategy, whose epochs cost a
fraction of one. Lightning's ``Timer`` then stops training when the time for it is spent; the best epoch so far
is the model.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from medclf.errors import ConfigError

__all__ = ["MIN_EPOCHS", "BudgetPlan", "measure_throughput", "parse_budget", "plan_budget"]

MIN_EPOCHS = 6
SIDES = (384, 320, 288, 256, 224, 192, 160, 128)
SAFETY = 0.92  # of the time left: throughput measured on a few batches is a little optimistic
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_budget(text: str | float | int | None) -> float | None:
    """'10m', '90s', '1.5h' or a number of seconds -> seconds (None stays None)."""
    if text is None or text == "":
        return None
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
        if not m:
            raise ConfigError(f"train.budget={text!r}: write a duration such as 10m, 90s or 1h")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds <= 0:
        raise ConfigError(f"train.budget={text!r}: the budget must be positive")
    return seconds


@dataclass
class BudgetPlan:
    budget_s: float
    strategy: str
    input_size: int
    epochs: int
    train_seconds: float
    """Time left for the training epochs (Lightning's Timer stops there)."""
    train_img_s: dict[int, float]
    """Measured training throughput (images/s) per image side."""
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_throughput(
    model: torch.nn.Module,
    sides: list[int],
    *,
    in_chans: int,
    batch_size: int,
    precision: str = "32-true",
    steps: int = 3,
) -> dict[int, tuple[float, float]]:
    """{side: (training images/s, inference images/s)} of ``model`` (a copy: the model is untouched), on random
    batches, after one warm-up step at each side."""
    net = copy.deepcopy(model).train()
    net = net.to(memory_format=torch.channels_last)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    bf16 = precision.startswith("bf16")
    out: dict[int, tuple[float, float]] = {}
    with torch.random.fork_rng(devices=[]):
        for side in sides:
            x = torch.randn(batch_size, in_chans, side, side).contiguous(memory_format=torch.channels_last)
            y = torch.zeros(batch_size, dtype=torch.long)
            times = []
            for _ in range(steps + 1):
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = torch.nn.functional.cross_entropy(net(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t)
            net.eval()
            with torch.inference_mode():
                t = time.perf_counter()
                net(x)
                infer = time.perf_counter() - t
            net.train()
            out[side] = (batch_size / (sum(times[1:]) / steps), batch_size / max(infer, 1e-9))
    return out


def candidate_sides(input_size: int) -> list[int]:
    """The recipe's side, then the smaller standard sides, largest first."""
    return [input_size, *[s for s in SIDES if s < input_size]]


def plan_budget(
    budget_s: float,
    elapsed_s: float,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    input_size: int,
    max_epochs: int,
    throughput: dict[int, tuple[float, float]],
    decode_s_per_image: float,
    strategy: str,
    low_res_size: int = 0,
    full_res_epochs: int = 2,
    sides: list[int] | None = None,
) -> BudgetPlan:
    """The largest of ``sides`` (default: every side of ``throughput``) with at least min(MIN_EPOCHS, max_epochs)
    epochs in the time left, after decoding the training and validation images once, validating every epoch and
    predicting val and test at the end; else the cached strategy."""
    left = (budget_s - elapsed_s) * SAFETY
    want = min(MIN_EPOCHS, max_epochs)
    decode = (n_train + n_val) * decode_s_per_image
    plan = functools.partial(
        BudgetPlan, budget_s=budget_s, train_img_s={s: round(v[0], 1) for s, v in throughput.items()}
    )
    for side in sorted(sides or throughput, reverse=True):
        train_ips, infer_ips = throughput[side]
        low = low_res_size if 0 < low_res_size < side else side
        low_ips = throughput.get(low, (train_ips * (side / low) ** 2, 0.0))[0]
        finish = (n_val + n_test) * (decode_s_per_image + 1.0 / infer_ips)
        per_val = n_val / infer_ips
        time_train = left - decode - finish
        full = min(full_res_epochs, max_epochs) if low != side else max_epochs
        cost_full = n_train / train_ips + per_val
        cost_low = n_train / low_ips + per_val
        epochs = 0
        if time_train > 0:
            if low == side:
                epochs = int(time_train // cost_full)
            else:
                after_full = time_train - full * cost_full
                epochs = (
                    full + int(after_full // cost_low) if after_full > 0 else int(time_train // cost_full)
                )
        epochs = min(epochs, max_epochs)
        if epochs >= want:
            return plan(
                strategy=strategy,
                input_size=side,
                epochs=epochs,
                train_seconds=max(1.0, time_train),
                note=(
                    f"{side} px, {epochs} epochs of {strategy} training "
                    f"({train_ips:.0f} images/s measured at {side} px on this machine)"
                ),
            )
    smallest = min(throughput)
    return plan(
        strategy="cached",
        input_size=input_size,
        epochs=max_epochs,
        train_seconds=max(1.0, left),
        note=(
            f"fewer than {want} epochs of {strategy} training fit even at {smallest} px "
            f"({throughput[smallest][0]:.0f} images/s): the cached strategy instead"
        ),
    )


def timer_duration(seconds: float) -> Any:
    """Lightning's ``Timer`` duration for ``seconds`` (at least one second)."""
    from datetime import timedelta

    return timedelta(seconds=max(1.0, math.floor(seconds)))
