"""Folder layouts: detect which one a data folder uses and list its images with their raw labels.

Layouts (`DatasetSpec.layout`):

- ``folders``: ``ROOT/<class>/**/image``
- ``split-folders``: ``ROOT/<train|val|valid|validation|test>/<class>/**/image`` (any case)
- ``kfold``: MSLD v2.0 ``.../FOLDS/fold1..K/{Train,Valid,Test}/<class>/`` plus optional
  ``.../FOLDS_AUG/fold1_AUG..foldK_AUG/Train/<class>/`` (augmented images join only the training part of
  their own fold)
- ``csv``: a table (``ROOT/*.csv``) naming each image (file name with or without extension, or a relative
  path) and its label; images anywhere under ``ROOT`` (or ``image_dir``). A table without a label column
  (e.g. image and patient id only) over two or more class folders takes each image's label from its class
  folder (``ROOT/<class>/**/image``)
- ``files``: images anywhere under ``ROOT``, labelled by ``label_regex`` on the file name
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medclf.errors import ConfigError, DataError

__all__ = [
    "GROUP_COLUMN_CANDIDATES",
    "IMAGE_COLUMN_CANDIDATES",
    "LABEL_COLUMN_CANDIDATES",
    "SPLIT_ALIASES",
    "RawImage",
    "detect_layout",
    "find_csv",
    "scan",
]

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
IMAGE_COLUMN_CANDIDATES = (
    "image_id",
    "image",
    "filename",
    "file_name",
    "file",
    "path",
    "image_path",
    "isic_id",
)
LABEL_COLUMN_CANDIDATES = ("label", "dx", "diagnosis", "class", "target", "benign_malignant")
GROUP_COLUMN_CANDIDATES = ("lesion_id", "patient_id", "patient", "subject_id", "subject", "group")
DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom")

_FOLD_RX = re.compile(r"^fold[_\- ]?(\d+)$", re.IGNORECASE)
_AUG_FOLD_RX = re.compile(r"^fold[_\- ]?(\d+)[_\- ]?aug$", re.IGNORECASE)

Report = Callable[[str, str], None]
"""report(path_or_row, reason): raises DataError, or records a bad entry when skipping bad input."""


@dataclass
class RawImage:
    """One image found by a layout scanner, before label rules, groups and metadata are applied."""

    path: str
    rel: str
    """Path relative to the dataset root (posix), for default group ids and messages."""
    folder_label: str | None = None
    split: str | None = None
    fold: int | None = None
    augmented: bool = False
    row: dict[str, str] = field(default_factory=dict)
    """csv layout: the table's cells for this image."""
    where: str = ""
    """How to name this image in a message (file path, or CSV file and row)."""


def _visible(name: str) -> bool:
    return not name.startswith((".", "__MACOSX"))


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p.name))
    except OSError:
        return []


def _images_under(folder: Path, extensions: tuple[str, ...]) -> Iterator[Path]:
    # os.walk does not follow directory symlinks, so a symlink loop cannot make this endless
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for name in sorted(filenames):
            if _visible(name) and os.path.splitext(name)[1].lower() in extensions:
                yield Path(dirpath) / name


def _has_images(folder: Path, extensions: tuple[str, ...], top_only: bool = False) -> bool:
    if top_only:
        try:
            return any(
                p.is_file() and _visible(p.name) and p.suffix.lower() in extensions for p in folder.iterdir()
            )
        except OSError:
            return False
    return next(_images_under(folder, extensions), None) is not None


def _find_dir(root: Path, pattern: re.Pattern[str], max_depth: int) -> Path | None:
    if pattern.match(root.name):
        return root
    frontier = [root]
    for _ in range(max_depth):
        nxt = []
        for folder in frontier:
            for sub in _subdirs(folder):
                if pattern.match(sub.name):
                    return sub
                nxt.append(sub)
        frontier = nxt
    return None


_FOLDS_DIR = re.compile(r"^folds$", re.IGNORECASE)
_FOLDS_AUG_DIR = re.compile(r"^folds[_\- ]?aug$", re.IGNORECASE)


def _looks_like_split_csv(columns: list[str]) -> bool:
    cols = {c.strip().lower() for c in columns}
    return {"path", "label", "group"} <= cols and bool(cols & {"split", "fold"})


