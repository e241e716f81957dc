"""Run-folder model I/O: weights in safetensors, everything else in run.json. Nothing is ever unpickled.

``manifest.json`` holds the sha256 of every file of the run folder that decides what the run answers
(``SEALED_FILES``: the weights, run.json, config.yaml, dataset.yaml, split.csv and the OOD detector). ``load_run``
refuses a folder whose files do not match it, checks run.json's fields by type and range, and refuses a model
whose weights or output on a fixed probe input are not finite, so an edited threshold, a relabelled class list, a
replaced file or a diverged model is caught before anything is predicted with it.

Run folders saved before the manifest existed (``format_version`` 1) load with a warning: their weights are still
checked against the sha256 in run.json, their other files are not.

``RunInfo`` is run.json as a typed record (read, checked and written only here) and ``RunDir`` names the files of a
run folder; every other module reads a run's description through them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medclf._atomic import atomic_path, atomic_write_json, atomic_write_text, json_text, make_dir
from medclf.data.transforms import Preprocessing
from medclf.errors import ConfigError, MedclfError
from medclf.models.metadata import MetadataEncoder
from medclf.runtime.decision import resolve_positive_classes

__all__ = [
    "MANIFEST_FILE",
    "OOD_FILE",
    "RUN_FORMAT",
    "SEALED_FILES",
    "WEIGHTS_FILE",
    "LoadedRun",
    "RunDir",
    "RunInfo",
    "check_finite_model",
    "load_run",
    "read_manifest",
    "save_run_model",
    "seal_file",
    "sha256_file",
    "verify_run_files",
]

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
OOD_FILE = "ood.safetensors"
SEALED_FILES = (WEIGHTS_FILE, "run.json", "config.yaml", "dataset.yaml", "split.csv", OOD_FILE)
"""The run-folder files ``manifest.json`` records: what the run decides with, and which images it is evaluated
and its OOD detector fitted on."""
_CACHES = (OOD_FILE,)
"""Sealed files that are rebuilt when absent (so they may be missing, and one the manifest does not list is
ignored rather than refused)."""
RUN_FORMAT = 2
"""2: the run folder has a manifest.json. 1: saved before the manifest existed."""
_MAX_INPUT_SIZE = 4096
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")
_TEXT_FIELDS = (
    "name",
    "task",
    "threshold_rule",
    "threshold_skipped",
    "temperature_skipped",
    "strategy",
    "monitor",
    "data_fingerprint",
    "created",
    "disclaimer",
)


_OPTIONAL = {"optional": True}
"""Field metadata: a new record leaves the field out of run.json while it holds its default (only some writers
set it)."""


@dataclass(kw_only=True)
class RunInfo:
    """run.json as a typed record: what the run's model is, how it decides, and how it was trained.

    ``from_json`` and ``from_dict`` check every field by type and range and name the file and the field of a bad
    value. Keys this medclf does not know (written by an older or newer one) are kept in ``extra`` and written
    back; missing keys get the defaults below. ``to_dict`` is the JSON object: a record read from a file gives
    back its keys in their order, a new one every field in the order below (optional ones only when set).
    """

    name: str | None = None
    classes: list[str]
    """The class order: index = model output index."""
    task: str | None = None
    """``binary`` or ``multiclass``."""
    preprocessing: dict[str, Any] | None = None
    """``Preprocessing.to_dict()``; None: resolved from the model (``resolve_preprocessing``)."""
    metadata_encoder: dict[str, Any] | None = None
    """``MetadataEncoder.to_dict()`` of an image+metadata model."""
    positive_class: str | None = None
    """The binary run's positive class (None for multiclass runs)."""
    threshold: float | None = None
    """Summed probability of the positive classes at or above which the decision is a positive class."""
    positive_classes: list[str] | None = None
    """The classes the threshold applies to; [] for arg-max decisions; None in files written before the list."""
    threshold_rule: str | None = None
    threshold_skipped: str | None = None
    """Why the rule was not applied (too few validation images): the threshold is then the default."""
    temperature: float | None = None
    """Logits are divided by it before the softmax; None or absent: 1."""
    temperature_skipped: str | None = None
    refer_below: float | None = field(default=None, metadata=_OPTIONAL)
    """Top probability below which an answer is referred to a clinician (``eval.refer_below``)."""
    warnings: list[str] = field(default_factory=list)
    tta: list[str] = field(default_factory=list)
    """Test-time views averaged with the plain image (``medclf.models.tta``)."""
    val_metrics: dict[str, float | None] | None = None
    strategy: str | None = None
    ensemble: dict[str, Any] | None = field(default=None, metadata=_OPTIONAL)
    """An ensemble run's members (run folders), their temperatures and inputs."""
    monitor: str | None = None
    best_epoch: int | None = None
    best_score: float | None = None
    epochs_run: int | None = None
    resumed: bool = False
    budget: dict[str, Any] | None = None
    """The plan ``train.budget`` made (``medclf.train.budget``), None without a budget."""
    train_seconds: float | None = None
    train_seconds_members: float | None = field(default=None, metadata=_OPTIONAL)
    """An ensemble's members' training time, summed."""
    peak_memory_mb: float | None = None
    images: dict[str, int] | None = None
    """Images per split: train, val, test."""
    excluded_images: int | None = None
    """Training images ``data.exclude`` left out (None: unknown, a resumed run)."""
    data_fingerprint: str | None = None
    skipped_images: list[dict[str, str]] = field(default_factory=list)
    """``{"path", "reason"}`` of each unreadable image training skipped."""
    versions: dict[str, str] | None = None
    created: str | None = None
    """ISO 8601 time, UTC, of the save."""
    disclaimer: str | None = None
    model: dict[str, Any] | None = None
    """``{name, num_classes, in_chans, kwargs}``: what ``create_model`` rebuilds (set by ``save_run_model``)."""
    weights: dict[str, Any] | None = None
    """``{file, format, sha256}`` of the weights (set by ``save_run_model``)."""
    format_version: int | None = None
    """``RUN_FORMAT`` of the writer; None or absent: 1."""
    extra: dict[str, Any] = field(default_factory=dict)
    """run.json keys that are not fields of this record, kept as read."""
    _keys: tuple[str, ...] = field(default=(), init=False, repr=False, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | Path = "run.json") -> RunInfo:
        """The record of a run.json object; a ``MedclfError`` names ``where`` and the first bad field."""
        data = copy.deepcopy(dict(data))
        _check_fields(data, Path(where))
        known = {k: v for k, v in data.items() if k in _FIELDS}
        for key in ("warnings", "tta", "skipped_images", "resumed"):
            if key in known and known[key] is None:  # null where a list or a flag is expected: the default
                del known[key]
        info = cls(**known, extra={k: v for k, v in data.items() if k not in _FIELDS})
        info._keys = tuple(data)
        return info

    @classmethod
    def from_json(cls, path: str | Path) -> RunInfo:
        """Read and check a run.json file."""
        path = Path(path)
        return cls.from_dict(_read_info_data(path), path)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object run.json holds (a new copy; NaN and infinite numbers become null)."""
        out: dict[str, Any] = {}
        for key in self._keys:
            if key in _FIELDS:
                out[key] = getattr(self, key)
            elif key in self.extra:
                out[key] = self.extra[key]
        for f in dataclasses.fields(self):
            if f.name not in _FIELDS or f.name in out:
                continue
            value = getattr(self, f.name)
            # a file read in gets back only what it had (and what was set since); a new record every field
            if (self._keys or f.metadata.get("optional")) and value == _default(f):
                continue
            out[f.name] = value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return _jsonable(out)

    @property
    def model_name(self) -> str:
        """The model's registry name ("" when run.json has no model yet)."""
        return str((self.model or {}).get("name") or "")

    @property
    def threshold_classes(self) -> list[str]:
        """The classes run.json says the threshold applies to: ``positive_classes``, else ``[positive_class]``,
        else none (``medclf.runtime.decision.resolve_positive_classes`` adds the binary default)."""
        if self.positive_classes:
            return list(self.positive_classes)
        return [self.positive_class] if self.positive_class else []


