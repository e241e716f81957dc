"""What a run folder says about itself: data fingerprint, library versions, the training-curve plot."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["data_fingerprint", "library_versions", "plot_history"]


def data_fingerprint(rows: Iterable[tuple[str, str]]) -> str:
    """sha256 over the sorted (path, size, mtime, label) of every image: changes when any file or label does."""
    h = hashlib.sha256()
    for path, label in sorted(set(rows)):
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        h.update(f"{path}\t{size}\t{mtime}\t{label}\n".encode())
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    from importlib import metadata

    import medclf

    out = {"python": platform.python_version(), "medclf": medclf.__version__}
    for dist in ("torch", "torchvision", "timm", "lightning", "numpy", "scikit-learn", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def plot_history(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Loss and validation metrics per epoch, as a PNG."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medclf._atomic import atomic_path

    epochs = [r["epoch"] + 1 for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        ax1.plot(epochs, [r.get(key) for r in rows], marker="o", label=key)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    for key in ("val_acc", "val_bacc", "val_auc"):
        ax2.plot(epochs, [r.get(key) for r in rows], marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1.02)
    ax2.legend()
    head = [r["epoch"] + 1 for r in rows if r.get("phase") == "head"]
    if head:
        for ax in (ax1, ax2):
            ax.axvspan(min(head) - 0.5, max(head) + 0.5, color="0.9", label="frozen backbone")
    fig.suptitle(title or "training curves")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
