"""Out-of-distribution score on backbone features: Mahalanobis distance to the training features.

A model answers every input with some class; a chest X-ray sent to a skin-lesion model, a photo of a cat or a
blank frame must instead be referred to a person. Pooled backbone features of such inputs lie far from the
training images' features. Features are L2-normalised first (the direction of a feature vector separates
inputs better than its length: uniform noise has about the norm of a skin image but points elsewhere), then a
Gaussian (mean + Ledoit-Wolf shrunk covariance, stable when there are fewer images than feature dimensions) is
fitted to the training split's features, and flag an input whose squared Mahalanobis
distance exceeds the 99th percentile of the validation split's distances (the training split when there is no
validation split), so about 1% of in-distribution images are flagged by design.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medclf.errors import DataError, MedclfError

if TYPE_CHECKING:
    import torch

    from medclf.data.transforms import Preprocessing

__all__ = ["FeatureOOD", "image_features", "load_or_fit_ood", "split_paths"]


@dataclass
class FeatureOOD:
    """Squared Mahalanobis distance of pooled features to the training distribution, with a threshold."""

    mean: np.ndarray
    """[D] mean training feature."""
    precision: np.ndarray
    """[D, D] inverse of the shrunk training covariance."""
    threshold: float
    """Scores above this are out of distribution."""
    quantile: float = 0.99
    """The calibration quantile the threshold was taken at."""
    n_fit: int = 0
    """Images the Gaussian was fitted on."""
    n_calib: int = 0
    """Images the threshold was taken from."""
    calib_split: str = "val"
    """Which split gave the threshold (val, or train when the run has no validation split)."""
    normalize: bool = True
    """L2-normalise features before the distance."""

    @classmethod
    def fit(
        cls,
        train_features: np.ndarray,
        calib_features: np.ndarray | None = None,
        quantile: float = 0.99,
        *,
        normalize: bool = True,
    ) -> FeatureOOD:
        from sklearn.covariance import LedoitWolf

        x = np.asarray(train_features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise DataError(
                f"the OOD detector needs at least 2 training images' features, got shape {x.shape}"
            )
        if normalize:
            x = _l2(x)
        lw = LedoitWolf(assume_centered=False).fit(x)
        ood = cls(
            mean=lw.location_.astype(np.float32),
            precision=np.asarray(lw.precision_, dtype=np.float32),
            threshold=float("inf"),
            quantile=quantile,
            n_fit=int(x.shape[0]),
            normalize=normalize,
        )
        if calib_features is None or len(calib_features) == 0:
            calib, split = np.asarray(train_features), "train"
        else:
            calib, split = np.asarray(calib_features), "val"
        scores = ood.score(calib)
        ood.threshold = float(np.quantile(scores, quantile))
        ood.n_calib, ood.calib_split = len(calib), split
        return ood

    def score(self, features: np.ndarray) -> np.ndarray:
        """[B, D] features -> [B] squared Mahalanobis distances."""
        f = np.asarray(features, dtype=np.float64)
        d = (_l2(f) if self.normalize else f) - self.mean.astype(np.float64)
        return np.einsum("bi,ij,bj->b", d, self.precision.astype(np.float64), d)

    def low_rank(self, tol: float = 1e-6) -> tuple[float, np.ndarray] | None:
        """``(scale, U)`` with ``d·P·d = scale·|d|² − |d·U|²`` for every ``d``, when ``U`` ([D, k]) has at most half
        of the precision matrix's columns; else None.

        A Gaussian fitted on n images has a sample covariance of rank at most n − 1, so the shrunk covariance has its
        smallest eigenvalue D − n + 1 times over and the precision is ``scale·I`` minus a rank-(n − 1) term. Served
        graphs compute the score from ``U``: the detector fitted on 400 training images reads 1280 × 399 numbers
        per image instead of 1280 × 1280. Eigen-directions within ``tol`` of the largest eigenvalue are dropped
        (they change no score by more than ``tol·scale·|d|²``).
        """
        w, v = np.linalg.eigh(self.precision.astype(np.float64))
        scale = float(w[-1])
        keep = (scale - w) > tol * scale
        if 2 * int(keep.sum()) > len(w):
            return None
        u = v[:, keep] * np.sqrt(scale - w[keep])
        return scale, u.astype(np.float32)

    def is_ood(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    def info(self) -> dict[str, Any]:
        return {
            "method": "mahalanobis",
            "threshold": self.threshold,
            "quantile": self.quantile,
            "n_fit": self.n_fit,
            "n_calib": self.n_calib,
            "calib_split": self.calib_split,
            "num_features": int(self.mean.shape[0]),
            "normalize": self.normalize,
        }

    def save(self, path: str | os.PathLike[str], **extra: str) -> None:
        """safetensors (the arrays) with the rest (and ``extra``) in its string metadata; written atomically."""
        from safetensors.numpy import save_file

        from medclf._atomic import atomic_path

        with atomic_path(path) as tmp:
            save_file(
                {"mean": np.ascontiguousarray(self.mean), "precision": np.ascontiguousarray(self.precision)},
                str(tmp),
                metadata={"medclf_ood": json.dumps({**self.info(), **extra})},
            )

    @staticmethod
    def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
        """The JSON stored beside the arrays (without reading them); {} when the file is unusable."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as fh:
                return dict(json.loads((fh.metadata() or {}).get("medclf_ood", "{}")))
        except Exception:
            return {}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureOOD:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = json.loads((fh.metadata() or {})["medclf_ood"])
                mean, precision = fh.get_tensor("mean"), fh.get_tensor("precision")
        except Exception as exc:
            raise DataError(
                f"{path}: not a valid medclf OOD file ({type(exc).__name__}); delete it and it is rebuilt"
            ) from None
        if precision.shape != (mean.shape[0], mean.shape[0]):
            raise DataError(f"{path}: OOD arrays have inconsistent shapes; delete the file and it is rebuilt")
        return cls(
            mean=mean,
            precision=precision,
            threshold=float(meta["threshold"]),
            quantile=float(meta.get("quantile", 0.99)),
            n_fit=int(meta.get("n_fit", 0)),
            n_calib=int(meta.get("n_calib", 0)),
            calib_split=str(meta.get("calib_split", "val")),
            normalize=bool(meta.get("normalize", False)),
        )


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------- fitting a run's detector
def split_paths(run_dir: Path) -> dict[str, list[str]]:
    """Image paths per split (``train``/``val``/``test``) of a run's split.csv (the first fold of a k-fold split);
    {} when the file is missing or unreadable."""
    import pandas as pd

    path = run_dir / "split.csv"
    if not path.is_file():
        return {}
    try:
        df = pd.read_csv(path)
    except Exception:
        return {}
    if "path" not in df.columns:
        return {}
    if "fold" in df.columns and "split" in df.columns:
        df = df[df["fold"] == df["fold"].min()]
    if "split" not in df.columns:
        return {"train": df["path"].astype(str).tolist()}
    return {s: g["path"].astype(str).tolist() for s, g in df.groupby("split")}