_FIELDS = frozenset(f.name for f in dataclasses.fields(RunInfo) if f.init and f.name != "extra")


def _default(f: dataclasses.Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass(frozen=True)
class RunDir:
    """The files of a run folder (docs/architecture.md, section 4)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def info_path(self) -> Path:
        return self.root / "run.json"

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS_FILE

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_FILE

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def dataset_spec(self) -> Path:
        return self.root / "dataset.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def ood(self) -> Path:
        return self.root / OOD_FILE

    def predictions(self, split: str) -> Path:
        """``val_predictions.csv`` / ``test_predictions.csv``: the run's own predictions of that split."""
        return self.root / f"{split}_predictions.csv"

    def is_run(self) -> bool:
        """True when the folder holds a run.json (the last file a save writes)."""
        return self.info_path.is_file()

    def load_info(self) -> RunInfo:
        """run.json, checked; a ``MedclfError`` when the folder is not a run or a field is bad."""
        return RunInfo.from_json(self.info_path)

    def save_info(self, info: RunInfo) -> None:
        """Write run.json atomically, after checking it, and record its new sha256 in the manifest (written
        first, so an interrupted save leaves a run.json that no longer matches and is refused)."""
        data = info.to_dict()
        _check_fields(data, self.info_path)
        text = json_text(data)
        digests = read_manifest(self.root)
        if digests is not None:
            digests["run.json"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
            atomic_write_json(self.manifest, {"format": 1, "sha256": digests})
        atomic_write_text(self.info_path, text)


@dataclass
class LoadedRun:
    """A trained run, ready to predict."""

    model: nn.Module
    """In eval mode, on CPU."""
    info: RunInfo
    """run.json."""
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
    ``[]`` for arg-max decisions). See ``medclf.runtime.decision.decide``."""

    @property
    def metadata_columns(self) -> list[str]:
        return list(self.meta_encoder.columns) if self.meta_encoder else []

    @property
    def task(self) -> str:
        return "binary" if len(self.classes) == 2 else "multiclass"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise _read_error(path, exc) from None
    return h.hexdigest()


def _read_error(path: str | Path, exc: OSError) -> MedclfError:
    return MedclfError(
        f"cannot read {path}: {exc.strerror or exc}; check that the file exists and that you may read it"
    )


def save_run_model(run_dir: str | Path, model: nn.Module, info: RunInfo | Mapping[str, Any]) -> RunInfo:
    """Write ``model.safetensors``, ``manifest.json``, then ``run.json`` (each atomically); returns the record
    written.

    ``info`` describes the run (classes, preprocessing, threshold, ...): a ``RunInfo`` or a run.json object. The
    model spec is taken from ``model.medclf_spec`` (set by ``create_model``) unless ``info`` has a ``model``. A bad
    field is refused (named) before anything is written.
    """
    from safetensors.torch import save_model

    from medclf.models.tta import unwrap_tta

    model = unwrap_tta(model)  # the views live in info.tta; the weights are the inner model's
    run_dir = make_dir(run_dir)
    data = info.to_dict() if isinstance(info, RunInfo) else _jsonable(dict(info))
    if data.get("model") is None:
        spec = getattr(model, "medclf_spec", None)
        if spec is None:
            raise MedclfError("save_run_model: the model was not built by medclf.models.create_model")
        data["model"] = _jsonable(spec)
    record = RunInfo.from_dict(data, run_dir / "run.json")
    with atomic_path(run_dir / WEIGHTS_FILE, suffix=".safetensors") as tmp:
        # save_model handles shared tensors; contiguous CPU copies keep the file portable
        save_model(model, str(tmp))
        digest = sha256_file(tmp)
    record.weights = {"file": WEIGHTS_FILE, "format": "safetensors", "sha256": digest}
    record.format_version = RUN_FORMAT
    text = json_text(record.to_dict())
    # the manifest goes first (with run.json's digest computed from the text about to be written), so run.json
    # stays the last file written: a folder killed before it is not a run, and --resume finishes it
    _write_manifest(run_dir, {"run.json": hashlib.sha256(text.encode("utf-8")).hexdigest()})
    atomic_write_text(run_dir / "run.json", text)
    return record


def _write_manifest(run_dir: Path, known: dict[str, str]) -> None:
    digests = {
        name: known.get(name) or sha256_file(run_dir / name)
        for name in SEALED_FILES
        if name in known or (run_dir / name).is_file()
    }
    atomic_write_json(run_dir / MANIFEST_FILE, {"format": 1, "sha256": digests})


def read_manifest(run_dir: str | Path) -> dict[str, str] | None:
    """{file name: sha256} from the run folder's manifest.json; None when it has none (saved before manifests)."""
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _read_error(path, exc) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    digests = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise MedclfError(f"{path}: not a medclf manifest (damaged?); restore the file or retrain the run")
    return {str(k): v for k, v in digests.items()}


def seal_file(run_dir: str | Path, name: str) -> None:
    """Record ``name`` (a cache written after the run was saved: the OOD detector) in the run's manifest.

    A folder saved before manifests existed gets none: a manifest must describe the files as they were saved.
    """
    run_dir = Path(run_dir)
    digests = read_manifest(run_dir)
    if digests is None:
        return
    digests[name] = sha256_file(run_dir / name)
    atomic_write_json(run_dir / MANIFEST_FILE, {"format": 1, "sha256": digests})


def verify_run_files(run_dir: str | Path, info: RunInfo | Mapping[str, Any]) -> dict[str, str] | None:
    """Check the run folder's files against ``manifest.json``; returns its {file: sha256}.

    None, with a warning, for a folder saved before manifests existed (``format_version`` 1 in run.json). A
    sealed file that differs from its digest, is missing, or was added after the run was saved is refused with a
    ``MedclfError`` naming it (an OOD detector may be missing: it is refitted).
    """
    run_dir = Path(run_dir)
    digests = read_manifest(run_dir)
    if digests is None:
        version = info.format_version if isinstance(info, RunInfo) else info.get("format_version")
        if version not in (None, 1):
            raise MedclfError(
                f"{run_dir / MANIFEST_FILE} is missing (deleted, or the save was interrupted), so the run folder's "
                "files cannot be checked; restore it from the original run folder, or retrain the run"
            )
        log.warning(
            "%s was saved by an older medclf without manifest.json: its weights are checked against run.json, but "
            "changes to run.json, config.yaml, split.csv or ood.safetensors would go unnoticed; retrain it to get "
            "a manifest",
            run_dir,
        )
        return None
    unknown = sorted(set(digests) - set(SEALED_FILES))
    if unknown:
        raise MedclfError(
            f"{run_dir / MANIFEST_FILE} lists {unknown[0]!r}, which is not a run-folder file medclf writes; "
            "restore manifest.json from the original run folder, or retrain the run"
        )
    for name in SEALED_FILES:
        path = run_dir / name
        fix = (
            "delete it (it is refitted from the run's training images)"
            if name in _CACHES
            else "restore the original file, or retrain the run"
        )
        if name not in digests:
            if path.is_file() and name not in _CACHES:
                raise MedclfError(
                    f"{path} is not in manifest.json (it was added after the run was saved); "
                    "remove it, or retrain the run"
                )
            continue
        if not path.is_file():
            if name in _CACHES:
                continue
            raise MedclfError(f"{path} is missing (manifest.json lists it); {fix}")
        if sha256_file(path) != digests[name]:
            raise MedclfError(
                f"{path} does not match the sha256 recorded in manifest.json (changed after the run was saved); "
                f"refusing to load the run — {fix}"
            )
    return digests


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


def _read_info_data(path: Path) -> dict[str, Any]:
    """The JSON object of a run.json file, unchecked but for the two keys every run has."""
    if not path.is_file():
        raise MedclfError(
            f"{path.parent} is not a medclf run folder (no run.json); train one with `medclf train`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _read_error(path, exc) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedclfError(f"{path}: not valid JSON ({exc}); the run folder is damaged, retrain it") from None
    if not isinstance(data, dict) or "model" not in data or "classes" not in data:
        raise MedclfError(f"{path}: missing 'model' or 'classes'; the run folder is damaged, retrain it")
    return data


def _check_fields(info: dict[str, Any], path: Path) -> None:
    """run.json's fields by type and range: a ``MedclfError`` naming the file and the first bad field."""
    from medclf.models._registry import FILE_KWARGS

    def bad(name: str, should: str) -> MedclfError:
        return MedclfError(
            f"{path}: {name} {should} (it is {info_value(name)!r}); restore the run's own run.json or retrain the run"
        )

    def info_value(name: str) -> Any:
        value: Any = info
        for key in name.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def number(name: str, lo: float, hi: float | None = None, *, lo_open: bool = False) -> None:
        v = info_value(name)
        if v is None:
            return
        ok = (
            _is_number(v)
            and math.isfinite(v)
            and (lo < v if lo_open else lo <= v)
            and (hi is None or v <= hi)
        )
        if not ok:
            limits = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi is not None else "")
            raise bad(name, f"must be a finite number {limits}")

    classes = info.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) and c for c in classes)
    ):
        raise bad("classes", "must be a list of at least 2 class names")
    if len(set(classes)) != len(classes):
        raise bad("classes", "must not name a class twice")
    spec = info.get("model")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
        raise bad("model", "must be an object with the model's name")
    if not _is_int(spec.get("num_classes")) or spec["num_classes"] != len(classes):
        raise bad("model.num_classes", f"must be {len(classes)}, the number of classes")
    if spec.get("in_chans") is not None and spec["in_chans"] not in (1, 3):
        raise bad("model.in_chans", "must be 1 or 3")
    kwargs = spec.get("kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise bad("model.kwargs", "must be an object")
    files = sorted(FILE_KWARGS & set(kwargs or {}))
    if files:
        raise bad(
            f"model.kwargs.{files[0]}", "must not be set: medclf never lets a run folder name a file to load"
        )
    number("threshold", 0.0, 1.0)
    number("temperature", 0.0, lo_open=True)
    number("refer_below", 0.0, 1.0)
    pre = info.get("preprocessing")
    if pre is not None:
        if not isinstance(pre, dict):
            raise bad("preprocessing", "must be an object")
        size = pre.get("input_size")
        if not _is_int(size) or not 1 <= size <= _MAX_INPUT_SIZE:
            raise bad(
                "preprocessing.input_size", f"must be a whole number of pixels from 1 to {_MAX_INPUT_SIZE}"
            )
        if pre.get("in_chans", 3) not in (1, 3):
            raise bad("preprocessing.in_chans", "must be 1 or 3")
        for key in ("mean", "std"):
            values = pre.get(key)
            if values is not None and (
                not isinstance(values, list)
                or not values
                or not all(_is_number(v) and math.isfinite(v) and (key == "mean" or v > 0) for v in values)
            ):
                raise bad(
                    f"preprocessing.{key}",
                    "must be a list of finite numbers" + (" > 0" if key == "std" else ""),
                )
        if pre.get("resize", "squash") not in ("squash", "center_crop"):
            raise bad("preprocessing.resize", "must be squash or center_crop")
        if not isinstance(pre.get("jpeg_draft", False), bool):
            raise bad("preprocessing.jpeg_draft", "must be true or false")
    pos = info.get("positive_class")
    if pos is not None and pos not in classes:
        raise bad("positive_class", "must be one of the classes")
    group = info.get("positive_classes")
    if group is not None and (not isinstance(group, list) or not all(c in classes for c in group)):
        raise bad("positive_classes", "must be a list of the run's classes")
    tta = info.get("tta")
    if tta is not None:
        from medclf.models.tta import check_tta_views

        if not isinstance(tta, list):
            raise bad("tta", "must be a list of test-time views")
        try:
            check_tta_views(tta, where=f"{path}: tta")
        except ConfigError as exc:
            raise MedclfError(f"{exc}; restore the run's own run.json or retrain the run") from None
    for name in ("metadata_encoder", "val_metrics", "ensemble", "budget", "images", "versions", "weights"):
        if info.get(name) is not None and not isinstance(info[name], dict):
            raise bad(name, "must be an object")
    for name in _TEXT_FIELDS:
        if info.get(name) is not None and not isinstance(info[name], str):
            raise bad(name, "must be a string")
    warnings = info.get("warnings")
    if warnings is not None and (
        not isinstance(warnings, list) or not all(isinstance(v, str) for v in warnings)
    ):
        raise bad("warnings", "must be a list of strings")
    skipped = info.get("skipped_images")
    if skipped is not None and (
        not isinstance(skipped, list) or not all(isinstance(v, dict) for v in skipped)
    ):
        raise bad("skipped_images", "must be a list of {path, reason} objects")
    for name in ("best_epoch", "epochs_run", "excluded_images", "format_version"):
        value = info.get(name)
        if value is not None and (not _is_int(value) or value < 0):
            raise bad(name, "must be a whole number >= 0")
    # facts about the training that nothing decides with: any number loads
    for name in ("best_score", "train_seconds", "train_seconds_members", "peak_memory_mb"):
        if info.get(name) is not None and not _is_number(info[name]):
            raise bad(name, "must be a number")
    if info.get("resumed") is not None and not isinstance(info["resumed"], bool):
        raise bad("resumed", "must be true or false")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)


