"""Batch prediction over dataset records with a loaded run -> the predictions.csv table."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from medclf.data.transforms import create_transform
from medclf.errors import BadImageError
from medclf.models.run_io import LoadedRun
from medclf.runtime.decision import calibrated_probabilities, decide, resolve_positive_classes
from medclf.runtime.engine import TorchEngine
from medclf.runtime.runner import GRAPH_MIN_IMAGES, ModelRunner, decoded_chunks

__all__ = [
    "decision",
    "open_image",
    "predict_frame",
    "predict_logits",
    "predict_records",
    "predictions_frame",
    "prob_columns",
]


def open_image(path: str, min_side: int | None = None) -> Any:
    """Decode one image with the data layer's loader (DICOM, 16-bit, EXIF ...), raising BadImageError.

    ``min_side``: see ``medclf.data.load_image`` (a run's ``preprocessing.decode_side()``)."""
    from medclf.data import load_image

    return load_image(path, min_side=min_side)


def prob_columns(classes: list[str]) -> list[str]:
    return [f"prob_{c}" for c in classes]


def decision(
    probs: np.ndarray,
    classes: list[str],
    threshold: float | None,
    positive_class: str | Sequence[str] | None,
) -> list[str]:
    """Class names at the run's operating point (``medclf.runtime.decision.decide``): the threshold on the
    summed probability of the positive class(es) when there is one, else the arg-max."""
    if isinstance(positive_class, str) or positive_class is None:
        positive_class = resolve_positive_classes(classes, positive_class)
    return [classes[i] for i in decide(probs, classes, threshold, positive_class)]


def predict_logits(
    model: torch.nn.Module,
    images: list[torch.Tensor] | None,
    meta: np.ndarray | None,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits [N, C] for preprocessed image tensors (or None for a metadata-only model) and encoded metadata, in
    PyTorch (``medclf.runtime.TorchEngine``: the model in eval mode, on its device)."""
    engine = TorchEngine(model)
    n = len(images) if images is not None else (0 if meta is None else len(meta))
    out = []
    for start in range(0, n, batch_size):
        feed = {}
        if images is not None:
            feed["image"] = torch.stack(images[start : start + batch_size]).numpy()
        if meta is not None:
            feed["meta"] = meta[start : start + batch_size]
        out.append(engine.run(feed)[0])
    return np.concatenate(out) if out else np.zeros((0, getattr(model, "num_classes", 0)), dtype=np.float32)


def predict_records(
    loaded_run: LoadedRun,
    records: pd.DataFrame,
    batch_size: int = 64,
    skip_bad: bool = False,
    *,
    loader: Callable[[str], Any] | None = None,
    engine: str = "auto",
) -> tuple[pd.DataFrame, np.ndarray, list[tuple[str, str]]]:
    """Raw logits (no temperature) for the decodable rows: (rows kept, logits [N, C], skipped (path, reason)).

    Images are decoded ``batch_size`` at a time on every core. ``engine``: ``"auto"`` runs a model on the CPU
    through ONNX Runtime (``medclf.runtime.ModelRunner``: exported once per call and checked against PyTorch on
    the first two images; faster on a CPU: docs/benchmarks-serving.md) when there are at least
    ``medclf.runtime.runner.GRAPH_MIN_IMAGES`` rows, and anything else in PyTorch; ``"torch"`` always uses
    PyTorch.
    """
    if engine not in ("auto", "torch"):
        raise ValueError(f"engine must be 'auto' or 'torch', not {engine!r}")
    model = loaded_run.model
    model.eval()
    loader = loader or functools.partial(open_image, min_side=loaded_run.preprocessing.decode_side())
    rows = records.reset_index(drop=True)
    enc = loaded_run.meta_encoder
    if getattr(model, "meta_only", False):
        meta = enc.transform(rows) if enc else None
        return rows, predict_logits(model, None, meta, batch_size), []
    tf = create_transform(loaded_run.preprocessing, "none")
    paths = rows["path"].astype(str).tolist()
    skipped: list[tuple[str, str]] = []
    keep: list[int] = []
    logits: list[np.ndarray] = []
    graph = engine == "auto" and len(paths) >= GRAPH_MIN_IMAGES  # a handful: PyTorch before any export

    def decode(i: int) -> torch.Tensor | BadImageError:
        try:
            return tf(loader(paths[i]))
        except BadImageError as exc:
            return exc

    with ModelRunner(model, graph=graph) as run:
        for chunk, decoded in decoded_chunks(len(paths), decode, batch_size):
            idx, images = [], []
            for i, got in zip(chunk, decoded, strict=True):
                if isinstance(got, BadImageError):
                    if not skip_bad:
                        raise got
                    skipped.append((paths[i], got.reason))
                    continue
                idx.append(i)
                images.append(got)
            if idx:
                logits.append(run(torch.stack(images), enc.transform(rows.iloc[idx]) if enc else None))
                keep.extend(idx)
    rows = rows.iloc[keep].reset_index(drop=True)
    if not logits:
        return rows, np.zeros((0, len(loaded_run.classes)), dtype=np.float32), skipped
    return rows, np.concatenate(logits), skipped


def predictions_frame(loaded_run: LoadedRun, rows: pd.DataFrame, logits: np.ndarray) -> pd.DataFrame:
    """The predictions.csv table for ``rows`` from raw logits, applying the run's temperature and operating point."""
    classes = loaded_run.classes
    # the function the threshold was chosen with: the validation image the threshold sits on stays at it
    probs = calibrated_probabilities(np.asarray(logits, dtype=np.float32), loaded_run.temperature)
    out = pd.DataFrame({"path": rows["path"].astype(str).to_numpy()})
    out["label"] = rows["label"].astype(str).to_numpy() if "label" in rows else ""
    if "group" in rows:
        out["group"] = rows["group"].astype(str).to_numpy()
    else:
        out["group"] = [p.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0] for p in out["path"]]
    for j, col in enumerate(prob_columns(classes)):
        out[col] = probs[:, j]
    positive = loaded_run.positive_classes or resolve_positive_classes(classes, loaded_run.positive_class)
    out["pred"] = decision(probs, classes, loaded_run.threshold, positive)
    for col in loaded_run.metadata_columns:
        if col in rows:
            out[col] = rows[col].to_numpy()
    return out


def predict_frame(
    loaded_run: LoadedRun,
    records: pd.DataFrame,
    batch_size: int = 64,
    skip_bad: bool = False,
    *,
    loader: Callable[[str], Any] | None = None,
) -> pd.DataFrame:
    """Predict every row of ``records`` (needs ``path``; ``label``, ``group`` and metadata columns are kept).

    Returns ``path,label,group,prob_<class>...,pred`` + metadata columns, with the run's temperature applied and
    the operating point (``decide``) used for ``pred``. With ``skip_bad`` unreadable images are left out and listed in
    ``result.attrs["skipped"]`` as (path, reason); otherwise the first one raises ``BadImageError``.
    """
    rows, logits, skipped = predict_records(loaded_run, records, batch_size, skip_bad, loader=loader)
    out = predictions_frame(loaded_run, rows, logits)
    out.attrs["skipped"] = skipped
    return out