def _csv_columns(path: Path) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            header = fh.readline()
    except OSError:
        return []
    import csv

    try:
        return next(csv.reader([header]))
    except (StopIteration, csv.Error):
        return []


def find_csv(root: Path, explicit: str | None = None) -> Path:
    """The table of a csv-layout dataset: `explicit` (relative to root) or the one suitable *.csv in root."""
    if explicit:
        p = Path(explicit)
        p = p if p.is_absolute() else root / p
        if not p.is_file():
            raise DataError(f"CSV file {p} does not exist; fix `csv:` in the dataset spec")
        return p
    candidates = sorted(p for p in root.glob("*.csv") if _visible(p.name))
    usable = [p for p in candidates if not _looks_like_split_csv(_csv_columns(p))]
    if len(usable) == 1:
        return usable[0]
    if not usable:
        raise DataError(
            f"{root}: no CSV table found; put the labels table (e.g. metadata.csv) in this folder"
        )
    scored = [
        p
        for p in usable
        if {c.strip().lower() for c in _csv_columns(p)} & set(IMAGE_COLUMN_CANDIDATES)
        and {c.strip().lower() for c in _csv_columns(p)} & set(LABEL_COLUMN_CANDIDATES)
    ]
    if len(scored) == 1:
        return scored[0]
    names = ", ".join(p.name for p in usable)
    raise DataError(f"{root}: several CSV files ({names}); say which one in a dataset spec: `csv: NAME.csv`")


