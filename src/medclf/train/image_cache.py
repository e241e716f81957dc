"""Decode every image once, augment tensors: the input pipeline of `full`, `finetune` and `scratch` training.

Each image is decoded and resized to the model's input size once, into one uint8 array held in memory
(``DecodedImages``); every epoch then augments those pixels as tensors (``CachedImageDataset``) instead of decoding
and augmenting a PIL image again. The array costs ``images × channels × size²`` bytes (5,000 images at 224 px,
RGB: 750 MB). Validation images come out exactly as the evaluation transform makes them, so the epoch chosen on
validation is judged on the pixels the finished model will see.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from medclf.data.transforms import Preprocessing, augmentations, create_transform
from medclf.errors import BadImageError

__all__ = ["CachedImageDataset", "DecodedImages"]


class DecodedImages:
    """``pixels`` uint8 [N, C, S, S] of ``paths`` at the input size of ``pre``; ``bad`` maps unreadable paths to
    their reason (their rows stay zero and are never served)."""

    def __init__(self, pixels: np.ndarray, bad: dict[str, str], paths: Sequence[str]) -> None:
        self.pixels = pixels
        self.bad = bad
        self.paths = list(paths)

    @classmethod
    def build(
        cls, paths: Sequence[str], pre: Preprocessing, *, skip_bad: bool, threads: int | None = None
    ) -> DecodedImages:
        from medclf.data.images import load_image

        # the evaluation transform's own resize, without its normalisation: the pixels it would normalise
        to_uint8 = create_transform(pre, "none").to_uint8
        size, chans = pre.input_size, pre.in_chans
        pixels = np.zeros((len(paths), chans, size, size), dtype=np.uint8)
        bad: dict[str, str] = {}

        def decode(i: int) -> None:
            try:
                x = to_uint8(load_image(paths[i], min_side=pre.decode_side()))
            except BadImageError as exc:
                if not skip_bad:
                    raise BadImageError(
                        exc.path,
                        f"{exc.reason}; fix or remove it, or pass --skip-bad (data.skip_bad: true in a recipe)",
                    ) from None
                bad[str(paths[i])] = exc.reason
                return
            pixels[i] = x.numpy()

        # Pillow releases the GIL while it decodes and resizes, so threads use every core
        with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
            list(pool.map(decode, range(len(paths))))
        return cls(pixels, bad, paths)

    @property
    def nbytes(self) -> int:
        return int(self.pixels.nbytes)


class CachedImageDataset(Dataset):
    """``(image [C,H,W] float, meta [M], label)`` from decoded pixels, augmented per item as tensors.

    Keys are ``index`` (no augmentation: validation) or ``(index, seed, size)`` from ``ProgressiveSampler``: the
    item's augmentation is fixed by its seed (the same in a resumed run) and the image is resized to ``size``
    (progressive resizing trains the early epochs at a lower resolution). Unreadable images give None.
    """

    def __init__(
        self,
        images: DecodedImages,
        labels: np.ndarray,
        pre: Preprocessing,
        policy: str = "none",
        meta: np.ndarray | None = None,
    ) -> None:
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.meta = meta
        self.size = pre.input_size
        self.augment = v2.Compose(augmentations(policy, pre.input_size)) if policy != "none" else None
        self.normalize = v2.Compose(
            [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(pre.mean), std=list(pre.std))]
        )
        self._bad = {i for i, p in enumerate(images.paths) if p in images.bad}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        i, seed, size = key if isinstance(key, tuple) else (key, None, self.size)
        if i in self._bad:
            return None
        x = torch.from_numpy(self.images.pixels[i])
        if self.augment is not None and seed is not None:
            # fork: the augmentation draws leave the global RNG (dropout) untouched
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                x = self.augment(x)
        if size != self.size:
            x = v2.functional.resize(x, [size, size], antialias=True)
        m = torch.from_numpy(self.meta[i]) if self.meta is not None else torch.zeros(0)
        return self.normalize(x), m, int(self.labels[i])


def resolution_schedule(epochs: int, size: int, low_size: int, full_epochs: int) -> list[int]:
    """Image side per epoch: ``low_size`` for all but the last ``full_epochs`` epochs, then ``size``
    (``low_size`` 0 or not below ``size``: every epoch at ``size``)."""
    if not low_size or low_size >= size:
        return [size] * epochs
    full = min(epochs, max(1, full_epochs))
    return [low_size] * (epochs - full) + [size] * full


class ProgressiveSampler(torch.utils.data.Sampler):
    """An ``EpochSampler``'s ``(index, seed)`` keys with the epoch's image side appended."""

    def __init__(self, base: Any, sizes: Sequence[int]) -> None:
        self.base = base
        self.sizes = list(sizes)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Any:
        epoch = min(self.base.epoch, len(self.sizes) - 1)
        size = self.sizes[epoch]
        return ((i, seed, size) for i, seed in iter(self.base))
