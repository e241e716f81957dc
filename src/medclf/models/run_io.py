"""Run-folder model I/O: weights in safetensors, everything else in run.json. Nothing is ever unpickled.

``run.json`` stores the sha256 of ``model.safetensors``; ``load_run`` refuses weights that do not match it, so
a swapped or edited file is caught before it is used.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medclf._atomic import atomic_path, atomic_write_json
from medclf.data.transforms import Preprocessing
from medclf.errors import MedclfError
from medclf.evaluate.thresholds import resolve_positive_classes
from medclf.models.metadata import MetadataEncoder

__all__ = ["RUN_FORMAT", "WEIGHTS_FILE", "LoadedRun", "load_run", "save_run_model", "sha256_file"]

WEIGHTS_FILE = "model.safetensors"
RUN_FORMAT = 1
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


@dataclass
class LoadedRun:
    """A trained run, ready to predict."""

    model: nn.Module
    """In eval mode, on CPU."""
    info: dict[str, Any]
    """run.json as a dict."""
    preprocessing: Preprocessing
    classes: list[str]
    meta_encoder: MetadataEncoder | None
    threshold: float | None
    """Summed probability of ``positive_classes`` at or above which the decision is a positive class."""
    temperature: float = 1.0
    """Logits are divided by this before the softmax (1.0 = uncalibrated)."""
    run_dir: Path = field(default_factory=Path)
    positive_class: str | None = None
    positive_classes: list[str] = field(default_factory=list)
    """The classes the threshold applies to (binary: ``[positive_class]``; multiclass: the declared group or
    ``[]`` for arg-max decisions). See ``medclf.evaluate.thresholds.decide``."""

    @property
    def metadata_columns(self) -> list[str]:
        return list(self.meta_encoder.columns) if self.meta_encoder else []

    @property
    def task(self) -> str:
        return "binary" if len(self.classes) == 2 else "multiclass"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_run_model(run_dir: str | Path, model: nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.safetensors`` then ``run.json`` (both atomically); returns the run.json dict written.

    ``info`` holds the run description (classes, preprocessing, threshold, ...); the model spec is taken from
    ``model.medclf_spec`` (set by ``create_model``) unless ``info`` has a ``model`` entry.
    """
    from safetensors.torch import save_model

    from medclf.models.tta import unwrap_tta

    model = unwrap_tta(model)  # the views live in info["tta"]; the weights are the inner model's
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    info = dict(info)
    if "model" not in info:
        spec = getattr(model, "medclf_spec", None)
        if spec is None:
            raise MedclfError("save_run_model: the model was not built by medclf.models.create_model")
        info["model"] = spec
    with atomic_path(run_dir / WEIGHTS_FILE, suffix=".safetensors") as tmp:
        # save_model handles shared tensors; contiguous CPU copies keep the file portable
        save_model(model, str(tmp))
        digest = sha256_file(tmp)
    info["weights"] = {"file": WEIGHTS_FILE, "format": "safetensors", "sha256": digest}
    info.setdefault("format_version", RUN_FORMAT)
    atomic_write_json(run_dir / "run.json", _jsonable(info))
    return info


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not path.is_file():
        raise MedclfError(
            f"{run_dir} is not a medclf run folder (no run.json); train one with `medclf train`"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MedclfError(f"{path}: not valid JSON ({exc}); the run folder is damaged, retrain it") from None
    if not isinstance(info, dict) or "model" not in info or "classes" not in info:
        raise MedclfError(f"{path}: missing 'model' or 'classes'; the run folder is damaged, retrain it")
    return info


def load_run(run_dir: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model from run.json and load its verified safetensors weights."""
    from safetensors.torch import load_model

    from medclf.models._registry import create_model

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    weights = info.get("weights") or {}
    fname = str(weights.get("file", WEIGHTS_FILE))
    if (
        Path(fname).name != fname
        or fname.lower().endswith(_PICKLE_SUFFIXES)
        or weights.get("format") != "safetensors"
    ):
        raise MedclfError(
            f"{run_dir / 'run.json'}: weights file {fname!r} is not a safetensors file in the run folder; "
            "medclf never loads pickled weights — retrain the run"
        )
    wpath = run_dir / fname
    if not wpath.is_file():
        raise MedclfError(f"{wpath} is missing; the run folder is incomplete — retrain or restore it")
    expected = weights.get("sha256")
    actual = sha256_file(wpath)
    if not expected or actual != expected:
        raise MedclfError(
            f"{wpath} does not match the sha256 recorded in run.json (file changed after training or run.json "
            "edited); refusing to load it — restore the original file or retrain"
        )
    spec = info["model"]
    kwargs = dict(spec.get("kwargs") or {})
    model = create_model(
        spec["name"], int(spec["num_classes"]), pretrained=False, in_chans=spec.get("in_chans"), **kwargs
    )
    try:
        load_model(model, str(wpath), strict=True, device=str(map_location))
    except Exception as exc:  # safetensors raises plain exceptions on a corrupt header or shape mismatch
        raise MedclfError(
            f"{wpath}: cannot load the weights into {spec['name']} ({exc}); retrain the run"
        ) from None
    model.eval()
    if info.get("tta"):
        from medclf.models.tta import with_tta

        model = with_tta(model, [str(v) for v in info["tta"]])
    classes = [str(c) for c in info["classes"]]
    pre = Preprocessing.from_dict(info["preprocessing"]) if info.get("preprocessing") else None
    if pre is None:
        from medclf.models.preprocessing import resolve_preprocessing

        pre = resolve_preprocessing(model)
    enc = MetadataEncoder.from_dict(info["metadata_encoder"]) if info.get("metadata_encoder") else None
    threshold = info.get("threshold")
    temperature = info.get("temperature") or 1.0
    return LoadedRun(
        model=model,
        info=info,
        preprocessing=pre,
        classes=classes,
        meta_encoder=enc,
        threshold=float(threshold) if threshold is not None else None,
        temperature=float(temperature),
        run_dir=run_dir,
        positive_class=info.get("positive_class"),
        positive_classes=resolve_positive_classes(
            classes, info.get("positive_class"), info.get("positive_classes")
        ),
    )