def detect_layout(root: str | os.PathLike[str], extensions: tuple[str, ...] = DEFAULT_EXTENSIONS) -> str:
    """Guess the layout of a data folder: kfold, csv, split-folders, folders or files."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist; check the path (or the spec's root)")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; pass the dataset folder or a dataset spec .yaml")
    if _find_dir(root, _FOLDS_DIR, 3) is not None:
        return "kfold"
    subdirs = _subdirs(root)
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
    if not split_dirs:
        try:
            find_csv(root)
            if _has_images(root, extensions):
                return "csv"
        except DataError:
            pass
    if split_dirs and any(_subdirs(d) for d in split_dirs):
        return "split-folders"
    if any(_has_images(d, extensions) for d in subdirs):
        return "folders"
    if _has_images(root, extensions, top_only=True):
        return "files"
    raise DataError(
        f"{root}: no images found (looked for {', '.join(extensions)}); expected class folders "
        "(ROOT/<class>/*.jpg), split folders (ROOT/train/<class>/...), MSLD FOLDS, or images + a CSV"
    )


# -- scanners ---------------------------------------------------------------------------------------------


def _scan_class_dirs(
    root: Path, parent: Path, exts: tuple[str, ...], report: Report, **common: Any
) -> list[RawImage]:
    out: list[RawImage] = []
    classes = _subdirs(parent)
    if not classes:
        report(
            str(parent),
            "contains no class folders; expected one subfolder per class (e.g. benign/, malignant/)",
        )
    for cdir in classes:
        found = [
            RawImage(
                path=str(p.absolute()),
                rel=p.relative_to(root).as_posix(),
                folder_label=cdir.name,
                where=str(p),
                **common,
            )
            for p in _images_under(cdir, exts)
        ]
        if not found:
            report(
                str(cdir),
                "class folder contains no images; add images, delete the folder, or leave the class out with "
                "`subset:` in a dataset spec",
            )
        out.extend(found)
    return out


def _scan_folders(root: Path, exts: tuple[str, ...], report: Report) -> list[RawImage]:
    return _scan_class_dirs(root, root, exts, report)


def _scan_split_folders(root: Path, exts: tuple[str, ...], report: Report) -> list[RawImage]:
    out: list[RawImage] = []
    seen: dict[str, Path] = {}
    for d in _subdirs(root):
        split = SPLIT_ALIASES.get(d.name.lower())
        if split is None:
            continue  # other folders next to train/ and test/ (e.g. docs/) are not data
        if split in seen:
            raise DataError(
                f"{root}: both {seen[split].name}/ and {d.name}/ mean the {split} split; merge or rename one"
            )
        seen[split] = d
        out.extend(_scan_class_dirs(root, d, exts, report, split=split))
    return out


def _scan_kfold(root: Path, exts: tuple[str, ...], report: Report, augmented: bool) -> list[RawImage]:
    folds_dir = _find_dir(root, _FOLDS_DIR, 3)
    if folds_dir is None:
        raise DataError(
            f"{root}: no FOLDS folder found; the kfold layout expects .../FOLDS/fold1/Train/<class>/"
        )
    folds = sorted(
        ((int(m.group(1)), d) for d in _subdirs(folds_dir) if (m := _FOLD_RX.match(d.name))),
        key=lambda t: t[0],
    )
    if not folds:
        raise DataError(f"{folds_dir}: no fold1..foldK folders inside; expected FOLDS/fold1/Train/<class>/")
    numbers = [n for n, _ in folds]
    out: list[RawImage] = []
    for n, fdir in folds:
        k = numbers.index(n)
        splits = {SPLIT_ALIASES.get(d.name.lower()): d for d in _subdirs(fdir)}
        splits.pop(None, None)
        if "train" not in splits:
            report(str(fdir), "fold has no Train folder; expected Train/, Valid/ and Test/ inside each fold")
        for split, sdir in sorted(splits.items()):
            out.extend(_scan_class_dirs(root, sdir, exts, report, split=split, fold=k))
    if augmented:
        search = [root] if folds_dir != root else [root.parent]
        aug_dir = next((d for s in search if (d := _find_dir(s, _FOLDS_AUG_DIR, 4)) is not None), None)
        if aug_dir is not None:
            for d in _subdirs(aug_dir):
                m = _AUG_FOLD_RX.match(d.name) or _FOLD_RX.match(d.name)
                if not m:
                    continue
                n = int(m.group(1))
                if n not in numbers:
                    report(str(d), f"augmented fold {n} has no matching FOLDS/fold{n}; rename or remove it")
                    continue
                train = [s for s in _subdirs(d) if SPLIT_ALIASES.get(s.name.lower()) == "train"]
                # augmented copies only ever train their own fold; any Valid/Test folder here is ignored
                for tdir in train:
                    out.extend(
                        _scan_class_dirs(
                            root if aug_dir.is_relative_to(root) else aug_dir.parent,
                            tdir,
                            exts,
                            report,
                            split="train",
                            fold=numbers.index(n),
                            augmented=True,
                        )
                    )
    return out


def _scan_files(root: Path, exts: tuple[str, ...], report: Report) -> list[RawImage]:
    return [
        RawImage(path=str(p.absolute()), rel=p.relative_to(root).as_posix(), where=str(p))
        for p in _images_under(root, exts)
    ]


def _pick_column(
    columns: list[str], explicit: str | None, candidates: tuple[str, ...], what: str, field_: str
) -> str:
    if explicit is not None:
        if explicit not in columns:
            raise ConfigError(
                f"{what} column {explicit!r} is not in the CSV (columns: {', '.join(columns)}); fix `{field_}:` in the "
                "dataset spec"
            )
        return explicit
    lower = {c.lower(): c for c in columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    raise ConfigError(
        f"cannot tell which CSV column is the {what} (columns: {', '.join(columns)}); set `{field_}:` in a dataset spec"
    )


def _scan_csv(
    root: Path, spec: Any, exts: tuple[str, ...], report: Report
) -> tuple[list[RawImage], dict[str, str]]:
    import csv

    table = find_csv(root, spec.csv)
    try:
        with open(table, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise DataError(f"{table}: not UTF-8 text; save the table as UTF-8 CSV") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"{table}: cannot read the CSV ({exc}); check the file") from None
    if not rows:
        raise DataError(f"{table}: empty CSV; it needs a header row and one row per image")
    header = [c.strip() for c in rows[0]]
    if len(set(header)) != len(header):
        dup = next(c for c in header if header.count(c) > 1)
        raise DataError(f"{table}: column {dup!r} appears twice in the header; rename one")
    image_col = _pick_column(header, spec.image_column, IMAGE_COLUMN_CANDIDATES, "image", "image_column")

    image_dir = root
    if spec.image_dir:
        image_dir = Path(spec.image_dir) if Path(spec.image_dir).is_absolute() else root / spec.image_dir
        if not image_dir.is_dir():
            raise DataError(f"image folder {image_dir} does not exist; fix `image_dir:` in the dataset spec")
    label_col: str | None = None
    try:
        label_col = _pick_column(header, spec.label_column, LABEL_COLUMN_CANDIDATES, "label", "label_column")
    except ConfigError as exc:
        # no label column: the images' class folders (two or more) give the labels
        if spec.label_column is not None or sum(_has_images(d, exts) for d in _subdirs(image_dir)) < 2:
            raise ConfigError(f"{exc}, or sort the images into one folder per class") from None
    by_rel: dict[str, Path] = {}
    by_name: dict[str, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for p in _images_under(image_dir, exts):
        by_rel[p.relative_to(image_dir).as_posix()] = p
        by_name.setdefault(p.name, []).append(p)
        by_stem.setdefault(p.stem, []).append(p)

    out: list[RawImage] = []
    first_row: dict[Path, int] = {}
    for i, cells in enumerate(rows[1:], start=2):  # line numbers as a spreadsheet shows them
        if not any(c.strip() for c in cells):
            continue  # blank line
        where = f"{table.name} row {i}"
        if len(cells) != len(header):
            report(where, f"has {len(cells)} cells but the header has {len(header)} columns; fix the row")
            continue
        row = {h: c.strip() for h, c in zip(header, cells, strict=True)}
        value = row[image_col]
        if not value:
            report(where, f"empty {image_col!r}; fill it in or delete the row")
            continue
        found = _resolve_image(value, image_dir, by_rel, by_name, by_stem)
        if isinstance(found, str):
            report(f"{where} ({image_col}={value})", found)
            continue
        if found in first_row:
            report(
                f"{where} ({image_col}={value})",
                f"names the same image as row {first_row[found]}; delete the duplicate row",
            )
            continue
        first_row[found] = i
        if label_col is None:
            parts = found.relative_to(image_dir).parts if found.is_relative_to(image_dir) else ()
            label = parts[0] if len(parts) > 1 else ""
            if not label:
                report(
                    f"{where} ({image_col}={value})",
                    "the image is not in a class folder and the table has no label column; move it into the "
                    "folder of its class, or add a label column",
                )
                continue
        else:
            label = row[label_col]
        if not label:
            report(
                f"{where} ({image_col}={value})",
                f"empty label column {label_col!r}; fill it in or delete the row",
            )
            continue
        out.append(
            RawImage(
                path=str(found.absolute()),
                rel=found.relative_to(root).as_posix() if found.is_relative_to(root) else found.name,
                folder_label=label,
                row=row,
                where=f"{where} ({image_col}={value})",
            )
        )
    columns = {"image": image_col, "table": str(table)}
    if label_col is not None:
        columns["label"] = label_col
    return out, columns


def _resolve_image(
    value: str,
    image_dir: Path,
    by_rel: dict[str, Path],
    by_name: dict[str, list[Path]],
    by_stem: dict[str, list[Path]],
) -> Path | str:
    v = value.replace("\\", "/")
    if Path(v).is_absolute() and Path(v).is_file():
        return Path(v)
    if v in by_rel:
        return by_rel[v]
    name = v.rsplit("/", 1)[-1]
    hits = (
        by_name.get(name) or by_stem.get(name) or by_stem.get(Path(name).stem if Path(name).suffix else name)
    )
    if not hits:
        return f"no image file {value!r} (with any image extension) under {image_dir}; add the image or delete the row"
    if len(hits) > 1:
        listed = ", ".join(str(h.relative_to(image_dir)) for h in hits[:3])
        return f"{value!r} matches several files ({listed}); give the relative path in the CSV"
    return hits[0]


def scan(root: Path, layout: str, spec: Any, report: Report) -> tuple[list[RawImage], dict[str, str]]:
    """List the images of `root` in `layout`; returns the images and, for csv, the columns used."""
    exts = tuple(spec.extensions)
    if layout == "folders":
        return _scan_folders(root, exts, report), {}
    if layout == "split-folders":
        return _scan_split_folders(root, exts, report), {}
    if layout == "kfold":
        return _scan_kfold(root, exts, report, spec.augmented), {}
    if layout == "csv":
        return _scan_csv(root, spec, exts, report)
    if layout == "files":
        return _scan_files(root, exts, report), {}
    raise ConfigError(f"layout {layout!r} is unknown")
