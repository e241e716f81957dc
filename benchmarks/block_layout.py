"""Training the top blocks from cached maps: memory layout and precision, one optimiser step per batch.

EfficientNet-Lite0 (random weights: the arithmetic is the same), the top 7 blocks + head as the cached strategy
trains them, a batch of 64 cached 112x14x14 maps; best of 5 steps after a warm-up, in ms per batch.

    python benchmarks/block_layout.py
"""

from __future__ import annotations

import time

import torch

from medclf.models import create_model
from medclf.train.features import split_backbone


def step_ms(
    top: torch.nn.Module, head: torch.nn.Module, x0: torch.Tensor, channels_last: bool, bf16: bool
) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    top = top.to(memory_format=fmt)
    opt = torch.optim.AdamW([*top.parameters(), *head.parameters()], 1e-4)
    x = x0.contiguous(memory_format=fmt)
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = head(top(x))
        loss = out.float().logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times[1:])


def main() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 2, pretrained=False)
    top = split_backbone(model, 7).top.train()
    x0 = torch.randn(64, 112, 14, 14)
    for channels_last in (False, True):
        for bf16 in (False, True):
            ms = step_ms(top, model.head, x0, channels_last, bf16)
            print(f"channels_last={channels_last} bf16={bf16}: {ms:.0f} ms per batch of 64")


if __name__ == "__main__":
    main()
