"""Records -> batches: an image+metadata torch Dataset that survives bad images, and a seeded epoch sampler
(the permutation depends only on seed and epoch, so a resumed run sees the same batches)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from medclf.errors import BadImageError

__all__ = ["EpochSampler", "RecordsDataset", "collate_skip_bad"]


class RecordsDataset(Dataset):
    """Rows of a records table -> ``(image [C,H,W] | empty, meta [M] | empty, label index)``.

    A bad image raises ``BadImageError`` (naming the file), or with ``skip_bad`` yields None and is listed in
    ``bad`` (the collate function drops it) — one bad file never stops training.
    """

    def __init__(
        self,
        records: pd.DataFrame,
        classes: list[str],
        transform: Callable[[Any], torch.Tensor] | None,
        meta: np.ndarray | None = None,
        *,
        skip_bad: bool = False,
        loader: Callable[[str], Any] | None = None,
    ) -> None:
        index = {c: i for i, c in enumerate(classes)}
        self.paths = records["path"].astype(str).tolist()
        self.labels = np.array([index[str(v)] for v in records["label"]], dtype=np.int64)
        self.transform = transform
        self.meta = meta
        self.skip_bad = skip_bad
        self.bad: dict[str, str] = {}
        if loader is None:
            from medclf.data import load_image

            loader = load_image
        self.loader = loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        i, item_seed = key if isinstance(key, tuple) else (key, None)
        if self.transform is None:  # metadata-only model: never decode the image
            x = torch.zeros(0)
        else:
            try:
                image = self.loader(self.paths[i])
                if item_seed is None:
                    x = self.transform(image)
                else:
                    # the augmentation of (image, epoch) is fixed by its own seed: the same in a resumed run and
                    # in any worker process, and it leaves the global RNG (dropout) untouched
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(item_seed)
                        x = self.transform(image)
            except BadImageError as exc:
                if not self.skip_bad:
                    raise BadImageError(
                        exc.path,
                        f"{exc.reason}; fix or remove it, or pass --skip-bad (data.skip_bad: true in a recipe)",
                    ) from None
                self.bad[self.paths[i]] = exc.reason
                return None
        m = torch.from_numpy(self.meta[i]) if self.meta is not None else torch.zeros(0)
        return x, m, int(self.labels[i])


def collate_skip_bad(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    items = [it for it in items if it is not None]
    if not items:
        return None
    xs, ms, ys = zip(*items, strict=True)
    return torch.stack(xs), torch.stack(ms), torch.tensor(ys, dtype=torch.long)


class EpochSampler(Sampler[tuple[int, int]]):
    """Shuffled (or class-balanced, with replacement) indices drawn from a generator seeded by (seed, epoch).

    Lightning calls ``set_epoch`` before every epoch, also after ``--resume``, so the order of epoch k is the same
    in an interrupted and an uninterrupted run.
    """

    def __init__(self, labels: np.ndarray, seed: int = 0, balanced: bool = False) -> None:
        self.labels = np.asarray(labels)
        self.seed = seed
        self.balanced = balanced
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """Yields (index, augmentation seed) keys for ``RecordsDataset``."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.labels)
        if self.balanced:
            counts = np.bincount(self.labels)
            w = torch.tensor(1.0 / counts[self.labels], dtype=torch.double)
            order = torch.multinomial(w, n, replacement=True, generator=g).tolist()
        else:
            order = torch.randperm(n, generator=g).tolist()
        base = (self.seed * 1_000_003 + self.epoch) * 1_000_033
        return iter((i, (base + pos) % 2**63) for pos, i in enumerate(order))
