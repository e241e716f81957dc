"""One ``Predictor`` for the CLI, the REST server and the web app: image(s) in, decisions with a refer flag out.

The run folder fixes everything: preprocessing, classes, temperature, operating point, refer threshold and the
out-of-distribution detector, so every front end gives the same answer for the same image.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from medclf import DISCLAIMER
from medclf.data.transforms import Preprocessing, create_transform
from medclf.errors import BadImageError, ConfigError, MedclfError
from medclf.models.run_io import RunDir, RunInfo
from medclf.runtime.decision import calibrated_probabilities, decide, resolve_positive_classes
from medclf.runtime.engine import ENGINES, Engine, TorchEngine, check_engine, create_graph_engine
from medclf.serve.ood import FeatureOOD, load_or_fit_ood

__all__ = [
    "BACKENDS",
    "DEFAULT_REFER_BELOW",
    "Explanation",
    "ImageInput",
    "NonFiniteOutputError",
    "Prediction",
    "Predictor",
    "ServingInfo",
    "serving_info_from_run",
]

BACKENDS = ENGINES
"""The engines a ``Predictor`` runs on (``medclf.runtime.engine``); ``onnx`` is the default."""
DEFAULT_REFER_BELOW = 0.6
ImageInput = str | os.PathLike | bytes | Image.Image
"""A file path, the bytes of an image file (JPEG, PNG, DICOM, ...) or a decoded PIL image."""


@dataclass(frozen=True)
class Prediction:
    """One image's answer. ``decision`` is the class at the run's operating point; ``label`` the most likely."""

    probabilities: dict[str, float]
    label: str
    decision: str
    confidence: float
    """The highest class probability."""
    refer: bool
    """True when a clinician must look: low confidence or an input unlike the training images."""
    refer_reasons: tuple[str, ...] = ()
    ood_score: float | None = None
    """Squared Mahalanobis distance of the image's features to the training features (None: no detector)."""
    ood_threshold: float | None = None
    disclaimer: str = DISCLAIMER

    def to_dict(self) -> dict[str, Any]:
        return {
            "probabilities": dict(self.probabilities),
            "label": self.label,
            "decision": self.decision,
            "confidence": self.confidence,
            "refer": self.refer,
            "refer_reasons": list(self.refer_reasons),
            "ood_score": self.ood_score,
            "ood_threshold": self.ood_threshold,
            "disclaimer": self.disclaimer,
        }


class NonFiniteOutputError(MedclfError):
    """The model's output (or OOD score) for some images is NaN or infinite: those images get no decision.

    ``rows`` are their positions in the batch; ``predictions`` has the other images' predictions, None at ``rows``.
    """

    REASON = (
        "the model's output is NaN or infinite, so medclf makes no decision; a clinician must read the image, "
        "and the model needs checking (retrain the run if ordinary images do this)"
    )

    def __init__(self, rows: Sequence[int], predictions: Sequence[Prediction | None]) -> None:
        self.rows = list(rows)
        self.predictions = list(predictions)
        which = "" if len(self.predictions) == 1 else f"{len(self.rows)} of {len(self.predictions)} images: "
        super().__init__(which + self.REASON)


@dataclass(frozen=True)
class Explanation:
    """A class-activation map for one image and the overlay drawn from it."""

    cam: np.ndarray
    """[H, W] in [0, 1] at the model's input size."""
    overlay: Image.Image
    target: str
    """The class the map explains."""
    method: str
    prediction: Prediction


@dataclass
class ServingInfo:
    """What serving needs besides the model: from a run folder (``serving_info_from_run``) or an exported file's
    metadata (``medclf.serve.export.read_onnx``)."""

    classes: list[str]
    preprocessing: Preprocessing
    threshold: float | None = None
    positive_class: str | None = None
    temperature: float = 1.0
    refer_below: float = DEFAULT_REFER_BELOW
    metadata_encoder: dict[str, Any] | None = None
    model_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    positive_classes: list[str] = field(default_factory=list)
    """The classes the threshold applies to (binary: ``[positive_class]``); see ``thresholds.decide``."""

    def __post_init__(self) -> None:
        # exports and callers from before positive_classes existed give only the binary positive_class
        self.positive_classes = resolve_positive_classes(
            self.classes, self.positive_class, self.positive_classes
        )