def check_finite_model(model: nn.Module, pre: Preprocessing, num_meta: int, where: str | Path) -> None:
    """Refuse a model that cannot make decisions: NaN or infinite weights, or a NaN or infinite output on a fixed
    probe input (softmax of NaN logits would compare false with every threshold and read as the negative class)."""
    retrain = "retrain the run (if training diverged, with a lower train.lr)"
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise MedclfError(
                f"{where}: weight {name!r} holds NaN or infinite values, so the model cannot be used; {retrain}"
            )
    g = torch.Generator().manual_seed(0)
    shape = (1, pre.in_chans, pre.input_size, pre.input_size)
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (pre.mean, pre.std))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = ((torch.rand(shape, generator=g) - mean) / std).to(device)
    meta = torch.zeros(1, num_meta, device=device) if num_meta else None
    try:
        with torch.inference_mode():
            out = model(x, meta)
    except Exception as exc:  # a model that cannot even run on a well-formed input is not usable either
        raise MedclfError(
            f"{where}: the model fails on a probe image ({type(exc).__name__}: {exc}); {retrain}"
        ) from None
    if not bool(torch.isfinite(out).all()):
        raise MedclfError(
            f"{where}: the model's output for a probe image is NaN or infinite, so it cannot be used; {retrain}"
        )