def _weights_digest(run: Any) -> str:
    return str((run.info.weights or {}).get("sha256", ""))


def image_features(
    model: torch.nn.Module, pre: Preprocessing, paths: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Pooled features of the readable images among ``paths`` (unreadable ones are skipped).

    Decoded a batch at a time on every core; on a CPU, from ``medclf.runtime.runner.GRAPH_MIN_IMAGES`` images up,
    the features come from an ONNX Runtime graph checked against PyTorch (``medclf.runtime.ModelRunner``), else
    from PyTorch.
    """
    import torch

    from medclf.data.images import load_image
    from medclf.data.transforms import create_transform
    from medclf.runtime.runner import GRAPH_MIN_IMAGES, ModelRunner, decoded_chunks

    transform = create_transform(pre)
    min_side = pre.decode_side()

    def decode(i: int) -> torch.Tensor | None:
        try:
            return transform(load_image(paths[i], min_side=min_side))
        except MedclfError:
            return None

    feats: list[np.ndarray] = []
    with ModelRunner(model, features=True, graph=len(paths) >= GRAPH_MIN_IMAGES) as run:
        for _, decoded in decoded_chunks(len(paths), decode, batch_size):
            batch = [t for t in decoded if t is not None]
            if batch:
                feats.append(run(torch.stack(batch)))
    return (
        np.concatenate(feats) if feats else np.zeros((0, int(getattr(model, "num_features", 0))), np.float32)
    )


def load_or_fit_ood(run: Any, *, max_images: int = 400, seed: int = 0) -> FeatureOOD | None:
    """The run's OOD detector: ``ood.safetensors`` when it matches the weights, else fitted from split.csv.

    Returns None (no OOD flag; low confidence still refers) when the model has no image features or the
    training images are not on this machine.
    """
    if int(getattr(run.model, "num_features", 0) or 0) <= 0:
        return None
    from medclf.models.run_io import OOD_FILE, read_manifest, seal_file, sha256_file

    run_dir = Path(run.run_dir)
    cache = run_dir / OOD_FILE
    digest = _weights_digest(run)
    digests = read_manifest(run_dir)
    # a detector the manifest does not vouch for (added later, or edited: a threshold of 1e30 refers nothing) is
    # not used; a folder saved before manifests has only the weights' digest to go by
    vouched = digests is None or (
        cache.is_file() and OOD_FILE in digests and sha256_file(cache) == digests[OOD_FILE]
    )
    if vouched and cache.is_file() and FeatureOOD.read_info(cache).get("weights_sha256") == digest:
        try:
            return FeatureOOD.load(cache)
        except MedclfError:
            pass  # damaged: refit below
    splits = split_paths(run_dir)
    rng = np.random.default_rng(seed)

    def sample(paths: list[str], n: int) -> list[str]:
        if len(paths) <= n:
            return paths
        return [paths[i] for i in sorted(rng.choice(len(paths), n, replace=False))]

    train = sample(splits.get("train", []), max_images)
    val = sample(splits.get("val", []), max_images // 2)
    ftrain = image_features(run.model, run.preprocessing, train)
    if len(ftrain) < 2:
        return None
    fval = image_features(run.model, run.preprocessing, val) if val else None
    ood = FeatureOOD.fit(ftrain, fval)
    # a read-only run folder keeps the detector in memory only
    with contextlib.suppress(OSError):
        ood.save(cache, weights_sha256=digest)
        seal_file(run_dir, OOD_FILE)
    return ood
