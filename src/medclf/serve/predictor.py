"""One ``Predictor`` for the CLI, the REST server and the web app: image(s) in, decisions with a refer flag out.

The run folder fixes everything: preprocessing, classes, temperature, operating point, refer threshold and the
out-of-distribution detector, so every front end gives the same answer for the same image.
"""

from __future__ import annotations

import contextlib
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

from medclf import DISCLAIMER
from medclf._microbatch import ENGINE_BATCH, OneImagePerCore, run_micro_batches
from medclf.data.transforms import Preprocessing, create_transform
from medclf.errors import BadImageError, ConfigError, MedclfError
from medclf.evaluate.thresholds import decide, resolve_positive_classes
from medclf.models.run_io import OOD_FILE
from medclf.serve.ood import FeatureOOD

__all__ = [
    "BACKENDS",
    "DEFAULT_REFER_BELOW",
    "Explanation",
    "ImageInput",
    "NonFiniteOutputError",
    "Prediction",
    "Predictor",
]

BACKENDS = ("onnx", "openvino", "torch")
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
class _ServingInfo:
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


class _TorchBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, ood: FeatureOOD | None) -> None:
        self.model = model.eval()
        self.ood = ood
        self.uses_images = int(getattr(model, "num_features", 1) or 0) > 0

    def run(self, x: np.ndarray, meta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        # inference_mode keeps no autograd state, so concurrent calls on one eval-mode model do not interact
        with torch.inference_mode():
            xt = torch.from_numpy(x)
            mt = torch.from_numpy(meta) if meta is not None else None
            if self.uses_images:
                feats = self.model.forward_features(xt)
                logits = self.model.forward_head(feats, mt)
            else:
                feats, logits = None, self.model(xt, mt)
        scores = None
        if self.ood is not None and feats is not None:
            scores = self.ood.score(feats.float().numpy())
        return logits.float().numpy(), scores


def _check_backend(backend: str, precision: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    from medclf._openvino import PRECISIONS

    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r}: choose {' or '.join(PRECISIONS)}")
    if precision == "bf16" and backend != "openvino":
        raise ConfigError(f"precision=bf16 runs on backend openvino only (got backend {backend!r})")


class _OnnxBackend:
    """The exported graph, run by ONNX Runtime or OpenVINO (``name`` says which).

    A single image runs on every core (the lowest latency). A batch on ONNX Runtime, when the graph's bytes are
    given, runs one image per call on a second, one-thread session, with one call per core at a time: the
    images are independent, so the cores need not meet at every layer, and a core slowed by a neighbour on a
    shared machine holds up only its own image (docs/benchmarks.md). Both sessions compute the same numbers
    (tested). OpenVINO runs a batch as micro-batches (``medclf._microbatch``).
    """

    def __init__(
        self,
        session: Any,
        has_ood: bool,
        name: str = "onnx",
        *,
        model_bytes: bytes | None = None,
        num_threads: int | None = None,
    ) -> None:
        self.name = name
        self.session = session
        self.inputs = {i.name for i in session.get_inputs()}
        self.has_ood = has_ood
        self.engine_batch = ENGINE_BATCH
        """Images per engine call (``medclf._microbatch``) when a batch is not split over the cores."""
        self.threads = int(num_threads or _cores())
        self.per_image = name == "onnx" and model_bytes is not None and self.threads > 1
        """Whether a batch runs one image per call, one call per core at a time."""
        self._model_bytes = model_bytes if self.per_image else None
        self._lock = threading.Lock()
        self._single: OneImagePerCore | None = None  # the one-thread session, built at the first batch

    def _per_core(self) -> OneImagePerCore:
        with self._lock:
            if self._single is None:
                from medclf._onnx_export import onnx_session

                self._single = OneImagePerCore(
                    onnx_session(self._model_bytes or b"", num_threads=1), self.threads
                )
            return self._single

    def run(self, x: np.ndarray, meta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        feed = {"image": x}
        if "meta" in self.inputs:
            feed["meta"] = meta if meta is not None else np.zeros((x.shape[0], 0), np.float32)
        names = ["logits", "ood_score"]
        # both engines' sessions are thread-safe: one session serves concurrent requests
        if self.per_image and len(x) > 1:
            logits, scores = self._per_core().run(names, feed)
        else:
            logits, scores = run_micro_batches(self.session, names, feed, self.engine_batch)
        return logits, (scores if self.has_ood else None)


def _cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _refer_below_from_run(run_dir: Path, info: Mapping[str, Any]) -> float:
    if info.get("refer_below") is not None:
        return float(info["refer_below"])
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        import yaml

        try:
            cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
            value = (cfg.get("eval") or {}).get("refer_below")
            if value is not None:
                return float(value)
        except (yaml.YAMLError, AttributeError, TypeError, ValueError):
            pass
    return DEFAULT_REFER_BELOW


class Predictor:
    """Predict with a trained run through PyTorch or ONNX Runtime. Safe to share between threads."""

    def __init__(
        self,
        serving: _ServingInfo,
        backend: _TorchBackend | _OnnxBackend,
        *,
        ood: FeatureOOD | None = None,
        ood_threshold: float | None = None,
        torch_model: torch.nn.Module | None = None,
        run_dir: Path | None = None,
        info: dict[str, Any] | None = None,
        max_pixels: int | None = None,
        batch_size: int = 16,
    ) -> None:
        from medclf.data.images import MAX_PIXELS

        self.serving = serving
        self.backend = backend
        self.ood = ood
        self.ood_threshold = ood.threshold if ood is not None else ood_threshold
        self.torch_model = torch_model
        self.run_dir = run_dir
        self.info = dict(info or {})
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
        ``precision="bf16"`` (OpenVINO only): bfloat16 arithmetic on CPUs with AMX or AVX512-BF16, about 2x
        faster, with probabilities that move by a few hundredths (docs/benchmarks-cpu.md).

        ``ood``: fit (first use; cached as ``ood.safetensors`` in the run folder) or load the
        out-of-distribution detector from the run's training/validation images.
        """
        from medclf.models import load_run

        _check_backend(backend, precision)  # fail on a typo before loading anything
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
        _check_backend(backend, precision)
        serving = serving_info_from_run(run)
        detector = load_or_fit_ood(run, max_images=max_ood_images) if ood else None
        if backend == "torch":
            impl: _TorchBackend | _OnnxBackend = _TorchBackend(run.model, detector)
        else:
            from medclf.serve.export import build_onnx, onnx_session

            graph = build_onnx(run.model, serving, detector).SerializeToString()
            impl = _OnnxBackend(
                onnx_session(graph, num_threads, engine=backend, precision=precision),
                has_ood=detector is not None,
                name=backend,
                model_bytes=graph,
                num_threads=num_threads,
            )
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
        from medclf.serve.export import onnx_session, read_onnx

        _check_backend(backend, precision)
        if backend == "torch":
            raise ConfigError("an exported .onnx file runs on backend onnx or openvino, not torch")
        proto, serving, ood_info = read_onnx(path)
        graph = proto.SerializeToString()
        impl = _OnnxBackend(
            onnx_session(graph, num_threads, engine=backend, precision=precision),
            has_ood=ood_info is not None,
            name=backend,
            model_bytes=graph,
            num_threads=num_threads,
        )
        threshold = float(ood_info["threshold"]) if ood_info else None
        return cls(serving, impl, ood_threshold=threshold, info=serving.extra, max_pixels=max_pixels)

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
        logits, scores = self.backend.run(np.ascontiguousarray(x, dtype=np.float32), meta)
        with np.errstate(all="ignore"):  # non-finite rows are refused below, not warned about
            probs = _softmax(np.asarray(logits, np.float64) / max(self.serving.temperature, 1e-6))
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
        if getattr(self.backend, "model", None) is not self.torch_model:
            return self.torch_model  # ONNX backend: nothing else runs this module
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
        for key in ("created", "train_seconds", "versions", "data_fingerprint", "task"):
            if key in self.info and key not in ("task",):
                card[key] = self.info[key]
        return card


def _name(image: Any) -> str:
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    return "<upload>"


def serving_info_from_run(run: Any) -> _ServingInfo:
    """What serving needs from a ``LoadedRun``."""
    info = run.info
    enc = run.meta_encoder.to_dict() if run.meta_encoder is not None else None
    pos = run.positive_class
    if len(run.classes) == 2 and pos not in run.classes:
        pos = run.classes[1]
    return _ServingInfo(
        classes=list(run.classes),
        preprocessing=run.preprocessing,
        threshold=run.threshold,
        positive_class=pos if len(run.classes) == 2 else None,
        temperature=float(run.temperature or 1.0),
        refer_below=_refer_below_from_run(Path(run.run_dir), info),
        metadata_encoder=enc,
        model_name=str((info.get("model") or {}).get("name", "")),
        positive_classes=list(getattr(run, "positive_classes", None) or []),
    )


# ---------------------------------------------------------------------- OOD fitting
def _split_paths(run_dir: Path) -> dict[str, list[str]]:
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
    return str((run.info.get("weights") or {}).get("sha256", ""))


def image_features(
    model: torch.nn.Module, pre: Preprocessing, paths: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Pooled features of the readable images among ``paths`` (unreadable ones are skipped).

    Decoded a batch at a time on every core; on a CPU, from ``GRAPH_MIN_IMAGES`` images up, the features come from
    an ONNX Runtime graph checked against PyTorch (``medclf.models._graph_logits``), else from PyTorch.
    """
    from medclf.data.images import load_image
    from medclf.models._graph_logits import ModelRunner, decoded_chunks
    from medclf.models.inference import GRAPH_MIN_IMAGES

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
    from medclf.models.run_io import read_manifest, seal_file, sha256_file

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
    splits = _split_paths(run_dir)
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