def load_run(run_dir: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the model from run.json and load its verified safetensors weights."""
    from safetensors.torch import load_model

    from medclf.models._registry import create_model

    run_dir = Path(run_dir)
    info_path = RunDir(run_dir).info_path
    data = _read_info_data(info_path)
    weights = data.get("weights") if isinstance(data.get("weights"), dict) else {}
    fname = str(weights.get("file", WEIGHTS_FILE))
    if (
        Path(fname).name != fname
        or fname.lower().endswith(_PICKLE_SUFFIXES)
        or weights.get("format") != "safetensors"
    ):
        raise MedclfError(
            f"{info_path}: weights file {fname!r} is not a safetensors file in the run folder; "
            "medclf never loads pickled weights — retrain the run"
        )
    wpath = run_dir / fname
    if not wpath.is_file():
        raise MedclfError(f"{wpath} is missing; the run folder is incomplete — retrain or restore it")
    checked = verify_run_files(run_dir, data) or {}
    expected = weights.get("sha256")
    actual = checked.get(fname) or sha256_file(wpath)  # the manifest check has just read the file
    if not expected or actual != expected:
        raise MedclfError(
            f"{wpath} does not match the sha256 recorded in run.json (file changed after training or run.json "
            "edited); refusing to load it — restore the original file or retrain"
        )
    # fields are checked once the files are known to be the saved ones: an edit is named as an edit first
    info = RunInfo.from_dict(data, info_path)
    spec = info.model or {}
    kwargs = dict(spec.get("kwargs") or {})
    try:
        model = create_model(
            spec["name"], int(spec["num_classes"]), pretrained=False, in_chans=spec.get("in_chans"), **kwargs
        )
    except (ConfigError, TypeError, ValueError) as exc:
        raise MedclfError(
            f"{info_path}: cannot build its model {spec['name']!r} ({exc}); retrain the run"
        ) from None
    try:
        load_model(model, str(wpath), strict=True, device=str(map_location))
    except Exception as exc:  # safetensors raises plain exceptions on a corrupt header or shape mismatch
        raise MedclfError(
            f"{wpath}: cannot load the weights into {spec['name']} ({exc}); retrain the run"
        ) from None
    model.eval()
    classes = [str(c) for c in info.classes]
    pre = Preprocessing.from_dict(info.preprocessing) if info.preprocessing else None
    if pre is None:
        from medclf.models.preprocessing import resolve_preprocessing

        pre = resolve_preprocessing(model)
    enc = MetadataEncoder.from_dict(info.metadata_encoder) if info.metadata_encoder else None
    check_finite_model(model, pre, enc.dim if enc else 0, wpath)
    if info.tta:
        from medclf.models.tta import with_tta

        model = with_tta(model, [str(v) for v in info.tta])
    return LoadedRun(
        model=model,
        info=info,
        preprocessing=pre,
        classes=classes,
        meta_encoder=enc,
        threshold=float(info.threshold) if info.threshold is not None else None,
        temperature=float(info.temperature or 1.0),
        run_dir=run_dir,
        positive_class=info.positive_class,
        positive_classes=resolve_positive_classes(classes, info.positive_class, info.positive_classes),
    )