class _LogitsAndFeatures(nn.Module):
    """image (+ meta) -> (logits, pooled features): the features feed the OOD detector, scored in float64."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.uses_images = int(getattr(model, "num_features", 1) or 0) > 0

    def forward(
        self, image: torch.Tensor, meta: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.uses_images:
            return self.model(image, meta), None
        feats = self.model.forward_features(image)
        return self.model.forward_head(feats, meta), feats


def torch_engine(model: nn.Module) -> TorchEngine:
    """The PyTorch engine a ``Predictor`` runs ``model`` on: outputs ``logits`` and ``features``."""
    return TorchEngine(_LogitsAndFeatures(model), outputs=("logits", "features"))


def _refer_below_from_run(run_dir: Path, info: RunInfo) -> float:
    """run.json's ``refer_below``; for runs that do not record it, the recipe's ``eval.refer_below`` in config.yaml
    (read and checked as any recipe); the default without either."""
    if info.refer_below is not None:
        return float(info.refer_below)
    cfg_path = RunDir(run_dir).config
    if not cfg_path.is_file():
        return DEFAULT_REFER_BELOW
    from medclf.config import load_config

    try:
        return float(load_config(cfg_path).eval.refer_below)
    except ConfigError as exc:
        raise ConfigError(
            f"{cfg_path}: {exc}; it sets the run's refer_below, so restore the run's own config.yaml"
        ) from None


class Predictor:
    """Predict with a trained run through PyTorch or ONNX Runtime. Safe to share between threads."""

    def __init__(
        self,
        serving: ServingInfo,
        backend: Engine,
        *,
        ood: FeatureOOD | None = None,
        ood_threshold: float | None = None,
        torch_model: torch.nn.Module | None = None,
        run_dir: Path | None = None,
        info: RunInfo | None = None,
        max_pixels: int | None = None,
        batch_size: int = 16,
    ) -> None:
        from medclf.data.images import MAX_PIXELS

        self.serving = serving
        self.backend = backend
        """The ``medclf.runtime`` engine that answers: a graph's (logits, ood_score), or PyTorch's (logits, features)."""
        self.ood = ood
        self.ood_threshold = ood.threshold if ood is not None else ood_threshold
        self.torch_model = torch_model
        self.run_dir = run_dir
        self.info = info
        """The run's run.json (None for an exported graph)."""
        self.max_pixels = int(max_pixels or MAX_PIXELS)
        self.batch_size = batch_size
        self._transform = create_transform(serving.preprocessing)
        self._min_side = serving.preprocessing.decode_side()
        self._encoder = None
        if serving.metadata_encoder:
            from medclf.models.metadata import MetadataEncoder

            self._encoder = MetadataEncoder.from_dict(serving.metadata_encoder)
        # Grad-CAM hooks the shared torch model, so explanations run one at a time; Score-CAM (seconds per
        # map) has a model copy and a lock of its own, so it does not hold Grad-CAM up
        self._cam_lock = threading.Lock()
        self._cam_model: torch.nn.Module | None = None
        self._slow_cam_lock = threading.Lock()
        self._slow_cam_model: torch.nn.Module | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike[str],
        backend: str = "onnx",
        *,
        precision: str = "f32",
        ood: bool = True,
        max_ood_images: int = 400,
        num_threads: int | None = None,
        max_pixels: int | None = None,
    ) -> Predictor:
        """Load a run folder. ``backend``: ``onnx`` (default) / ``openvino`` export the model in memory and run it
        with ONNX Runtime / OpenVINO (``pip install 'medclf[openvino]'``); ``torch`` runs it eagerly.
        ``precision="bf16"`` (OpenVINO only): bfloat16 arithmetic on CPUs with AMX or AVX512-BF16,
        faster, with probabilities that move by a few hundredths (docs/benchmarks-cpu.md).

        ``ood``: fit (first use; cached as ``ood.safetensors`` in the run folder) or load the
        out-of-distribution detector from the run's training/validation images.
        """
        from medclf.models import load_run

        check_engine(backend, precision)  # fail on a typo before loading anything
        return cls.from_loaded_run(
            load_run(run_dir),
            backend,
            precision=precision,
            ood=ood,
            max_ood_images=max_ood_images,
            num_threads=num_threads,
            max_pixels=max_pixels,
        )

    @classmethod
    def from_loaded_run(
        cls,
        run: Any,
        backend: str = "onnx",
        *,
        precision: str = "f32",
        ood: bool = True,
        max_ood_images: int = 400,
        num_threads: int | None = None,
        max_pixels: int | None = None,
    ) -> Predictor:
        """``from_run`` for a ``medclf.models.LoadedRun`` already in memory (e.g. right after training)."""
        check_engine(backend, precision)
        serving = serving_info_from_run(run)
        detector = load_or_fit_ood(run, max_images=max_ood_images) if ood else None
        if backend == "torch":
            impl: Engine = torch_engine(run.model)
        else:
            from medclf.serve.export import build_onnx

            graph = build_onnx(run.model, serving, detector).SerializeToString()
            impl = create_graph_engine(backend, graph, threads=num_threads, precision=precision)
        return cls(
            serving,
            impl,
            ood=detector,
            torch_model=run.model,
            run_dir=Path(run.run_dir),
            info=run.info,
            max_pixels=max_pixels,
        )

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        *,
        backend: str = "onnx",
        precision: str = "f32",
        num_threads: int | None = None,
        max_pixels: int | None = None,
    ) -> Predictor:
        """Serve an exported ``.onnx`` file alone: everything needed is in its metadata (no explanations).

        ``backend``: ``onnx`` (ONNX Runtime) or ``openvino``; ``precision`` as for ``from_run``."""
        from medclf.serve.export import read_onnx

        check_engine(backend, precision)
        if backend == "torch":
            raise ConfigError("an exported .onnx file runs on backend onnx or openvino, not torch")
        proto, serving, ood_info = read_onnx(path)
        graph = proto.SerializeToString()
        impl = create_graph_engine(backend, graph, threads=num_threads, precision=precision)
        threshold = float(ood_info["threshold"]) if ood_info else None
        return cls(serving, impl, ood_threshold=threshold, max_pixels=max_pixels)

    # ------------------------------------------------------------------ properties
    @property
    def classes(self) -> list[str]:
        return list(self.serving.classes)

    @property
    def threshold(self) -> float | None:
        return self.serving.threshold

    @property
    def positive_class(self) -> str | None:
        return self.serving.positive_class

    @property
    def positive_classes(self) -> list[str]:
        """The classes the operating threshold applies to, summed (binary: the positive class)."""
        return list(self.serving.positive_classes)

    @property
    def metadata_columns(self) -> list[str]:
        return list(self._encoder.columns) if self._encoder else []

    @property
    def metadata_fields(self) -> dict[str, dict[str, Any]]:
        """column -> {"kind": numeric|categorical, "categories": [...]} for forms (the app, the REST API)."""
        if self._encoder is None:
            return {}
        return {
            c: {"kind": self._encoder.kinds[c], "categories": list(self._encoder.categories.get(c, []))}
            for c in self._encoder.columns
        }

    @property
    def can_explain(self) -> bool:
        return self.torch_model is not None and getattr(self.torch_model, "cam_layer", None) is not None

    # ------------------------------------------------------------------ prediction
    def load(
        self, image: ImageInput, name: str = "<upload>", *, max_pixels: int | None = None
    ) -> Image.Image:
        """Decode one input into a PIL image (``BadImageError`` naming ``name`` when it is unusable)."""
        from medclf.data.images import load_image, load_image_bytes

        limit = int(max_pixels or self.max_pixels)
        if isinstance(image, Image.Image):
            return image
        if isinstance(image, bytes | bytearray | memoryview):
            return load_image_bytes(bytes(image), name, max_pixels=limit, min_side=self._min_side)
        if isinstance(image, str | os.PathLike):
            return load_image(image, max_pixels=limit, min_side=self._min_side)
        raise BadImageError(
            name, f"cannot predict on a {type(image).__name__}; pass a path, bytes or a PIL image"
        )

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self._transform(image).numpy()

    def encode_metadata(
        self, metadata: Sequence[Mapping[str, Any] | None] | None, n: int
    ) -> np.ndarray | None:
        if self._encoder is None:
            return None
        rows = [dict(m or {}) for m in (metadata or [{}] * n)]
        import pandas as pd

        return self._encoder.transform(pd.DataFrame(rows, columns=self._encoder.columns)).astype(np.float32)

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        metadata: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[Prediction]:
        """Predict one or many images; ``metadata`` is one mapping per image (or one for a single image).

        Metadata columns the model does not use are ignored; missing ones count as unknown.
        """
        if isinstance(images, str | os.PathLike | bytes | bytearray | Image.Image):
            images = [images]
        images = list(images)
        if isinstance(metadata, Mapping):
            metadata = [metadata] * len(images)
        if metadata is not None and len(metadata) != len(images):
            raise ConfigError(
                f"got {len(images)} images but {len(metadata)} metadata rows; pass one per image"
            )
        out: list[Prediction | None] = []
        bad: list[int] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            arrays = [self.preprocess(self.load(im, _name(im))) for im in chunk]
            x = arrays[0][None] if len(arrays) == 1 else np.stack(arrays)  # one image: no copy
            meta = self.encode_metadata(
                None if metadata is None else metadata[start : start + len(chunk)], len(chunk)
            )
            try:
                out += self.predict_arrays(x, meta)
            except NonFiniteOutputError as exc:
                bad += [start + i for i in exc.rows]
                out += exc.predictions
        if bad:
            raise NonFiniteOutputError(bad, out)
        return out  # type: ignore[return-value]

    def predict_arrays(self, x: np.ndarray, meta: np.ndarray | None = None) -> list[Prediction]:
        """Preprocessed [B, C, H, W] float32 (+ encoded metadata) -> predictions.

        ``NonFiniteOutputError`` when the output for any image is NaN or infinite: such an output is no answer
        (NaN compares false with every threshold, so it would read as the negative class, unreferred).
        """
        logits, scores = self.run_engine(x, meta)
        with np.errstate(all="ignore"):  # non-finite rows are refused below, not warned about
            probs = calibrated_probabilities(logits, max(self.serving.temperature, 1e-6))
        ok = np.isfinite(probs).all(axis=1)
        if scores is not None:
            ok &= np.isfinite(np.asarray(scores, np.float64))
        s = self.serving
        decisions = np.zeros(len(probs), np.int64)  # decided for the whole batch at once:
        decisions[ok] = decide(probs[ok], s.classes, s.threshold, s.positive_classes)
        preds = [
            self._decide(p, None if scores is None else float(scores[i]), int(d)) if ok[i] else None
            for i, (p, d) in enumerate(zip(probs, decisions, strict=True))
        ]
        if not ok.all():
            raise NonFiniteOutputError(np.flatnonzero(~ok).tolist(), preds)
        return preds  # type: ignore[return-value]

    def run_engine(
        self, x: np.ndarray, meta: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw logits [B, C] and OOD scores [B] (None without a detector) for preprocessed images."""
        feed = {"image": np.ascontiguousarray(x, dtype=np.float32)}
        graph = not isinstance(self.backend, TorchEngine)
        if meta is not None:
            feed["meta"] = meta
        elif graph and "meta" in self.backend.inputs:  # a fusion graph with no metadata given: all unknown
            feed["meta"] = np.zeros((len(x), 0), np.float32)
        logits, second = self.backend.run(feed)[:2]
        if graph:  # the exported graph scores OOD itself (0 when it has no detector)
            return logits, second if self.ood_threshold is not None else None
        if self.ood is None or second is None:
            return logits, None
        return logits, self.ood.score(np.asarray(second, np.float32))

    def _decide(self, p: np.ndarray, ood_score: float | None, decided: int | None = None) -> Prediction:
        """One image's answer from its probabilities; ``decided``: its decision, when the batch's was made at once."""
        s = self.serving
        classes = s.classes
        top = int(np.argmax(p))
        if decided is None:
            decided = int(decide(p[None], classes, s.threshold, s.positive_classes)[0])
        decision = classes[decided]
        confidence = float(p[top])
        reasons = []
        if confidence < s.refer_below:
            reasons.append(f"low confidence ({confidence:.2f} < {s.refer_below:.2f})")
        if ood_score is not None and self.ood_threshold is not None and ood_score > self.ood_threshold:
            reasons.append("the image looks unlike the training images (out of distribution)")
        return Prediction(
            probabilities={c: float(v) for c, v in zip(classes, p, strict=True)},
            label=classes[top],
            decision=decision,
            confidence=confidence,
            refer=bool(reasons),
            refer_reasons=tuple(reasons),
            ood_score=ood_score,
            ood_threshold=self.ood_threshold,
        )

    # ------------------------------------------------------------------ explanation
    def explain(
        self,
        image: ImageInput,
        metadata: Mapping[str, Any] | None = None,
        *,
        method: str = "gradcam",
        target: str | int | None = None,
        alpha: float = 0.5,
    ) -> Explanation:
        """Class-activation map (Grad-CAM, Grad-CAM++ or Score-CAM) for ``target`` (default: the decision)."""
        from medclf.explain import compute_cam, overlay_cam

        if not self.can_explain:
            raise MedclfError(
                "explanations need the PyTorch model of an image model: load the run folder "
                "(Predictor.from_run), not an exported ONNX file"
            )
        pil = self.load(image, _name(image))
        x = self.preprocess(pil)[None].astype(np.float32)
        meta = self.encode_metadata([metadata] if metadata else None, 1)
        pred = self.predict_arrays(x, meta)[0]
        if target is None:
            target_name = pred.decision
        elif isinstance(target, int) or (
            isinstance(target, str) and target.isdigit() and target not in self.classes
        ):
            idx = int(target)
            if not 0 <= idx < len(self.classes):
                raise ConfigError(f"--target {target}: class index out of range 0..{len(self.classes) - 1}")
            target_name = self.classes[idx]
        elif target in self.classes:
            target_name = str(target)
        else:
            raise ConfigError(
                f"--target {target!r} is not a class of this model; classes: {', '.join(self.classes)}"
            )
        assert self.torch_model is not None
        slow = method == "scorecam"
        with self._slow_cam_lock if slow else self._cam_lock:
            cam = compute_cam(
                self._model_for_cam(slow),
                torch.from_numpy(x),
                meta=None if meta is None else torch.from_numpy(meta),
                method=method,
                target=self.classes.index(target_name),
            )
        overlay = overlay_cam(pil, cam, alpha, resize=self.serving.preprocessing.resize)
        return Explanation(cam=cam, overlay=overlay, target=target_name, method=method, prediction=pred)

    def _model_for_cam(self, slow: bool = False) -> torch.nn.Module:
        """The model Grad-CAM may hook (call under ``_cam_lock``, or ``_slow_cam_lock`` for ``slow``).

        Grad-CAM registers hooks on ``cam_layer`` and toggles ``requires_grad``; when the torch backend predicts
        with the same module in other threads, their forward passes would feed the hooks and corrupt the map,
        so explanations then use a private copy of the model (made once). Score-CAM (``slow``) always gets a
        copy of its own.
        """
        assert self.torch_model is not None
        if slow:
            if self._slow_cam_model is None:
                import copy

                with self._cam_lock:  # copied while no Grad-CAM hooks it (deepcopy would copy the hooks)
                    self._slow_cam_model = copy.deepcopy(self.torch_model).eval()
            return self._slow_cam_model
        if not isinstance(self.backend, TorchEngine):
            return self.torch_model  # a graph engine: nothing else runs this module
        if self._cam_model is None:
            import copy

            self._cam_model = copy.deepcopy(self.torch_model).eval()
        return self._cam_model

    # ------------------------------------------------------------------ description
    def model_card(self) -> dict[str, Any]:
        """Classes, operating point, preprocessing, validation metrics and the card text, for /model and the app."""
        s = self.serving
        card: dict[str, Any] = {
            "model": s.model_name,
            "classes": s.classes,
            "task": "binary" if len(s.classes) == 2 else "multiclass",
            "positive_class": s.positive_class,
            "positive_classes": list(s.positive_classes),
            "threshold": s.threshold,
            "temperature": s.temperature,
            "refer_below": s.refer_below,
            "preprocessing": s.preprocessing.to_dict(),
            "metadata": self.metadata_fields,
            "backend": self.backend.name,
            "ood": self.ood.info()
            if self.ood
            else ({"threshold": self.ood_threshold} if self.ood_threshold else None),
            "metrics": run_metrics(self.run_dir, s.classes, s.positive_classes, s.threshold)
            if self.run_dir
            else {},
            "card": _card_text(self.run_dir),
            "disclaimer": DISCLAIMER,
        }
        if self.info is not None:
            info = self.info
            facts = {
                "created": info.created,
                "train_seconds": info.train_seconds,
                "versions": info.versions,
                "data_fingerprint": info.data_fingerprint,
            }
            card.update({key: value for key, value in facts.items() if value is not None})
        return card


def _name(image: Any) -> str:
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    return "<upload>"


def serving_info_from_run(run: Any) -> ServingInfo:
    """What serving needs from a ``LoadedRun``."""
    info: RunInfo = run.info
    enc = run.meta_encoder.to_dict() if run.meta_encoder is not None else None
    pos = run.positive_class
    if len(run.classes) == 2 and pos not in run.classes:
        pos = run.classes[1]
    return ServingInfo(
        classes=list(run.classes),
        preprocessing=run.preprocessing,
        threshold=run.threshold,
        positive_class=pos if len(run.classes) == 2 else None,
        temperature=float(run.temperature or 1.0),
        refer_below=_refer_below_from_run(Path(run.run_dir), info),
        metadata_encoder=enc,
        model_name=info.model_name,
        positive_classes=list(getattr(run, "positive_classes", None) or []),
    )


# ---------------------------------------------------------------------- run description
def _card_text(run_dir: Path | None) -> str | None:
    if run_dir is None:
        return None
    for name in ("model_card.md", "MODEL_CARD.md", "report/model_card.md"):
        p = run_dir / name
        if p.is_file():
            return p.read_text(encoding="utf-8", errors="replace")
    return None


def run_metrics(
    run_dir: Path | None,
    classes: list[str],
    positive_class: str | Sequence[str] | None,
    threshold: float | None,
) -> dict[str, Any]:
    """Validation/test metrics: the run's metrics JSON when evaluation wrote one, else computed from
    ``val_predictions.csv`` / ``test_predictions.csv`` (accuracy, balanced accuracy, AUC, n)."""
    if run_dir is None:
        return {}
    from medclf.evaluate.pipeline import INCOMPLETE_FILE

    for name in ("metrics.json", "eval/metrics.json", "report/metrics.json"):
        p = run_dir / name
        if p.is_file() and not (p.parent / INCOMPLETE_FILE).exists():  # an interrupted evaluation: not used
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                break
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        p = run_dir / f"{split}_predictions.csv"
        if p.is_file():
            try:
                out[split] = _metrics_from_predictions(p, classes, positive_class, threshold)
            except Exception:  # a partial CSV must not break /model
                continue
    return out


def _metrics_from_predictions(
    path: Path, classes: list[str], positive_class: str | Sequence[str] | None, threshold: float | None
) -> dict[str, Any]:
    import pandas as pd
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

    df = pd.read_csv(path)
    cols = [f"prob_{c}" for c in classes]
    df = df[df["label"].astype(str).isin(classes)]
    probs = df[cols].to_numpy(float)
    y = df["label"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    if isinstance(positive_class, str) or positive_class is None:
        positive_class = resolve_positive_classes(classes, positive_class)
    pred = decide(probs, classes, threshold, positive_class)
    m: dict[str, Any] = {
        "n": len(df),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
    }
    if len(set(y.tolist())) == len(classes):
        m["auc"] = float(
            roc_auc_score(y, probs[:, 1]) if len(classes) == 2 else roc_auc_score(y, probs, multi_class="ovr")
        )
    return m
