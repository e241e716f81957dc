"""`DatasetSpec`: a dataset described once — root, layout, label rule, group rule, metadata, class renames.

A spec is a YAML file or a Python object. Without one, `medclf` auto-detects the layout of a folder
(`medclf.data.layouts.detect_layout`). `spec.with_root(new_root)` applies the same rules to another copy
of the data, e.g. to evaluate a trained model on a second site's images.

Relative paths in a spec YAML file (``root``) are resolved like this: first against the YAML file's own folder,
then against each parent folder in turn; the first candidate that exists wins. So
``configs/datasets/ham10000.yaml`` may say ``root: ../shared/datasets/ham10000`` (relative to the repository,
the parent of ``configs/``) or ``root: ../../../shared/datasets/ham10000`` (relative to the YAML's folder); both
find the same folder. When no candidate exists the root is kept relative to the YAML's folder and loading
fails with a message naming every place that was tried.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medclf._atomic import atomic_write_text
from medclf.errors import ConfigError

__all__ = ["LAYOUTS", "METADATA_TYPES", "SPEC_FILENAME", "DatasetSpec", "compile_capture_regex"]

LAYOUTS = ("auto", "folders", "split-folders", "kfold", "csv", "files")
"""auto (detect), class-per-folder, split folders (train/val/test) of class folders, MSLD-style FOLDS tree,
flat images + CSV, and a flat/nested image folder labelled by `label_regex`."""

METADATA_TYPES = ("numeric", "categorical")

SPEC_FILENAME = "dataset.yaml"
"""A spec with this name inside a data folder is used when the folder is loaded without an explicit spec."""

_DEFAULT_MISSING = [
    "",
    "unknown",
    "Unknown",
    "UNKNOWN",
    "NA",
    "N/A",
    "n/a",
    "NaN",
    "nan",
    "null",
    "None",
    "?",
    "-",
]


@dataclass
class DatasetSpec:
    """How the files under `root` become labelled, grouped images."""

    root: str | None = None
    """Dataset folder. Relative paths in a YAML spec: see the module docstring for how they are resolved."""
    layout: str = "auto"
    """auto, folders, split-folders, kfold (MSLD FOLDS/FOLDS_AUG), csv (images + table), files (label_regex)."""
    name: str | None = None
    """A short name for reports (default: the root folder's name)."""

    csv: str | None = None
    """csv layout: the table, relative to root (default: the only *.csv file in root)."""
    image_dir: str | None = None
    """csv layout: folder with the images, relative to root (default: searched under root)."""
    image_column: str | None = None
    """csv layout: column naming each image (file name, with or without extension, or a relative path).
    Default: the first of image_id, image, filename, file, path, image_path, isic_id."""
    label_column: str | None = None
    """csv layout: column with the class. Default: the first of label, dx, diagnosis, class, target."""

    label_regex: str | None = None
    """Regex searched in the file name; its first capture group is the label (e.g. `_(bacteria|virus)_`).
    Files it does not match keep their folder's label (folder layouts) or are an error (files layout)."""
    class_map: dict[str, str] = field(default_factory=dict)
    """Renames and merges, raw label -> class (e.g. {bacteria: pneumonia, virus: pneumonia})."""
    subset: list[str] | None = None
    """Keep only these classes (after class_map); images of other classes are left out."""
    classes: list[str] | None = None
    """Class order (index = model output). A label not listed is an error. Default: subset, else sorted labels."""

    group_by: str | None = None
    """Patient/lesion id: a CSV column, or 'regex:PATTERN' on the file name (first capture group; files it does
    not match are their own group). Default: lesion_id / patient_id / patient columns when present, else none
    (each image its own group)."""

    metadata: dict[str, str] | list[str] | None = None
    """csv layout: metadata columns, as {column: numeric|categorical} or a list (types inferred).
    Default: every other column of the table, typed by its values. [] keeps none."""
    missing_values: list[str] = field(default_factory=lambda: list(_DEFAULT_MISSING))
    """Metadata values read as missing (besides empty cells), e.g. HAM10000's sex 'unknown'."""

    augmented: bool = True
    """kfold layout: add the FOLDS_AUG images to the training part of their own fold when present."""
    extensions: list[str] = field(
        default_factory=lambda: [
            ".jpg",
            ".jpeg",
            ".png",
            ".bmp",
            ".tif",
            ".tiff",
            ".gif",
            ".webp",
            ".dcm",
            ".dicom",
        ]
    )
    """File extensions (any case) treated as images; other files are ignored."""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(
                f"dataset spec: layout {self.layout!r} is unknown; choose one of {', '.join(LAYOUTS)}"
            )
        if self.label_regex is not None:
            compile_capture_regex(self.label_regex, "label_regex")
        if self.group_by is not None and self.group_by.startswith("regex:"):
            compile_capture_regex(self.group_by[len("regex:") :], "group_by")
        if isinstance(self.metadata, dict):
            for col, kind in self.metadata.items():
                if kind not in METADATA_TYPES:
                    raise ConfigError(
                        f"dataset spec: metadata column {col!r} has type {kind!r}; use numeric or categorical"
                    )
        self.extensions = [e.lower() if e.startswith(".") else "." + e.lower() for e in self.extensions]

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: str | Path | None = None) -> DatasetSpec:
        """Build a spec from a mapping; unknown keys are refused with the list of known ones."""
        if not isinstance(data, dict):
            raise ConfigError(f"dataset spec: expected a mapping of fields, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"dataset spec: unknown field {unknown[0]!r}; known fields: {', '.join(names)}")
        data = dict(data)
        for key in ("class_map",):
            if data.get(key) is None:
                data.pop(key, None)
            elif not isinstance(data[key], dict):
                raise ConfigError(f"dataset spec: {key} must be a mapping raw label -> class")
            else:
                data[key] = {str(k): str(v) for k, v in data[key].items()}
        for key in ("subset", "classes", "missing_values", "extensions"):
            if data.get(key) is not None:
                if not isinstance(data[key], list):
                    raise ConfigError(f"dataset spec: {key} must be a list")
                data[key] = [str(v) for v in data[key]]
        if data.get("root") is not None:
            data["root"] = str(data["root"])
            if base_dir is not None:
                data["root"] = _resolve_relative(data["root"], Path(base_dir))
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> DatasetSpec:
        """Read a spec YAML file (loaded safely); a relative root is resolved as the module docstring says."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"dataset spec {path} does not exist; examples are in configs/datasets/")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a valid YAML dataset spec ({exc})") from None
        try:
            return cls.from_dict(data, base_dir=path.resolve().parent)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        """Write the spec as YAML (atomically)."""
        atomic_write_text(path, self.to_yaml())

    def with_root(self, new_root: str | Path) -> DatasetSpec:
        """The same rules applied to another copy of the data."""
        return dataclasses.replace(self, root=str(Path(new_root).expanduser().resolve()))


def _resolve_relative(root: str, base_dir: Path) -> str:
    p = Path(root).expanduser()
    if p.is_absolute():
        return str(p)
    for folder in (base_dir, *base_dir.parents):
        candidate = folder / p
        if candidate.exists():
            return str(candidate.resolve())
    return str((base_dir / p).resolve())


def compile_capture_regex(pattern: str, what: str) -> re.Pattern[str]:
    """Compile a user regex that must have a capture group; errors say how to fix it."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{what}: {pattern!r} is not a valid regular expression ({exc})") from None
    if rx.groups < 1:
        raise ConfigError(
            f"{what}: {pattern!r} has no capture group; wrap the part of the file name to use in parentheses, "
            r"e.g. 'regex:^(person\d+)_' or '_(bacteria|virus)_'"
        )
    return rx
